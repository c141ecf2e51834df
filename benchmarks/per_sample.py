"""Per-sample scores at ImageNet scale: s(x) of 1,281,167 x 512 features against 200 targets.

Synthetic features: every embedded ImageNet class mean (supervised ResNet18, 512-d) repeated
as many times as the class has images (1,281,167 rows), plus Gaussian noise, float32, written
to a temporary ``.npy`` and scored memory-mapped (as ``uotsel select --per-sample --features``
reads them; the file is in the page cache after it is written). The unit-level problem: the
1000 embedded ImageNet class means against the 200 embedded CUB class means, the paper's
settings. Timed: :func:`uotsel.per_sample.sample_scores` at several chunk sizes (first call,
which compiles, and the median of ``--repeats``), :func:`uotsel.best_samples` of 100,000 among
the scores, and :func:`uotsel.select_samples` end to end (solve, score, choose). Memory per
chunk is XLA's own analysis of the compiled chunk program (arguments, outputs and temporaries).

Run: ``python -m benchmarks.per_sample [--repeats 5] [--chunks 1024,4096,16384,65536]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks import _common as C

BUDGET = 100_000
NOISE = 0.5  # times the typical class-mean norm / sqrt(D), per coordinate


def write_features(path: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic features in a ``.npy`` at ``path``, block by block; returns the class
    means of the features written (what ``uotsel centroids`` makes of them, and what
    :func:`uotsel.select_samples` holds them against) and the per-sample labels."""
    from uotsel import ClassMeanAccumulator, embedded

    units = embedded.load("resnet18_supervised", "imagenet")
    means, counts = units.means.astype(np.float32), units.counts
    labels = np.repeat(np.arange(means.shape[0]), counts)
    rng = np.random.default_rng(seed)
    rng.shuffle(labels)
    n, d = labels.size, means.shape[1]
    scale = NOISE * float(np.median(np.linalg.norm(means, axis=1))) / np.sqrt(d)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    written = ClassMeanAccumulator(means.shape[0], d)
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        noise = rng.standard_normal(size=(hi - lo, d), dtype=np.float32)
        out[lo:hi] = means[labels[lo:hi]] + scale * noise
        written.update(out[lo:hi], labels[lo:hi])
    out.flush()
    del out
    return written.result().means, labels


def chunk_memory_mb(chunk: int, d: int, m: int) -> float:
    """Arguments + outputs + temporaries of the compiled chunk program (MB)."""
    import jax
    import jax.numpy as jnp

    from uotsel import chunk_scores, costs

    shapes = [
        jax.ShapeDtypeStruct((chunk, d), jnp.float32),
        jax.ShapeDtypeStruct((m, d), jnp.float32),
        jax.ShapeDtypeStruct((m,), jnp.float32),
        jax.ShapeDtypeStruct((m,), jnp.bool_),
        jax.ShapeDtypeStruct((), jnp.float32),
        jax.ShapeDtypeStruct((), jnp.float32),
    ]
    lowered = chunk_scores.score_chunk.lower(costs.COSTS["cosine"], *shapes)
    stats = lowered.compile().memory_analysis()
    if stats is None:
        return float("nan")
    total = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    return total / 2**20


