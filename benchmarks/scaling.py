"""How time and memory grow with the number of source units: 1k to 1M clusters x 200 and
1000 target classes, cosine cost (D = 128), paper settings.

Each case runs in a fresh process so that its peak memory is its own. Memory is reported above
the process's baseline (interpreter, JAX, features) and in units of one cost matrix; the solver
holds the cost matrix and one kernel of the same size, and XLA's own memory analysis of the
compiled solver is reported alongside.

Run: ``python -m benchmarks.scaling [--max-n 1000000] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from benchmarks import _common as C


def child(n: int, m: int, dtype: str, threshold: float, repeats: int) -> dict:
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import uotsel
    from uotsel import unbalanced

    rng = np.random.default_rng(0)
    src = jnp.asarray(C.imagenet_clusters(n, backbone="mocov2_resnet50"), dtype)
    tgt = jnp.asarray(rng.normal(size=(m, 128)), dtype)
    jax.block_until_ready((src, tgt))
    baseline = C.reset_peak_rss()

    def run():
        cost = uotsel.cosine_cost(src, tgt)
        return uotsel.sinkhorn(cost, threshold=threshold)

    start = time.perf_counter()
    out = jax.block_until_ready(run())
    first = time.perf_counter() - start
    times, cost_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        cost = jax.block_until_ready(uotsel.cosine_cost(src, tgt))
        mid = time.perf_counter()
        out = jax.block_until_ready(uotsel.sinkhorn(cost, threshold=threshold))
        times.append(time.perf_counter() - start)
        cost_times.append(mid - start)
        del cost
    cost_bytes = n * m * jnp.dtype(dtype).itemsize
    spec = jax.ShapeDtypeStruct((n, m), dtype)
    settings = unbalanced.prepare((), n, m, jnp.dtype(dtype), threshold=threshold)
    compiled = unbalanced.solve.lower(spec, settings, method="auto").compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    stats = jax.devices()[0].memory_stats() or {}  # accelerators: bytes on the device
    return {
        "n": n,
        "m": m,
        "dtype": dtype,
        "threshold": threshold,
        "first_s": first,
        "median_s": float(np.median(times)),
        "cost_median_s": float(np.median(cost_times)),
        "iterations": int(out.n_iters),
        "error": float(out.error),
        "converged": bool(out.converged),
        "cost_matrix_mb": cost_bytes / 2**20,
        "peak_above_baseline_mb": C.peak_rss_mb() - baseline,
        "solver_temp_mb": temp / 2**20,
        "device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20 or None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", action="store_true", help="record as the accelerator section")
    parser.add_argument(
        "--child", nargs=4, metavar=("N", "M", "DTYPE", "THRESHOLD"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        n, m, dtype, thr = args.child
        print(json.dumps(child(int(n), int(m), dtype, float(thr), args.repeats)))
        return
    info = C.machine()
    cases = [
        (n, m, "float32", 1e-5)
        for m in (200, 1000)
        for n in (1_000, 10_000, 100_000, 1_000_000)
        if n <= args.max_n
    ]
    cases.append((100_000, 1000, "float64", 1e-6))
    results = []
    for n, m, dtype, thr in cases:
        print(f"running {n} x {m} {dtype} ...", file=sys.stderr, flush=True)
        results.append(
            C.run_isolated(
                "benchmarks.scaling",
                "--repeats",
                str(args.repeats),
                "--child",
                str(n),
                str(m),
                dtype,
                str(thr),
            )
        )
    rows = [
        [
            f"{r['n']:,} x {r['m']:,}",
            r["dtype"],
            f"{r['threshold']:g}",
            f"{r['median_s']:.3f}",
            f"{r['cost_median_s']:.3f}",
            r["iterations"],
            f"{r['error']:.1e}",
            f"{r['cost_matrix_mb']:.0f}",
            f"{r['peak_above_baseline_mb']:.0f}",
            f"{r['peak_above_baseline_mb'] / r['cost_matrix_mb']:.2f}",
            f"{r['solver_temp_mb'] / r['cost_matrix_mb']:.2f}",
            f"{r['device_peak_mb']:.0f}" if r.get("device_peak_mb") else "-",
        ]
        for r in results
    ]
    md = "\n".join(
        [
            "## Scaling with the number of source units"
            + (f" on {info['jax_device']}" if args.device else ""),
            "",
            C.machine_line(info),
            "",
            "Cosine cost from 128-d features (synthetic clusters around the MoCo-v2 ImageNet class "
            "means x random targets), `eps_c = 0.01`, `eps = 1`, `tau = (1, 100)`; time = cost + "
            f"solve, median of {args.repeats} runs after a first (compiling) run; memory = peak "
            "resident memory above the process's baseline (which already holds the features), "
            "in MB and in cost-matrix units; XLA temp = the compiled solver's own scratch memory "
            "in cost-matrix units (the cost matrix itself is the solver's input); device peak = "
            "the accelerator's own peak memory (not reported on CPU).",
            "",
            C.table(
                [
                    "source x target",
                    "dtype",
                    "threshold",
                    "total s",
                    "of which cost s",
                    "iterations",
                    "certified error",
                    "cost matrix MB",
                    "peak MB",
                    "peak / cost",
                    "XLA temp / cost",
                    "device peak MB",
                ],
                rows,
            ),
            "",
        ]
    )
    section = "scaling" + ("_device" if args.device else "")
    C.write_results(section, md, {"machine": info, "results": results})
    print(md)


if __name__ == "__main__":
    main()
