"""Selection and k-means with the sample axis split over 1 and 8 devices.

On this CPU the 8 devices are virtual (``--xla_force_host_platform_device_count=8``) and share
its cores, so no speed-up is expected: the point is the memory each device needs, and that the
split path costs little over the one-device path. Each case runs in a fresh process with the
device count set before JAX starts.

Selection: cosine cost (D = 128, ``eps_c = 0.01``), paper settings, ``n`` source units x 1000
target classes: time of ``uotsel.transport`` (steady state, median of ``--repeats`` after one
warm-up), and XLA's own memory analysis of the same program (arguments + temporaries per
device). k-means: spherical, D = 128, one Lloyd iteration (assignment + update) on ``n``
samples, median of ``--repeats``; memory per device from the compiled assignment step.

Run: ``python -m benchmarks.sharded [--repeats 3] [--device]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from benchmarks import _common as C
from uotsel.settings import UOT

SELECTION_SIZES = (10_000, 100_000, 1_000_000)
KMEANS_CASES = (
    (100_000, 100),
    (100_000, 1000),
    (1_000_000, 1000),
    (100_000, 10_000),
    (10_000_000, 100),
)
STREAM_CASES = ((1_000_000, 1000),)
STREAM_ROWS = 262_144


def _selection(n: int, m: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    import uotsel
    from uotsel import costs, unbalanced
    from uotsel import mesh as meshes

    rng = np.random.default_rng(0)
    src = rng.normal(size=(n, 128)).astype(np.float32)
    tgt = rng.normal(size=(m, 128)).astype(np.float32)
    shard = "on" if jax.device_count() > 1 else "off"
    run = lambda: uotsel.transport(src, tgt, shard=shard)  # noqa: E731
    timing = C.timed(run, repeats, warmup=0)  # the first call is the warm-up
    out = run()
    mesh = meshes.source_mesh() if shard == "on" else None
    rows = n if mesh is None else meshes.padded_size(n, mesh)
    settings = unbalanced.prepare((), rows, m, np.float32)

    @jax.jit
    def program(s, t):
        cost = costs.pairwise("cosine", s, t, jnp.float32(UOT().eps_c), rows).cost
        return unbalanced.solve(meshes.constrain_rows(cost, mesh), settings).output.log_row_sums

    if mesh is None:
        args = (
            jax.ShapeDtypeStruct((rows, 128), np.float32),
            jax.ShapeDtypeStruct((m, 128), np.float32),
        )
    else:
        args = (
            meshes.place_rows(np.zeros((rows, 128), np.float32), mesh),
            meshes.replicate(tgt, mesh),
        )
    memory = program.lower(*args).compile().memory_analysis()
    return {
        "n": n,
        "m": m,
        "devices": jax.device_count(),
        "steady_s": timing["median_s"],
        "iterations": int(out.n_iters),
        "per_device_mb": (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 1e6,
        "cost_mb": n * m * 4 / 1e6,
        "log_rows_head": np.asarray(out.log_row_sums[:1000], np.float64).tolist(),
    }


def _kmeans(n: int, k: int, repeats: int) -> dict:
    import jax

    from uotsel import clustering, lloyd
    from uotsel import mesh as meshes

    x, centroids = _unit_samples(n, k)
    chunk = clustering.default_chunk(n, k)
    if jax.device_count() > 1:
        mesh = meshes.source_mesh()
        rows = meshes.padded_size(n, mesh)
        padded = x if rows == n else np.concatenate([x, np.repeat(x[:1], rows - n, 0)])
        placed = meshes.place_rows(padded, mesh)
        chunk = min(chunk, rows // mesh.size)

        def step(c):
            return lloyd.assign_on_mesh(placed, c, True, chunk, mesh, n)

        lowered = lloyd.assign_on_mesh.lower(placed, centroids, True, chunk, mesh, n)
    else:
        placed = jax.device_put(x)

        def step(c):
            return lloyd.assign(placed, c, True, chunk)

        lowered = lloyd.assign.lower(placed, centroids, True, chunk)

    state = {"centroids": centroids}

    def iteration():
        a = step(state["centroids"])
        state["centroids"] = lloyd.update(placed, a, state["centroids"], True)
        state["objective"] = a.objective
        return state["centroids"]

    timing = C.timed(iteration, repeats, warmup=0)  # the first iteration is the warm-up
    memory = lowered.compile().memory_analysis()
    return {
        "n": n,
        "k": k,
        "devices": jax.device_count(),
        "iteration_s": timing["median_s"],
        "objective": float(state["objective"]),
        "per_device_mb": (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 1e6,
        "features_mb": n * 128 * 4 / 1e6,
    }


def _medians(runs: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each of ``runs`` over ``repeats`` calls after one warm-up call."""
    return {name: C.timed(fn, repeats, warmup=0)["median_s"] for name, fn in runs.items()}


