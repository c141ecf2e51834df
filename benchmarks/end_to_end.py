"""``uotsel select`` as a whole process (start to JSON written) against an equivalent POT script,
and what the persistent compilation cache changes on a second run.

Both read the same ``.npz`` unit files, compute the cosine cost (eps_c = 0.01), solve with the
paper's settings, rank by ``P 1`` and write the top 100 as JSON.

Run: ``python -m benchmarks.end_to_end [--repeats N]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import _common as C
from uotsel.settings import UOT

POT_SCRIPT = """
import json, sys
import numpy as np
import ot

src = np.load(sys.argv[1])["means"].astype(np.float64)
tgt = np.load(sys.argv[2])["means"].astype(np.float64)
src /= np.linalg.norm(src, axis=1, keepdims=True)
tgt /= np.linalg.norm(tgt, axis=1, keepdims=True)
cost = (1.0 - src @ tgt.T) / EPS_C
plan = ot.unbalanced.sinkhorn_knopp_unbalanced(
    np.ones(len(src)), np.ones(len(tgt)), cost, EPS, (TAU_SOURCE, TAU_TARGET))
scores = plan.sum(1)
ranking = np.lexsort((np.arange(len(scores)), -scores))
with open(sys.argv[3], "w") as fh:
    json.dump({"selected": ranking[:100].tolist(), "scores": scores.tolist()}, fh)
"""


def _pot_script() -> str:
    """:data:`POT_SCRIPT` with the paper's settings (``uotsel.UOT()``) written in."""
    paper = UOT()
    values = {
        "EPS_C": paper.eps_c,
        "EPS": paper.eps,
        "TAU_SOURCE": paper.tau_source,
        "TAU_TARGET": paper.tau_target,
    }
    head = "".join(f"{name} = {value!r}\n" for name, value in values.items())
    return head + POT_SCRIPT


def wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", action="store_true", help="record as the accelerator section")
    args = parser.parse_args()
    info = C.machine()
    problems = {
        "cub-1000x200": (C.target_means("imagenet"), C.target_means("cub")),
        "clusters-2000x200": (C.imagenet_clusters(2000), C.target_means("cub")),
    }
    rows, payload = [], []
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "pot_select.py")
        with open(script, "w") as fh:
            fh.write(_pot_script())
        for name, (src, tgt) in problems.items():
            s_path, t_path = os.path.join(tmp, "s.npz"), os.path.join(tmp, "t.npz")
            np.savez(s_path, means=src)
            np.savez(t_path, means=tgt)
            out = os.path.join(tmp, "out.json")
            ours = [
                sys.executable,
                "-m",
                "uotsel",
                "select",
                "--source",
                s_path,
                "--target",
                t_path,
                "--out",
                out,
            ]
            path = os.pathsep.join(filter(None, [C.ROOT, os.environ.get("PYTHONPATH")]))
            base = dict(os.environ, PYTHONPATH=path)
            no_cache = dict(base, UOTSEL_CACHE_DIR="")
            cache_dir = os.path.join(tmp, f"cache-{name}")
            cached = dict(base, UOTSEL_CACHE_DIR=cache_dir)
            runs = args.repeats

            def times(cmd, env, n=runs):
                return C.spread([wall(cmd, env) for _ in range(n)])

            pot = times([sys.executable, script, s_path, t_path, out], base)
            cold = times(ours, no_cache)
            first_cached = times(ours, cached, 1)  # fills the cache
            warm = times(ours, cached)
            imports = times(
                [sys.executable, "-c", "import uotsel.cli, jax; jax.numpy.zeros(1)"], base
            )

            def row(how, x, ratio=True, name=name, pot=pot):
                spread = f"{x['median']:.2f} ({x['min']:.2f}-{x['max']:.2f})"
                return [name, how, spread, C.ratio(x, pot) if ratio else "-"]

            rows += [
                row("POT script (float64)", pot),
                row("uotsel select, no compilation cache", cold),
                row("uotsel select, first run filling the cache", first_cached),
                row("uotsel select, cache filled", warm),
                row("(python + import uotsel, jax alone)", imports, ratio=False),
            ]
            payload.append(
                {
                    "problem": name,
                    "pot": pot,
                    "cold": cold,
                    "first_cached": first_cached,
                    "warm": warm,
                    "imports": imports,
                }
            )
    md = "\n".join(
        [
            "## End to end: `uotsel select` as a process"
            + (f" on {info['jax_device']}" if args.device else ""),
            "",
            C.machine_line(info),
            "",
            "Wall time from process start to the selection file written, median (min-max) of "
            f"{args.repeats} runs, in seconds, and as a multiple of the POT script's; the POT "
            "script loads the same files, computes the same cost in "
            "numpy, calls `sinkhorn_knopp_unbalanced` with its defaults and writes the top 100.",
            "",
            C.table(["problem", "how", "seconds", "x POT"], rows),
            "",
        ]
    )
    section = "end_to_end" + ("_device" if args.device else "")
    C.write_results(section, md, {"machine": info, "results": payload})
    print(md)


if __name__ == "__main__":
    main()
