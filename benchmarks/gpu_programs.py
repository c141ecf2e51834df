"""The solver's programs compiled for a GPU on a machine without one: kernels per iteration,
matrix-sized buffers each iteration writes, and the matrix products left for the autotuner.

XLA compiles for a described GPU without the GPU itself (deviceless compilation: JAX's CUDA
plugin given a target description instead of a device). Its optimised program is the one a
device of that description runs, up to autotuning (which needs the device, and only chooses
among implementations of matrix products). Counted here: the operations of the innermost loop
body (each a kernel launch on the GPU), the ones that write an ``[n, m]`` buffer (a pass over
the matrix beyond the two products' reads), the loops whose trip count XLA knows (no test of
the condition on the host), and the matrix-product kernels in the whole program (each tuned on
the device at its first compile). Problem: the paper's settings, float32, the first program
of ``uotsel.sinkhorn`` (the one that finishes the paper's problems).

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
import jax.numpy as jnp
import numpy as np

from benchmarks import _common as C
from benchmarks.loop_kernels import inner_body, kernels_per_iteration
from uotsel import _iterations as it
from uotsel import programs, unbalanced

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
FORMS = {
    "CPU's loop (K = 1, dot)": it.Form(1, "dot"),
    f"K = {K}, auto, none unrolled": it.Form(K, "auto"),
    f"K = {K}, auto, {UNROLL} unrolled (the GPU's default)": it.Form(K, "auto", UNROLL),
}
SIZES = ((2000, 200), (1000, 200))


def compile_only_device(target: str) -> jax.Device:
    """A device of the described GPU to compile for (it runs nothing)."""
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(
        platform="cuda", target_config=TARGETS[target], topology="1x1x1"
    )
    return topology.devices[0]


def program_text(
    device: jax.Device, n: int, m: int, form: it.Form, repeats: int = 3
) -> tuple[str, float]:
    """The optimised program of ``sinkhorn``'s first half at ``n x m`` and the median time of
    ``repeats`` compiles."""
    where = jax.sharding.SingleDeviceSharding(device)

    def spec(x):
        return jax.ShapeDtypeStruct(np.shape(x), np.result_type(x), sharding=where)

    settings = jax.tree.map(spec, unbalanced.prepare((), n, m, np.float32))
    cost = jax.ShapeDtypeStruct((n, m), jnp.float32, sharding=where)
    times = []
    for _ in range(repeats):
        jax.clear_caches()  # else a compile of the same program is taken from memory
        lowered = programs._first_program.lower(cost, settings, lockstep=False, form=form)
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


def measure(device: jax.Device, n: int, m: int, form: it.Form) -> dict:
    """The figures of one program; per iteration: the innermost body's over ``form.unroll``."""
    text, seconds = program_text(device, n, m, form)
    ops = kernels_per_iteration(text)
    loops = re.findall(r"\bwhile\(.*", text)
    return {
        "kernels": sum(ops.values()) / form.unroll,
        "by_kind": {k: v / form.unroll for k, v in ops.items()},
        "matrix_writes": matrix_writes(inner_body(text), n, m) / form.unroll,
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
        f"{n}x{m}": {name: measure(device, n, m, form) for name, form in FORMS.items()}
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
            "The first program of `uotsel.sinkhorn` at the paper's settings in float32: kernels "
            "per iteration in its innermost loop body (each a launch on the GPU; the body's "
            "count over the iterations written out in it), those of them that write a "
            "matrix-sized buffer, the loops whose trip count XLA knows (no test of a condition "
            "on the host), the matrix-product kernels the autotuner tunes at the first compile "
            "on a device, and the median of three compiles here (no autotuning).",
            "",
            C.table(
                [
                    "problem",
                    "form",
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