def run(args: argparse.Namespace, path: str) -> dict:
    import uotsel
    from uotsel import embedded, io, per_sample

    start = time.perf_counter()
    means, labels = write_features(path)
    write_s = time.perf_counter() - start
    features = io.read_features(path, "features")
    target = embedded.load("resnet18_supervised", "cub").means
    sel = uotsel.select(means, target, top_k=100)
    n, d = features.shape
    m = target.shape[0]
    chunks = []
    for chunk in args.chunks:
        print(f"scoring in chunks of {chunk} ...", file=sys.stderr, flush=True)
        timing = C.timed(
            lambda chunk=chunk: per_sample.sample_scores(features, target, sel, chunk_size=chunk),
            repeats=args.repeats,
            warmup=0,
        )
        chunks.append(
            {
                "chunk": chunk,
                **timing,
                "rows_per_s": n / timing["median_s"],
                "chunk_memory_mb": chunk_memory_mb(chunk, d, m),
            }
        )
    scores = per_sample.sample_scores(features, target, sel)
    best = C.timed(lambda: uotsel.best_samples(scores, BUDGET), repeats=args.repeats, warmup=1)
    whole = C.timed(
        lambda: uotsel.select_samples(
            features, means, target, budget_images=BUDGET, unit_ids=labels
        ),
        repeats=max(1, args.repeats // 2),
        warmup=0,
    )
    return {
        "n": n,
        "d": d,
        "targets": m,
        "units": means.shape[0],
        "budget": BUDGET,
        "features_gb": n * d * 4 / 1e9,
        "write_s": write_s,
        "default_chunk": per_sample.DEFAULT_CHUNK,
        "chunks": chunks,
        "best_samples": best,
        "select_samples": whole,
    }


def markdown(info: dict, r: dict, device: bool) -> str:
    rows = [
        [
            f"{c['chunk']:,}" + (" (default)" if c["chunk"] == r["default_chunk"] else ""),
            f"{c['first_s']:.2f}",
            f"{c['steady']['median']:.2f} ({c['steady']['min']:.2f}-{c['steady']['max']:.2f})",
            f"{c['rows_per_s'] / 1e6:.2f}",
            f"{c['chunk_memory_mb']:.0f}",
        ]
        for c in r["chunks"]
    ]
    whole, best = r["select_samples"], r["best_samples"]
    return "\n".join(
        [
            "## Per-sample scores (`uotsel select --per-sample`)"
            + (f" on {info['jax_device']}" if device else ""),
            "",
            C.machine_line(info),
            "",
            f"`s(x)` of {r['n']:,} x {r['d']} float32 features ({r['features_gb']:.1f} GB, "
            "memory-mapped from a `.npy` in the page cache) against the "
            f"{r['targets']} embedded CUB class means, from the solution of the "
            f"{r['units']} embedded ImageNet class means (supervised ResNet18) against them at "
            "the paper's settings; synthetic features: each class mean repeated as many times "
            "as the class has images, plus Gaussian noise. Time of "
            "`uotsel.per_sample.sample_scores`: the first call (it compiles the chunk program) "
            f"and the median (min-max) of {r['chunks'][0]['repeats']} calls; memory per chunk: "
            "XLA's analysis of the compiled chunk program (arguments, output and temporaries), "
            "the device memory the scoring needs whatever the number of rows.",
            "",
            C.table(["rows per chunk", "first call s", "steady s", "M rows/s", "chunk MB"], rows),
            "",
            f"Choosing the {r['budget']:,} best of the {r['n']:,} scores "
            f"(`uotsel.best_samples`): {C.span_ms(best['steady'])} ms. The whole "
            f"`uotsel.select_samples` (solve the {r['units']} x {r['targets']} problem, score "
            f"every sample at the default chunk, choose {r['budget']:,}): "
            f"{whole['steady']['median']:.2f} s (min {whole['steady']['min']:.2f}, max "
            f"{whole['steady']['max']:.2f}, {whole['repeats']} calls after a first of "
            f"{whole['first_s']:.2f} s).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--chunks", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 4096, 16384]
    )
    parser.add_argument("--dir", default=None, help="folder of the temporary .npy")
    parser.add_argument("--device", action="store_true", help="record as the accelerator section")
    args = parser.parse_args()
    info = C.machine()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        result = run(args, os.path.join(folder, "features.npy"))
    md = markdown(info, result, args.device)
    section = "per_sample" + ("_device" if args.device else "")
    C.write_results(section, md, {"machine": info, "results": result})
    print(md)


if __name__ == "__main__":
    main()
