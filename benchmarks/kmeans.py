"""Spherical k-means at ImageNet scale: uotsel against faiss-cpu and scikit-learn.

Synthetic clustered data on the unit sphere (N x 128, 4000 planted directions with noise), N =
200k and 1.28M, K = 200 and 2000. Every tool starts from the same k-means++ centroids and runs
the same number of Lloyd iterations (no early stop), so time per iteration and the objective
reached are comparable; the objective sum_i (1 - max_j cos(x_i, c_j)) of each tool's final
centroids is evaluated by one shared routine. scikit-learn runs Euclidean k-means on the
normalised data (it has no spherical variant). Each run is a fresh process (peak memory above
its baseline, which already holds the features).

Run: ``python -m benchmarks.kmeans [--iters 10] [--sizes 200000,1280000] [--ks 200,2000]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from benchmarks import _common as C

D = 128


def data(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4000, D)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, len(centres), size=n)]
    x += 0.08 * rng.standard_normal(size=x.shape, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def objective(x: np.ndarray, centroids: np.ndarray) -> float:
    import jax.numpy as jnp

    from uotsel import lloyd

    c = np.asarray(centroids, np.float32)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    return float(lloyd.assign(jnp.asarray(x), jnp.asarray(c), True, 8192).objective)


def whole_run(tool: str, x: np.ndarray, k: int, max_iter: int):
    """Seeding and Lloyd iterations at each tool's own defaults, capped at ``max_iter``
    iterations; returns ``(centroids, iterations)``."""
    if tool == "uotsel":
        import uotsel

        res = uotsel.kmeans(x, k, max_iter=max_iter, seed=0)
        return res.centroids, res.n_iters
    if tool == "faiss":
        import faiss

        km = faiss.Kmeans(D, k, niter=max_iter, spherical=True, seed=0, verbose=False)
        km.train(x)
        return km.centroids, max_iter
    from sklearn.cluster import KMeans

    km = KMeans(k, max_iter=max_iter, random_state=0).fit(x)
    return km.cluster_centers_, int(km.n_iter_)


def child(tool: str, n: int, k: int, iters: int) -> dict:
    x = data(n)
    import jax
    import jax.numpy as jnp

    from uotsel import clustering, lloyd

    if tool.endswith("-defaults"):
        baseline = C.reset_peak_rss()
        start = time.perf_counter()
        centroids, done = whole_run(tool.removesuffix("-defaults"), x, k, iters)
        total = time.perf_counter() - start
        return {
            "tool": tool,
            "n": n,
            "k": k,
            "iters": done,
            "total_s": total,
            "peak_above_baseline_mb": C.peak_rss_mb() - baseline,
            "features_mb": x.nbytes / 2**20,
            "objective": objective(x, np.asarray(centroids)),
        }

    init = np.asarray(
        lloyd.greedy_plus_plus(
            jnp.asarray(
                x[np.random.default_rng(1).choice(n, min(n, 16 * k + 1024), replace=False)]
            ),
            k,
            2 + int(np.log(k)),
            True,
            __import__("jax").random.key(0),
        )
    )
    baseline = C.reset_peak_rss()
    start = time.perf_counter()
    if tool == "uotsel":
        xj = jax.device_put(x)  # one copy, as uotsel.kmeans makes
        chunk = clustering.default_chunk(n, k)
        centroids = jnp.asarray(init)
        lloyd.assign(xj, centroids, True, chunk).labels.block_until_ready()  # compile
        start = time.perf_counter()
        for _ in range(iters):
            step = lloyd.assign(xj, centroids, True, chunk)
            centroids = lloyd.update(xj, step, centroids, True)
        centroids = np.asarray(centroids)
    elif tool == "faiss":
        import faiss

        km = faiss.Kmeans(
            D, k, niter=iters, spherical=True, seed=0, verbose=False, max_points_per_centroid=10**9
        )
        km.train(x, init_centroids=init)
        centroids = km.centroids
    elif tool == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(k, init=init, n_init=1, max_iter=iters, tol=0.0, algorithm="lloyd")
        km.fit(x)
        centroids = km.cluster_centers_
    else:
        raise ValueError(tool)
    total = time.perf_counter() - start
    peak = C.peak_rss_mb() - baseline
    return {
        "tool": tool,
        "n": n,
        "k": k,
        "iters": iters,
        "total_s": total,
        "per_iter_s": total / iters,
        "peak_above_baseline_mb": peak,
        "features_mb": x.nbytes / 2**20,
        "objective": objective(x, centroids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--sizes", default="200000,1280000")
    parser.add_argument("--ks", default="200,2000")
    parser.add_argument(
        "--whole-sizes", default="200000", help="sizes of the whole-run comparison (defaults)"
    )
    parser.add_argument("--device", action="store_true", help="record as the accelerator section")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tool, n, k, iters = args.child
        print(json.dumps(child(tool, int(n), int(k), int(iters))))
        return
    info = C.machine()
    results = _run_children(args.sizes, args.ks, ("uotsel", "faiss", "sklearn"), args.iters)
    tools = ("uotsel-defaults", "faiss-defaults", "sklearn-defaults")
    whole = _run_children(args.whole_sizes, args.ks, tools, 50)
    label = f" on {info['jax_device']}" if args.device else ""
    md = markdown(info, results, whole, args.iters, label)
    section = "kmeans" + ("_device" if args.device else "")
    C.write_results(section, md, {"machine": info, "results": results, "whole_runs": whole})
    print(md)


def _run_children(sizes: str, ks: str, tools, iters: int) -> list[dict]:
    results = []
    for n in (int(s) for s in sizes.split(",")):
        for k in (int(s) for s in ks.split(",")):
            for tool in tools:
                print(f"running {tool} N={n} K={k} ...", file=sys.stderr, flush=True)
                results.append(
                    C.run_isolated("benchmarks.kmeans", "--child", tool, str(n), str(k), str(iters))
                )
    return results


def markdown(info, results, whole, iters, label) -> str:
    rows = []
    for r in results:
        ref = next(
            x for x in results if x["n"] == r["n"] and x["k"] == r["k"] and x["tool"] == "faiss"
        )
        rows.append(
            [
                f"{r['n']:,}",
                f"{r['k']:,}",
                r["tool"],
                f"{r['per_iter_s']:.3f}",
                f"{r['per_iter_s'] / ref['per_iter_s']:.2f}",
                f"{r['objective']:.6g}",
                f"{r['peak_above_baseline_mb']:.0f}",
                f"{r['peak_above_baseline_mb'] / r['features_mb']:.2f}",
            ]
        )
    whole_rows = [
        [
            f"{r['n']:,}",
            f"{r['k']:,}",
            r["tool"].removesuffix("-defaults"),
            f"{r['total_s']:.2f}",
            r["iters"],
            f"{r['objective']:.6g}",
            f"{r['peak_above_baseline_mb']:.0f}",
        ]
        for r in whole
    ]
    return "\n".join(
        [
            f"## Spherical k-means: uotsel, faiss-cpu, scikit-learn{label}",
            "",
            C.machine_line(info),
            "",
            f"Synthetic unit-norm data, D = 128; all tools start from the same k-means++ centroids "
            f"and run {iters} Lloyd iterations; objective = sum of (1 - cosine to the nearest "
            "centroid) for each tool's final centroids, evaluated by one routine; memory = peak "
            "above the process baseline (which holds the features), in MB and in units of the "
            "feature matrix. scikit-learn: Euclidean Lloyd on the normalised data.",
            "",
            C.table(
                [
                    "N",
                    "K",
                    "tool",
                    "s / iteration",
                    "x faiss",
                    "objective",
                    "peak MB",
                    "peak / features",
                ],
                rows,
            ),
            "",
            "Whole runs at each tool's defaults (seeding included: uotsel's candidate greedy "
            "k-means++ seedings on a sample, 8 up to K = 256 and 2048 // K beyond, faiss's random "
            "sample of centroids and its subsampling to 256 points per centroid, scikit-learn's "
            "greedy k-means++ on all the data), at most 50 Lloyd iterations, stopping rules as "
            "each tool's own; one run each (seed 0):",
            "",
            C.table(
                ["N", "K", "tool", "total s", "iterations", "objective", "peak MB"], whole_rows
            ),
            "",
        ]
    )


if __name__ == "__main__":
    main()
