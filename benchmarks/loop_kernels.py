"""The solver loop's shape per platform, counted on the CPU: compiled kernels per iteration and
tests of a loop condition per solve.

On a GPU every kernel is a launch and every test of a ``while_loop``'s condition a round trip
to the host. The accelerator form (the stop tested every ``K`` iterations, products as
reductions; ``uotsel._iterations.Form``) is compiled here for the CPU, which counts its kernels
without a GPU: the operations left in the innermost loop body of XLA's optimised program
(fusions, library calls, copies). The tests of a condition are counted by the solver itself
(``Resume.last.tests``). Problem: 2000 x 200 cosine cost of Gaussian features (D = 128), the
paper's settings.

Run: ``python -m benchmarks.loop_kernels``.
"""

from __future__ import annotations

import argparse
import collections
import re

import jax
import numpy as np

import uotsel
from benchmarks import _common as C
from uotsel import _iterations as it
from uotsel import programs, unbalanced

K, UNROLL = it.ACCELERATOR_CHECK_EVERY, it.ACCELERATOR_UNROLL
FORMS = {
    "CPU (today's loop)": it.Form(1, "dot"),
    f"accelerator, K = {K}, none unrolled": it.Form(K, "reduce"),
    f"accelerator, K = {K}, {UNROLL} unrolled (the GPU's default)": it.Form(K, "reduce", UNROLL),
}
# Operations of an optimised HLO body that are not kernels of their own.
FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast"}


def computations(text: str) -> dict[str, list[str]]:
    """The instructions of every computation of an optimised HLO module, by name."""
    comps: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            name = head.group(1)
            comps[name] = []
        elif name and line.startswith("  "):
            comps[name].append(line.strip())
    return comps


def inner_body(text: str) -> list[str]:
    """The instructions of the innermost ``while`` body (the one holding no ``while`` itself)."""
    comps = computations(text)
    bodies = {
        m.group(1)
        for lines in comps.values()
        for line in lines
        if (m := re.search(r"\bwhile\(.*body=%?([\w.\-]+)", line))
    }
    (body,) = [b for b in bodies if not any(re.search(r"\bwhile\(", x) for x in comps[b])]
    return comps[body]


def kernels_per_iteration(text: str) -> collections.Counter:
    """Kernels of the innermost ``while`` body."""
    ops = collections.Counter()
    for line in inner_body(text):
        op = re.search(r"= (?:\([^)]*\)|\S+) ([\w\-]+)\(", line)
        if op and op.group(1) not in FREE:
            ops[op.group(1)] += 1
    return ops


def measure(form: it.Form, cost: jax.Array, settings) -> dict:
    compiled = jax.jit(lambda c, s: programs.solve_first(c, s, form=form)).lower(cost, settings)
    ops = kernels_per_iteration(compiled.compile().as_text())
    solved, resume, _ = programs.solve_first(cost, settings, form=form)
    return {  # per iteration: the innermost body's over the iterations written out in it
        "kernels": sum(ops.values()) / form.unroll,
        "by_kind": {k: v / form.unroll for k, v in ops.items()},
        "iterations": int(solved.output.n_iters),
        "tests": int(resume.last.tests),
    }


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    rng = np.random.default_rng(0)
    source = rng.normal(size=(2000, 128)).astype(np.float32)
    target = rng.normal(size=(200, 128)).astype(np.float32)
    cost = uotsel.cosine_cost(source, target)
    settings = unbalanced.prepare((), 2000, 200, np.float32)
    results = {name: measure(form, cost, settings) for name, form in FORMS.items()}
    rows = [
        [
            name,
            f"{r['kernels']:g}",
            ", ".join(f"{k} {v:g}" for k, v in sorted(r["by_kind"].items())),
            r["iterations"],
            r["tests"],
        ]
        for name, r in results.items()
    ]
    text = "\n".join(
        [
            "## The solver loop's shape, 2000 x 200",
            "",
            C.machine_line(C.machine()),
            "",
            "Compiled for this CPU (`benchmarks/loop_kernels.py`): kernels per iteration in "
            "the innermost loop body of XLA's optimised program (the body's over the iterations "
            "written out in it), and tests of a loop condition per solve (each a host round "
            "trip on a GPU). The accelerator form is what a GPU or TPU runs, here compiled for "
            "the CPU, whose compiler fuses less than a GPU's: the same program compiled for a "
            "GPU is counted in the next section.",
            "",
            C.table(
                ["form", "kernels per iteration", "of which", "iterations", "condition tests"], rows
            ),
        ]
    )
    C.write_results("loop_kernels", text, results)
    print(text)


if __name__ == "__main__":
    main()
