"""What a ``transport`` call costs around its compiled programs, on a tiny and the paper's size.

``transport`` checks its inputs and settings, places host features on the device explicitly (a
steady call makes no implicit transfer), runs its programs, and reads back four validity flags
to raise a one-line error for bad input. The baseline is the same problem as one jitted
function, ``cosine_cost`` + ``sinkhorn``, given device features (no checks, no flags read
back); beside it the same jitted function given host (numpy) features, which the call copies,
the same after an explicit copy (``jax.device_put``, then the call), and that copy alone.

Each arm is timed in rounds that alternate between the arms (the median of ``--calls`` calls
per round, after warm-up); the table gives the median over rounds and the spread of the round
medians, and each arm's ratio to the baseline's.

Run: ``python -m benchmarks.call_overhead`` (``--rounds``, ``--calls``; ``--device`` labels the
section with the accelerator JAX runs on).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

import uotsel
from benchmarks import _common as C

SIZES = {"8 x 4 (D = 16)": (8, 4, 16), "2000 x 200 (D = 128)": (2000, 200, 128)}


def arms(n: int, m: int, d: int) -> dict:
    """The timed calls on one problem size, each returning something to wait for."""
    rng = np.random.default_rng(0)
    source = rng.normal(size=(n, d)).astype(np.float32)
    target = rng.normal(size=(m, d)).astype(np.float32)
    on_device = jax.device_put([source, target])
    jitted = jax.jit(lambda s, t: uotsel.sinkhorn(uotsel.cosine_cost(s, t)))
    return {
        "jitted cosine_cost + sinkhorn, device features (baseline)": lambda: jitted(*on_device),
        "the same, numpy features (implicit copy)": lambda: jitted(source, target),
        "the same after jax.device_put of the numpy features": lambda: jitted(
            *jax.device_put([source, target])
        ),
        "transport, device features": lambda: uotsel.transport(*on_device),
        "transport, numpy features": lambda: uotsel.transport(source, target),
        "jax.device_put of the numpy features alone": lambda: jax.device_put([source, target]),
    }


def measure(calls: dict, rounds: int, per_round: int) -> dict:
    """Per arm: the :func:`benchmarks._common.spread` of ``rounds`` medians of ``per_round``
    calls, the arms alternating round by round."""
    for fn in calls.values():
        for _ in range(20):
            C.block(fn())
    medians: dict = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            times = []
            for _ in range(per_round):
                start = time.perf_counter()
                C.block(fn())
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times))
    return {name: C.spread(values) for name, values in medians.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200, help="calls per arm and round")
    parser.add_argument("--device", action="store_true", help="label the section by device")
    args = parser.parse_args()
    results, rows = {}, []
    for label, (n, m, d) in SIZES.items():
        calls = max(args.calls * 8 // 2000, 10) if n >= 2000 else args.calls
        spreads = measure(arms(n, m, d), args.rounds, calls)
        base = next(iter(spreads.values()))
        results[label] = spreads
        for name, s in spreads.items():
            rows.append([label, name, C.span_ms(s), C.ratio(s, base)])
    device = jax.devices()[0]
    where = f" on {device.device_kind}" if args.device else ""
    text = "\n".join(
        [
            f"## A call's cost around its programs{where}",
            "",
            C.machine_line(C.machine()),
            "",
            "`benchmarks/call_overhead.py`: milliseconds per call, median over "
            f"{args.rounds} rounds (min-max of the round medians), each round the median of "
            f"{args.calls} calls ({max(args.calls * 8 // 2000, 10)} at 2000 x 200), the arms "
            "alternating; the paper's settings, float32.",
            "",
            C.table(["problem", "call", "ms", "x baseline"], rows),
        ]
    )
    name = "call_overhead_device" if args.device else "call_overhead"
    C.write_results(name, text, {"rounds": args.rounds, "calls": args.calls, "results": results})
    print(text)


if __name__ == "__main__":
    main()
