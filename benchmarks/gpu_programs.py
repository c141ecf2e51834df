"""The solver's programs compiled for a GPU on a machine without one: kernels per iteration,
matrix-sized buffers each iteration writes, and the matrix products left for the autotuner.

XLA compiles for a described GPU without the GPU itself (deviceless compilation: JAX's CUDA
plugin given a target description instead of a device). Its optimised program is the one a
device of that description runs, up to autotuning (which needs the device, and only chooses
among implementations of matrix products). Counted here: the operations of the innermost loop
body (each a kernel launch on the GPU), the ones that write an ``[n, m]`` buffer (a pass over
the matrix beyond the two products' reads), the loops whose trip count XLA knows (no test of
the condition on the host), and the matrix-product kernels in the whole program (each tuned on
the device at its first compile). Problem: the paper's settings, float32, the first programs
of ``uotsel.sinkhorn`` and ``uotsel.transport`` (the ones that finish the paper's problems).

Needs JAX's CUDA plugin of the installed JAX's version (no GPU, no CUDA driver):
``bash benchmarks/gpu_programs.sh`` makes an environment for it and runs this script.
"""

from __future__ import annotations

import os

# The plugin would otherwise look for a driver and a device when JAX starts.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")

import argparse
import re
import statistics
import time

import jax
import numpy as np

import uotsel
from benchmarks import _common as C
from benchmarks.loop_kernels import inner_body, kernels_per_iteration
from uotsel import _iterations as it
from uotsel import feature_transport, programs, unbalanced

# Device descriptions (NVIDIA's published figures: SMs, L2, memory, bandwidth, boost clock)
# for XLA's cost model and code generation; compute capability 9.0 for both.
_HOPPER = """
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: {memory}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  cuda_compute_capability {{ major: 9 minor: 0 }}
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{name}"
"""
TARGETS = {
    "h100": _HOPPER.format(
        name="NVIDIA H100 80GB HBM3", bandwidth=3_352_320_000_000, memory=84_929_347_584
    ),
    "h200": _HOPPER.format(name="NVIDIA H200", bandwidth=4_800_000_000_000, memory=150_754_820_096),
}
K, UNROLL = it.ACCELERATOR_CHECK_EVERY, it.ACCELERATOR_UNROLL
DIM = 512  # feature dimension of `transport`'s cost (ResNet-18 features)


def _sinkhorn(form):
    def lower(cost, features, settings):
        return programs._first_program.lower(cost, settings, lockstep=False, form=form)

    return lower


def _transport(cost, features, settings):
    source, target, eps_c = features
    return feature_transport._transport_first.lower(
        "cosine", source, target, eps_c, source.shape[0], settings, False, None
    )


def _ott(cost, features, settings):
    """ott-jax's Sinkhorn at its defaults (threshold 1e-3, its stop tested every 10
    iterations) on the same cost and settings."""
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    paper = uotsel.UOT()
    eps = paper.eps

    def solve(cost):
        geom = geometry.Geometry(cost_matrix=cost, epsilon=eps)
        problem = linear_problem.LinearProblem(
            geom,
            tau_a=paper.tau_source / (paper.tau_source + eps),
            tau_b=paper.tau_target / (paper.tau_target + eps),
        )
        out = sinkhorn.Sinkhorn()(problem)
        return out.f, out.g, out.n_iters, out.converged

    return jax.jit(solve).lower(cost)


# Programs compiled: a label, how to lower it, and the iterations written out per loop trip.
PROGRAMS = {
    "`sinkhorn`, the CPU's loop (K = 1, dot)": (_sinkhorn(it.Form(1, "dot")), 1),
    f"`sinkhorn`, K = {K}, none unrolled": (_sinkhorn(it.Form(K, "reduce")), 1),
    f"`sinkhorn`, the default (K = {K}, {UNROLL} unrolled)": (_sinkhorn(None), UNROLL),
    f"`transport` (D = {DIM}), the default": (_transport, UNROLL),
    "ott-jax `Sinkhorn` at its defaults": (_ott, 1),
}
SIZES = ((2000, 200), (1000, 200))


def compile_only_device(target: str) -> jax.Device:
    """A device of the described GPU to compile for (it runs nothing)."""
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(
        platform="cuda", target_config=TARGETS[target], topology="1x1x1"
    )
    return topology.devices[0]


