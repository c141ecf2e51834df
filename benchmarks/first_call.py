"""First calls as users meet them: a fresh process, from after the imports to the ranking.

Every peer solves the same 2000 x 200 unbalanced problem (cosine cost of Gaussian features,
D = 128, ``eps_c = 0.01``, ``eps = 1``, ``tau = (1, 100)``, the paper's setting) and returns the
source units ranked by the mass they send. Each measurement is a new Python process:

- cold: JAX's persistent compilation cache on, in an empty folder (every program compiled);
- warm: the same folder, filled by the cold process before it (programs read back from disk);
- steady: inside the warm process, the median of 20 later calls (nothing compiled or loaded).

Peers: uotsel's ``sinkhorn`` on a precomputed cost and ``transport`` (cost and solve, what
``select`` runs); the plainest jitted kernel-domain loop with a stopping test (no absorption,
no certificate, no hand-over); ott-jax's ``Sinkhorn``; POT's ``sinkhorn_knopp_unbalanced`` with
float64 and with float32 inputs (no compilation: cold = warm).

Run: ``python -m benchmarks.first_call`` (``--repeats N`` processes per measurement, default 5;
``--device`` labels the section with the accelerator JAX runs on).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import _common as C
from uotsel.settings import UOT

N, M, D = 2000, 200, 128
PAPER = UOT()
EPS_C, EPS, TAU_S, TAU_T = PAPER.eps_c, PAPER.eps, PAPER.tau_source, PAPER.tau_target
PEERS = {
    "uotsel.transport (f32)": "transport",
    "uotsel.sinkhorn on a cost (f32)": "sinkhorn",
    "plain jitted loop (f32)": "plain",
    "ott-jax Sinkhorn (f32)": "ott",
    "POT sinkhorn_knopp_unbalanced (f64)": "pot64",
    "POT sinkhorn_knopp_unbalanced (f32)": "pot32",
}
COMPILED = {"transport", "sinkhorn", "plain", "ott"}


def features() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=(N, D)).astype(np.float32),
        rng.normal(size=(M, D)).astype(np.float32),
    )


def _cosine(src, tgt, xp):
    s = src / xp.linalg.norm(src, axis=1, keepdims=True)
    t = tgt / xp.linalg.norm(tgt, axis=1, keepdims=True)
    return (1.0 - s @ t.T) / EPS_C


def _solver(peer: str):
    """A function of the features that returns the ranking (numpy ``[N]``), built after the
    imports (so that building it is not timed, as a user's imports are not)."""
    if peer in ("pot64", "pot32"):
        import ot

        dtype = np.float64 if peer == "pot64" else np.float32

        def pot(src, tgt):
            cost = _cosine(src.astype(dtype), tgt.astype(dtype), np)
            a, b = np.ones(N, dtype), np.ones(M, dtype)
            plan = ot.unbalanced.sinkhorn_knopp_unbalanced(a, b, cost, EPS, (TAU_S, TAU_T))
            return np.argsort(-plan.sum(1), kind="stable")

        return pot
    import jax
    import jax.numpy as jnp

    # uotsel's exports load on first use: they are bound here, so their imports are not timed.
    if peer == "transport":
        import uotsel

        transport = uotsel.transport
        return lambda s, t: _rank(transport(s, t, eps_c=EPS_C).log_row_sums)
    if peer == "sinkhorn":
        import uotsel

        sinkhorn, cosine_cost = uotsel.sinkhorn, uotsel.cosine_cost
        return lambda s, t: _rank(sinkhorn(cosine_cost(s, t, EPS_C)).log_row_sums)
    if peer == "ott":  # imports are not timed
        import ott.geometry.geometry
        import ott.problems.linear.linear_problem
        import ott.solvers.linear.sinkhorn  # noqa: F401
    if peer in ("plain", "ott"):
        run = jax.jit(_plain if peer == "plain" else _ott)
        return lambda s, t: _rank(run(jnp.asarray(s), jnp.asarray(t)))
    raise ValueError(peer)


def _rank(log_rows) -> np.ndarray:
    return np.argsort(-np.asarray(log_rows), kind="stable")


def _plain(src, tgt):
    """Scaling iterations on ``exp(-C / eps)`` until ``u`` moves less than 1e-5 (relative)."""
    import jax
    import jax.numpy as jnp

    kernel = jnp.exp(-_cosine(src, tgt, jnp) / EPS)
    k_s, k_t = TAU_S / (TAU_S + EPS), TAU_T / (TAU_T + EPS)

    def body(state):
        u, v, i, _ = state
        u_new = (1.0 / (kernel @ v)) ** k_s
        v_new = (1.0 / (u_new @ kernel)) ** k_t
        return u_new, v_new, i + 1, jnp.max(jnp.abs(jnp.log(u_new / u)))

    def more(state):
        return (state[3] > 1e-5) & (state[2] < 1000)

    start = (jnp.ones(N), jnp.ones(M), 0, jnp.float32(jnp.inf))
    u, v, _, _ = jax.lax.while_loop(more, body, start)
    return jnp.log(u) + jnp.log(kernel @ v)


def _ott(src, tgt):
    """ott-jax at its defaults; ``log(P 1) = f / eps + logsumexp((g - C) / eps)``."""
    import jax
    import jax.numpy as jnp
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    geom = geometry.Geometry(cost_matrix=_cosine(src, tgt, jnp), epsilon=EPS)
    k_s, k_t = TAU_S / (TAU_S + EPS), TAU_T / (TAU_T + EPS)
    out = sinkhorn.Sinkhorn()(linear_problem.LinearProblem(geom, tau_a=k_s, tau_b=k_t))
    z = (out.g[None, :] - geom.cost_matrix) / EPS
    return out.f / EPS + jax.scipy.special.logsumexp(z, axis=1)


# JAX's own durations (``jax.monitoring``) summed over a first call: XLA's compilation (a read
# from the persistent cache when warm) and tracing + lowering to XLA.
_STAGES = {
    "backend_compile_duration": "compile_s",
    "jaxpr_trace_duration": "trace_lower_s",
    "jaxpr_to_mlir_module_duration": "trace_lower_s",
}


def _stage_clock() -> dict[str, float]:
    """Totals of :data:`_STAGES`, filled by JAX while the returned dict is alive."""
    import jax.monitoring

    totals = dict.fromkeys(_STAGES.values(), 0.0)

    def listen(event: str, duration: float, **_: object) -> None:
        stage = _STAGES.get(event.rsplit("/", 1)[-1])
        if stage is not None:
            totals[stage] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    return totals


def worker(peer: str, cache: str) -> None:
    """One process: first call, then the steady state; prints one JSON line."""
    stages = {}
    if peer in COMPILED:
        import jax

        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        # The backend's own start-up (a GPU's context, the CPU client), apart from the call.
        start = time.perf_counter()
        jax.device_put(np.zeros(())).block_until_ready()
        stages["backend_s"] = time.perf_counter() - start
        stages["xla_caches"] = str(jax.config.jax_persistent_cache_enable_xla_caches)
    src, tgt = features()
    solve = _solver(peer)
    if peer in COMPILED:
        clock = _stage_clock()
    start = time.perf_counter()
    ranking = solve(src, tgt)
    first = time.perf_counter() - start
    stages = {**stages, **clock} if peer in COMPILED else {}  # the first call's share only
    times = []
    for _ in range(20):
        start = time.perf_counter()
        solve(src, tgt)
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "first_s": first,
                "steady_s": statistics.median(times),
                "top": ranking[:100].tolist(),
                **stages,
            }
        )
    )