def _unit_samples(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``[n, 128]`` random unit rows (made in float32 blocks) and ``k`` of them as centroids."""
    rng = np.random.default_rng(1)
    x = np.empty((n, 128), np.float32)
    for lo in range(0, n, 1 << 20):
        block = rng.standard_normal((min(n, lo + (1 << 20)) - lo, 128), dtype=np.float32)
        x[lo : lo + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, x[rng.choice(n, k, replace=False)]


def _peers(n: int, k: int, repeats: int) -> dict:
    """One spherical Lloyd iteration of faiss-cpu and one Euclidean Lloyd iteration of
    scikit-learn, from the same random centroids as :func:`_kmeans` (median of ``repeats``)."""
    import faiss
    from sklearn.cluster import KMeans

    x, centroids = _unit_samples(n, k)

    def run_faiss():
        km = faiss.Kmeans(128, k, niter=1, spherical=True, max_points_per_centroid=10**9)
        km.train(x, init_centroids=centroids)

    def run_sklearn():
        KMeans(k, init=centroids, n_init=1, max_iter=1, tol=0.0, algorithm="lloyd").fit(x)

    return {"n": n, "k": k, **_medians({"faiss_s": run_faiss, "sklearn_s": run_sklearn}, repeats)}


def _streamed(n: int, k: int, repeats: int) -> dict:
    """Passes over features on disk (a memory-mapped .npy): class means, and one streamed
    Lloyd iteration (``STREAM_ROWS`` rows on the device at a time)."""
    import tempfile

    import jax

    import uotsel
    from uotsel import clustering, lloyd, samples

    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "f.npy")
        out = np.lib.format.open_memmap(path, "w+", np.float32, (n, 128))
        for lo in range(0, n, STREAM_ROWS):
            hi = min(n, lo + STREAM_ROWS)
            out[lo:hi] = rng.normal(size=(hi - lo, 128))
        out.flush()
        del out
        x = np.load(path, mmap_mode="r")
        labels = rng.integers(0, 1000, size=n)
        host = samples.HostRows(x, True, STREAM_ROWS)
        centroids = jax.device_put(samples.checked_rows(x, 0, k, True))

        def iteration():
            step = lloyd.assign_streamed(host, centroids, True, clustering.default_chunk(n, k))
            return jax.block_until_ready(lloyd.update_streamed(host, step, centroids, True))

        def means():
            return uotsel.class_means(x, labels, num_classes=1000)

        timings = _medians({"class_means_s": means, "streamed_iteration_s": iteration}, repeats)
    return {"n": n, "k": k, "stream_rows": STREAM_ROWS, **timings}


def _children(kind: str, cases, devices, repeats) -> list[dict]:
    results = []
    for case in cases:
        for count in devices:
            print(f"running {kind} {case} on {count} device(s) ...", file=sys.stderr, flush=True)
            os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
            args = ["--child", kind, *map(str, case), "--repeats", str(repeats)]
            results.append(C.run_isolated("benchmarks.sharded", *args))
    os.environ.pop("XLA_FLAGS", None)
    return results


def _selection_table(selection: list[dict]) -> str:
    one = {(r["n"], r["m"]): r for r in selection if r["devices"] == 1}
    rows = []
    for r in selection:
        base = one[(r["n"], r["m"])]
        agree = np.max(np.abs(np.subtract(r["log_rows_head"], base["log_rows_head"])))
        rows.append(
            [
                f"{r['n']:,} x {r['m']:,}",
                r["devices"],
                f"{r['steady_s']:.3g}",
                f"{r['steady_s'] / base['steady_s']:.1g}",
                r["iterations"],
                f"{r['per_device_mb']:.0f}",
                f"{r['cost_mb']:.0f}",
                f"{agree:.1e}",
            ]
        )
    header = ["cost", "devices", "time s", "x 1 device", "iterations", "MB per device"]
    return C.table([*header, "cost MB", "agreement"], rows)


def _kmeans_table(kmeans: list[dict], peers: list[dict]) -> str:
    one = {(r["n"], r["k"]): r for r in kmeans if r["devices"] == 1}
    by_size = {(r["n"], r["k"]): r for r in peers}
    rows = []
    for r in kmeans:
        peer = by_size.get((r["n"], r["k"])) if r["devices"] == 1 else None
        rows.append(
            [
                f"{r['n']:,}",
                f"{r['k']:,}",
                r["devices"],
                f"{r['iteration_s']:.3g}",
                f"{r['iteration_s'] / one[(r['n'], r['k'])]['iteration_s']:.1g}",
                f"{r['per_device_mb']:.0f}",
                f"{r['features_mb']:.0f}",
                f"{peer['faiss_s']:.3g}" if peer else "",
                f"{peer['sklearn_s']:.3g}" if peer else "",
            ]
        )
    header = ["samples", "K", "devices", "s / iteration", "x 1 device", "MB per device"]
    return C.table([*header, "features MB", "faiss s", "sklearn s"], rows)


def _streamed_table(streamed: list[dict]) -> str:
    rows = [
        [
            f"{r['n']:,}",
            f"{r['k']:,}",
            f"{r['class_means_s']:.3g}",
            f"{r['n'] / r['class_means_s']:.3g}",
            f"{r['streamed_iteration_s']:.3g}",
            f"{r['n'] / r['streamed_iteration_s']:.3g}",
        ]
        for r in streamed
    ]
    header = ["samples", "K", "class means s", "rows / s", "streamed iteration s", "rows / s"]
    return C.table(header, rows)


def markdown(info, selection, kmeans, streamed, peers, label: str) -> str:
    return "\n".join(
        [
            f"## Sample axis split over devices{label}",
            "",
            C.machine_line(info),
            "",
            "Each case in a fresh process; on this CPU the devices are virtual and share its "
            "cores (no speed-up expected). Memory per device: XLA's analysis of the compiled "
            "program, arguments + temporaries on one device. Times are medians of `--repeats` "
            "runs after one warm-up; ratios to one significant figure (spreads not shown).",
            "",
            "Selection (`uotsel.transport`, cosine cost, D = 128, paper settings, steady state "
            "median; agreement: largest difference of `log(P 1)` over the first 1000 units "
            "against 1 device):",
            "",
            _selection_table(selection),
            "",
            "k-means (spherical, D = 128, one Lloyd iteration: assignment + update, median; "
            "beside the 1-device rows, one Lloyd iteration of faiss-cpu (spherical) and of "
            "scikit-learn (Euclidean, `algorithm='lloyd'`) from the same random centroids, "
            "their per-call setup included):",
            "",
            _kmeans_table(kmeans, peers),
            "",
            "Passes over features on disk (a memory-mapped float32 `.npy`, D = 128, in the page "
            "cache), one device, median: `uotsel.class_means` (1000 classes) and one streamed "
            f"Lloyd iteration (`stream_rows` {STREAM_ROWS:,}):",
            "",
            _streamed_table(streamed),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", default="1,8", help="device counts to compare")
    parser.add_argument("--device", action="store_true", help="record as the accelerator section")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n, size = args.child
        fn = {"selection": _selection, "kmeans": _kmeans, "streamed": _streamed, "peers": _peers}
        fn = fn[kind]
        print(json.dumps(fn(int(n), int(size), args.repeats)))
        return
    info = C.machine()
    devices = [int(d) for d in args.devices.split(",")]
    selection = _children("selection", [(n, 1000) for n in SELECTION_SIZES], devices, args.repeats)
    kmeans = _children("kmeans", KMEANS_CASES, devices, args.repeats)
    streamed = _children("streamed", STREAM_CASES, [1], args.repeats)
    peers = _children("peers", KMEANS_CASES, [1], args.repeats)
    label = f" on {info['jax_device']}" if args.device else ""
    md = markdown(info, selection, kmeans, streamed, peers, label)
    section = "sharded" + ("_device" if args.device else "")
    payload = {
        "machine": info,
        "selection": selection,
        "kmeans": kmeans,
        "streamed": streamed,
        "peers": peers,
    }
    C.write_results(section, md, payload)
    print(md)


if __name__ == "__main__":
    main()
