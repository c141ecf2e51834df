"""64 selection problems in one call against a Python loop of single calls.

The 8 embedded target data sets (ResNet18 class means: CUB 200, Dogs 120, Cars 196, Pets 37,
SUN397 397, Aircraft 100, DTD 47, Caltech101 101 classes) x 8 values of eps_c, against the
1000 ImageNet class means. The batch pads every target to 397 classes and masks the padding.
Cost computation is included on both sides.

Run: ``python benchmarks/batched.py [--repeats N]``.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

import uotsel
from benchmarks import _common as C

TARGETS = ("cub", "dogs", "cars", "pets", "sun397", "aircraft", "dtd", "caltech101")
EPS_C = (0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", action="store_true", help="record as the accelerator section")
    args = parser.parse_args()
    info = C.machine()
    source = jnp.asarray(C.target_means("imagenet"))
    targets = [C.target_means(t) for t in TARGETS]
    width = max(t.shape[0] for t in targets)
    padded = jnp.asarray(
        np.stack([np.concatenate([t, np.repeat(t[:1], width - len(t), 0)]) for t in targets])
    )
    mask = np.stack([np.arange(width) < len(t) for t in targets])
    eps_c = jnp.asarray(EPS_C, jnp.float32)

    def loop():
        outs = []
        for tgt in targets:
            for e in EPS_C:
                outs.append(uotsel.sinkhorn(uotsel.cosine_cost(source, tgt, e)))
        return [o.log_row_sums for o in outs]

    def loop_warm():
        outs = []
        for tgt in targets:
            prev = None
            for e in EPS_C:
                prev = uotsel.sinkhorn(uotsel.cosine_cost(source, tgt, e), init=prev)
                outs.append(prev)
        return [o.log_row_sums for o in outs]

    def batched():
        dist = jnp.stack([uotsel.cosine_cost(source, padded[i], 1.0) for i in range(len(TARGETS))])
        costs = (dist[:, None] / eps_c[None, :, None, None]).reshape(-1, *dist.shape[1:])
        masks = np.repeat(mask, len(EPS_C), axis=0)
        return uotsel.sinkhorn(costs, target_mask=masks)

    cub = targets[0]
    sweep = jnp.asarray(np.geomspace(0.005, 0.1, 64), jnp.float32)

    def sweep_loop():
        return [
            uotsel.sinkhorn(uotsel.cosine_cost(source, cub, e)).log_row_sums
            for e in np.asarray(sweep)
        ]

    def sweep_batched():
        dist = uotsel.cosine_cost(source, cub, 1.0)
        return uotsel.sinkhorn(dist[None] / sweep[:, None, None])

    t_sweep_loop = C.timed(sweep_loop, args.repeats, warmup=1)
    t_sweep_batch = C.timed(sweep_batched, args.repeats, warmup=1)
    t_loop = C.timed(loop, args.repeats, warmup=1)
    t_warm = C.timed(loop_warm, args.repeats, warmup=1)
    t_batch = C.timed(batched, args.repeats, warmup=1)

    # Same answers: the batch equals the loop problem by problem.
    single = loop()
    out = batched()
    worst = max(
        float(np.max(np.abs(np.asarray(out.log_row_sums[i]) - np.asarray(single[i]))))
        for i in range(len(single))
    )
    iters = np.asarray(out.n_iters)
    n = len(TARGETS) * len(EPS_C)
    rows = [
        [
            "Python loop of 64 calls",
            C.ms(t_loop["median_s"]),
            f"{n / t_loop['median_s']:.0f}",
            "1.0",
        ],
        [
            "Python loop, warm-started along eps_c",
            C.ms(t_warm["median_s"]),
            f"{n / t_warm['median_s']:.0f}",
            f"{t_loop['median_s'] / t_warm['median_s']:.2f}",
        ],
        [
            "one batched call [64, 1000, 397] + masks",
            C.ms(t_batch["median_s"]),
            f"{n / t_batch['median_s']:.0f}",
            f"{t_loop['median_s'] / t_batch['median_s']:.2f}",
        ],
    ]
    sweep_rows = [
        [
            "Python loop of 64 calls",
            C.ms(t_sweep_loop["median_s"]),
            f"{n / t_sweep_loop['median_s']:.0f}",
            "1.0",
        ],
        [
            "one batched call [64, 1000, 200]",
            C.ms(t_sweep_batch["median_s"]),
            f"{n / t_sweep_batch['median_s']:.0f}",
            f"{t_sweep_loop['median_s'] / t_sweep_batch['median_s']:.2f}",
        ],
    ]
    md = "\n".join(
        [
            "## 64 problems: one batched call against a loop"
            + (f" on {info['jax_device']}" if args.device else ""),
            "",
            C.machine_line(info),
            "",
            "8 embedded target data sets x 8 values of `eps_c` (0.005 to 0.1) against the 1000 "
            "ImageNet class means (ResNet18), cost computation included, median of "
            f"{args.repeats} runs after warm-up. Iterations per problem in the batch: "
            f"{int(iters.min())} to {int(iters.max())}; largest difference of `log(P 1)` between "
            f"the batch and the loop: {worst:.1e}.",
            "",
            C.table(["how", "steady ms", "problems / s", "throughput x loop"], rows),
            "",
            "Same shape, no padding: CUB (200 classes) at 64 values of `eps_c` from 0.005 to 0.1:",
            "",
            C.table(["how", "steady ms", "problems / s", "throughput x loop"], sweep_rows),
            "",
        ]
    )
    C.write_results(
        "batched" + ("_device" if args.device else ""),
        md,
        {
            "machine": info,
            "loop": t_loop,
            "loop_warm": t_warm,
            "batched": t_batch,
            "sweep_loop": t_sweep_loop,
            "sweep_batched": t_sweep_batch,
            "iterations": iters.tolist(),
            "max_abs_diff": worst,
        },
    )
    print(md)


if __name__ == "__main__":
    main()