def _process(peer: str, cache: str) -> dict:
    env = dict(os.environ, PYTHONPATH=C.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.first_call", "--worker", peer, "--cache", cache],
        capture_output=True,
        text=True,
        env=env,
        cwd=C.ROOT,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(peer: str, repeats: int) -> dict:
    cold, warm, steady, tops = [], [], [], []
    compile_s, trace_lower_s, backend_s = [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="uotsel-first-call-") as cache:
            first = _process(peer, cache)
            cold.append(first["first_s"])
            compile_s.append(first.get("compile_s", 0.0))
            trace_lower_s.append(first.get("trace_lower_s", 0.0))
            backend_s.append(first.get("backend_s", 0.0))
            if peer in COMPILED:
                second = _process(peer, cache)
                warm.append(second["first_s"])
                steady.append(second["steady_s"])
            else:
                warm.append(first["first_s"])
                steady.append(first["steady_s"])
            tops.append(first["top"])
    return {
        "cold": C.spread(cold),
        "warm": C.spread(warm),
        "steady": C.spread(steady),
        "cold_compile": C.spread(compile_s),
        "cold_trace_lower": C.spread(trace_lower_s),
        "backend": C.spread(backend_s),
        "xla_caches": first.get("xla_caches", "-"),
        "top100": tops[0],
    }


def _part_ms(result: dict, part: str) -> str:
    """Median ms of a part of the cold first call; "-" for a peer that compiles nothing."""
    spread = result.get(part)
    return "-" if not spread or spread["median"] == 0 else f"{spread['median'] * 1e3:.0f}"


def markdown(info: dict, results: dict, label: str) -> str:
    ours = results["uotsel.transport (f32)"]
    plain = results["plain jitted loop (f32)"]
    pot = results["POT sinkhorn_knopp_unbalanced (f64)"]
    reference = set(pot["top100"])
    rows = [
        [
            name,
            C.span_ms(r["cold"]),
            _part_ms(r, "cold_compile"),
            _part_ms(r, "cold_trace_lower"),
            _part_ms(r, "backend"),
            C.span_ms(r["warm"]),
            C.span_ms(r["steady"]),
            C.ratio(r["cold"], ours["cold"]),
            C.ratio(r["warm"], ours["warm"]),
            C.ratio(r["steady"], ours["steady"]),
            len(reference & set(r["top100"])),
        ]
        for name, r in results.items()
    ]
    runs = ours["cold"]["runs"]
    return "\n".join(
        [
            f"## First call, {N} x {M}{label}",
            "",
            C.machine_line(info),
            "",
            f"A new Python process per measurement, timed from after the imports to the ranking "
            f"(cost included), median (min-max) of {runs} processes, in ms. Cold: JAX's "
            "persistent cache on in an empty folder; warm: a new process on the folder the cold "
            "one filled; steady: median of 20 later calls in the warm process. Compile and trace + "
            "lower: the cold call's time in XLA's compiler and in tracing and lowering to XLA "
            "(`jax.monitoring` durations, medians). Backend set-up: the JAX backend's start-up "
            "before the call (not in cold or warm). XLA's own caches (on a GPU: the autotuner's "
            f"results) kept in the persistent cache: {ours.get('xla_caches', '-')}. Ratios are to "
            "`uotsel.transport` (above 1: slower than uotsel). Top-100 overlap with POT float64.",
            "",
            C.table(
                [
                    "peer",
                    "cold ms",
                    "of which compile",
                    "trace + lower",
                    "backend set-up",
                    "warm ms",
                    "steady ms",
                    "cold x",
                    "warm x",
                    "steady x",
                    "top-100",
                ],
                rows,
            ),
            "",
            f"uotsel's cold first call is {C.ratio(ours['cold'], plain['cold'])}x the plainest "
            f"jitted loop's ({_part_ms(ours, 'cold_compile')} ms of it in XLA's compiler, against "
            f"the loop's {_part_ms(plain, 'cold_compile')} ms) and its warm first call "
            f"{C.ratio(ours['warm'], pot['warm'])}x POT's "
            f"(float64); in the steady state POT takes {C.ratio(pot['steady'], ours['steady'])}x "
            "uotsel's time.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.cache)
        return
    info = C.machine()
    results = {}
    for name, peer in PEERS.items():
        print(f"running {name} ...", flush=True)
        results[name] = measure(peer, args.repeats)
    label = f" on {info['jax_device']}" if args.device else ""
    section = "first_call" + ("_device" if args.device else "")
    text = markdown(info, results, label)
    C.write_results(section, text, {"machine": info, "results": results})
    print(text)


if __name__ == "__main__":
    main()
