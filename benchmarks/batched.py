"""64 selection problems in one call against a Python loop of single calls.

The 8 embedded target data sets (ResNet18 class means: CUB 200, Dogs 120, Cars 196, Pets 37,
SUN397 397, Aircraft 100, DTD 47, Caltech101 101 classes) x 8 values of eps_c, against the
1000 ImageNet class means. The batch pads every target to 397 classes and masks the padding.
Cost computation is included on both sides.

Run: ``python -m benchmarks.batched [--repeats N]``.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

import uotsel
from benchmarks import _common as C

TARGETS = ("cub", "dogs", "cars", "pets", "sun397", "aircraft", "dtd", "caltech101")
EPS_C = (0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1)


def runners(source, targets) -> dict:
    """The five ways of solving, as functions of nothing: the 8 x 8 problems (loop, warm-started
    loop, one padded batch) and CUB at 64 values of ``eps_c`` (loop, one batch)."""
    width = max(t.shape[0] for t in targets)
    padded = jnp.asarray(
        np.stack([np.concatenate([t, np.repeat(t[:1], width - len(t), 0)]) for t in targets])
    )
    mask = np.stack([np.arange(width) < len(t) for t in targets])
    eps_c = jnp.asarray(EPS_C, jnp.float32)
    cub = targets[0]
    sweep = jnp.asarray(np.geomspace(0.005, 0.1, 64), jnp.float32)

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
        dist = jnp.stack([uotsel.cosine_cost(source, padded[i], 1.0) for i in range(len(targets))])
        costs = (dist[:, None] / eps_c[None, :, None, None]).reshape(-1, *dist.shape[1:])
        masks = np.repeat(mask, len(EPS_C), axis=0)
        return uotsel.sinkhorn(costs, target_mask=masks)

    def sweep_loop():
        return [
            uotsel.sinkhorn(uotsel.cosine_cost(source, cub, e)).log_row_sums
            for e in np.asarray(sweep)
        ]

    def sweep_batched():
        dist = uotsel.cosine_cost(source, cub, 1.0)
        return uotsel.sinkhorn(dist[None] / sweep[:, None, None])

    return {
        "loop": loop,
        "loop_warm": loop_warm,
        "batched": batched,
        "sweep_loop": sweep_loop,
        "sweep_batched": sweep_batched,
    }


def markdown(payload: dict, repeats: int, label: str) -> str:
    """The section from the figures ``main`` records."""
    n = len(TARGETS) * len(EPS_C)

    def row(how, key, base):
        t = payload[key]
        ratio = "1" if key == base else C.ratio(payload[base]["steady"], t["steady"])
        return [how, C.span_ms(t["steady"]), f"{n / t['median_s']:.0f}", ratio]

    rows = [
        row("Python loop of 64 calls", "loop", "loop"),
        row("Python loop, warm-started along eps_c", "loop_warm", "loop"),
        row("one batched call [64, 1000, 397] + masks", "batched", "loop"),
    ]
    sweep_rows = [
        row("Python loop of 64 calls", "sweep_loop", "sweep_loop"),
        row("one batched call [64, 1000, 200]", "sweep_batched", "sweep_loop"),
    ]
    iters = payload["iterations"]
    header = ["how", "steady ms, median (min-max)", "problems / s", "throughput x loop"]
    return "\n".join(
        [
            f"## 64 problems: one batched call against a loop{label}",
            "",
            C.machine_line(payload["machine"]),
            "",
            "8 embedded target data sets x 8 values of `eps_c` (0.005 to 0.1) against the 1000 "
            "ImageNet class means (ResNet18), cost computation included, over "
            f"{repeats} runs after warm-up. Iterations per problem in the batch: "
            f"{min(iters)} to {max(iters)}; largest difference of `log(P 1)` between the batch "
            f"and the loop: {payload['max_abs_diff']:.1e}.",
            "",
            C.table(header, rows),
            "",
            "Same shape, no padding: CUB (200 classes) at 64 values of `eps_c` from 0.005 to 0.1:",
            "",
            C.table(header, sweep_rows),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", action="store_true", help="record as the accelerator section")
    args = parser.parse_args()
    info = C.machine()
    source = jnp.asarray(C.target_means("imagenet"))
    ways = runners(source, [C.target_means(t) for t in TARGETS])
    payload = {"machine": info}
    for key in ("sweep_loop", "sweep_batched", "loop", "loop_warm", "batched"):
        payload[key] = C.timed(ways[key], args.repeats, warmup=1)
    # Same answers: the batch equals the loop problem by problem.
    single = ways["loop"]()
    out = ways["batched"]()
    payload["max_abs_diff"] = max(
        float(np.max(np.abs(np.asarray(out.log_row_sums[i]) - np.asarray(single[i]))))
        for i in range(len(single))
    )
    payload["iterations"] = np.asarray(out.n_iters).tolist()
    label = f" on {info['jax_device']}" if args.device else ""
    md = markdown(payload, args.repeats, label)
    C.write_results("batched" + ("_device" if args.device else ""), md, payload)
    print(md)


if __name__ == "__main__":
    main()