def program_text(device: jax.Device, n: int, m: int, lower, repeats: int = 3) -> tuple[str, float]:
    """The optimised program ``lower(cost, features, settings)`` lowers at ``n x m`` and the
    median time of ``repeats`` compiles."""
    where = jax.sharding.SingleDeviceSharding(device)

    def spec(x):
        return jax.ShapeDtypeStruct(np.shape(x), np.result_type(x), sharding=where)

    settings = jax.tree.map(spec, unbalanced.prepare((), n, m, np.float32))
    cost = spec(np.empty((n, m), np.float32))
    features = tuple(spec(np.empty(s, np.float32)) for s in ((n, DIM), (m, DIM), ()))
    times = []
    for _ in range(repeats):
        jax.clear_caches()  # else a compile of the same program is taken from memory
        lowered = lower(cost, features, settings)
        start = time.perf_counter()
        compiled = lowered.compile()
        times.append(time.perf_counter() - start)
    return compiled.as_text(), statistics.median(times)


def matrix_writes(body: list[str], n: int, m: int) -> int:
    """Kernels of the loop body whose output is an ``[n, m]`` (or ``[m, n]``) buffer."""
    shapes = (rf"\[{n},{m}\]", rf"\[{m},{n}\]")
    return sum(
        1
        for line in body
        if re.search(r"= \S+ (fusion|copy|custom-call)\(", line)
        and any(re.search(r"= \(?\w+" + s, line) for s in shapes)
    )


def measure(device: jax.Device, n: int, m: int, lower, unroll: int) -> dict:
    """The figures of one program; per iteration: the innermost body's over ``unroll``."""
    text, seconds = program_text(device, n, m, lower)
    ops = kernels_per_iteration(text)
    loops = re.findall(r"\bwhile\(.*", text)
    return {
        "kernels": sum(ops.values()) / unroll,
        "by_kind": {k: v / unroll for k, v in ops.items()},
        "matrix_writes": matrix_writes(inner_body(text), n, m) / unroll,
        "loops": len(loops),
        "known_trip_count": sum("known_trip_count" in x for x in loops),
        "matrix_products": len(re.findall(r'"__triton[a-z_]*gemm[a-z_]*"|\$gemm"', text)),
        "compile_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=sorted(TARGETS), default="h100")
    args = parser.parse_args()
    device = compile_only_device(args.target)
    results = {
        f"{n}x{m}": {name: measure(device, n, m, *how) for name, how in PROGRAMS.items()}
        for n, m in SIZES
    }
    rows = [
        [
            size,
            name,
            f"{r['kernels']:g}",
            ", ".join(f"{k} {v:g}" for k, v in sorted(r["by_kind"].items())),
            f"{r['matrix_writes']:g}",
            f"{r['known_trip_count']} of {r['loops']}",
            r["matrix_products"],
            f"{r['compile_s']:.2f}",
        ]
        for size, forms in results.items()
        for name, r in forms.items()
    ]
    text = "\n".join(
        [
            f"## The solver's programs compiled for an {device.device_kind}, without one",
            "",
            f"Compiled on this machine (deviceless compilation, JAX {jax.__version__}; "
            "`bash benchmarks/gpu_programs.sh`).",
            "",
            C.machine_line(C.machine()),
            "",
            "The first programs of `uotsel.sinkhorn` and `uotsel.transport`, and ott-jax's "
            "`Sinkhorn` on the same cost, at the paper's settings in float32: kernels per "
            "iteration in the innermost loop body (each a launch on the GPU; the body's count "
            "over the iterations written out in it), those of them that write a matrix-sized "
            "buffer, the loops whose trip count XLA knows (no test of a condition on the host), "
            "the matrix-product kernels the autotuner tunes at the first compile on a device, "
            "and the median of three compiles here (no autotuning). uotsel's "
            "default is chosen when the program is lowered, as it is on a GPU.",
            "",
            C.table(
                [
                    "problem",
                    "program",
                    "kernels per iteration",
                    "of which",
                    "matrix-sized writes per iteration",
                    "loops of known trip count",
                    "matrix products to tune",
                    "compile (s)",
                ],
                rows,
            ),
        ]
    )
    C.write_results(f"gpu_programs_{args.target}", text, results)
    print(text)


if __name__ == "__main__":
    main()
