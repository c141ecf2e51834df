"""Unbalanced Sinkhorn on the paper's settings: uotsel against POT, ott-jax and a numpy
transcription of the paper's scaling iterations, in one process.

Problems (cosine cost, eps_c = 0.01, eps = 1, tau 1 / 100, unit weights):
  clusters-2000x200: 2000 synthetic cluster centroids around the embedded ImageNet class means
    (ResNet18, D = 512) x the 200 CUB class means, the paper's unlabelled setting;
  random-2000x200: Gaussian features, D = 128;
  cub-1000x200: the paper's ImageNet x CUB class means (ResNet18).

Peers in float32 and float64 where they run in both (POT computes in its inputs' dtype;
ott-jax and uotsel in float64 under ``jax.enable_x64``). For every peer: first call in this
process (compilation included, after ``jax.clear_caches``; ``benchmarks.first_call`` measures
first calls in new processes) and steady state (median, min and max of >= 20 runs), cost
computation included; iterations; the largest relative error of ``P 1`` over all rows against
a float64 reference converged to 1e-13; top-100 agreement; and time to accuracy (1e-4, 1e-6).

Run: ``python -m benchmarks.sinkhorn_peers`` (``--repeats N``; ``--device`` labels the section
with the accelerator JAX runs on, for a GPU run).
"""

from __future__ import annotations

import argparse
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

import uotsel
from benchmarks import _common as C
from uotsel import _iterations as _it
from uotsel import unbalanced

PAPER = uotsel.UOT()
EPS, TAU_S, TAU_T, EPS_C = PAPER.eps, PAPER.tau_source, PAPER.tau_target, PAPER.eps_c
K_S, K_T = TAU_S / (TAU_S + EPS), TAU_T / (TAU_T + EPS)
HIGHEST = jax.lax.Precision.HIGHEST
# Thresholds tried, tightest first, for ott-jax's best converging setting in each dtype.
OTT_THRESHOLDS = {32: (1e-5, 3e-5, 1e-4, 2e-4, 5e-4), 64: (1e-8, 1e-7, 1e-6, 1e-5)}


def problems():
    rng = np.random.default_rng(0)
    return {
        "clusters-2000x200": (C.imagenet_clusters(2000), C.target_means("cub")),
        "random-2000x200": (
            rng.normal(size=(2000, 128)).astype(np.float32),
            rng.normal(size=(200, 128)).astype(np.float32),
        ),
        "cub-1000x200": (C.target_means("imagenet"), C.target_means("cub")),
    }


def reference_log_rows(cost64: np.ndarray) -> np.ndarray:
    """log(P 1) from POT's float64 scaling iterations converged to stopThr 1e-13."""
    import ot

    n, m = cost64.shape
    plan = ot.unbalanced.sinkhorn_knopp_unbalanced(
        np.ones(n), np.ones(m), cost64, EPS, (TAU_S, TAU_T), numItermax=100000, stopThr=1e-13
    )
    return np.log(plan.sum(1))


# --- peers: each returns (log row sums float64, iterations) -------------------------------


def _pot(solver_name, check_every, dtype, src, tgt, n_iter=None):
    """POT's solver on inputs of ``dtype`` (it computes in their dtype); iterations from its
    error log, which it fills every ``check_every`` iterations (and at the first)."""
    import ot

    cost = C.cosine64(src, tgt, EPS_C).astype(dtype)
    n, m = cost.shape
    kw = {"numItermax": n_iter, "stopThr": 0.0} if n_iter else {}
    solve = getattr(ot.unbalanced, solver_name)
    a, b = np.ones(n, dtype), np.ones(m, dtype)
    plan, log = solve(a, b, cost, EPS, (TAU_S, TAU_T), log=True, **kw)
    return np.log(plan.sum(1).astype(np.float64)), check_every * (len(log["err"]) - 1) + 1


pot_knopp = functools.partial(_pot, "sinkhorn_knopp_unbalanced", 1, np.float64)
pot_knopp32 = functools.partial(_pot, "sinkhorn_knopp_unbalanced", 1, np.float32)
pot_stabilized = functools.partial(_pot, "sinkhorn_stabilized_unbalanced", 10, np.float64)


def paper_numpy(src, tgt, n_iter=None):
    """The paper's scaling iterations, transcribed: float64 numpy, kernel domain."""
    cost = C.cosine64(src, tgt, EPS_C)
    kernel = np.exp(-cost / EPS)
    u = np.ones(cost.shape[0])
    v = np.ones(cost.shape[1])
    iters = 0
    for _ in range(n_iter or 1000):
        iters += 1
        u_prev, v_prev = u, v
        u = (1.0 / (kernel @ v)) ** K_S
        v = (1.0 / (kernel.T @ u)) ** K_T
        if n_iter is None:
            err_u = np.abs(u - u_prev).max() / max(np.abs(u).max(), np.abs(u_prev).max(), 1.0)
            err_v = np.abs(v - v_prev).max() / max(np.abs(v).max(), np.abs(v_prev).max(), 1.0)
            if 0.5 * (err_u + err_v) < 1e-6:
                break
    return np.log(u) + np.log(kernel @ v), iters


def _ott_solver(threshold, n_iter=None):
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    if n_iter:
        solver = sinkhorn.Sinkhorn(
            threshold=0.0, inner_iterations=1, min_iterations=n_iter, max_iterations=n_iter
        )
    else:
        solver = sinkhorn.Sinkhorn(threshold=threshold)

    @jax.jit
    def run(src, tgt):
        s = src / jnp.linalg.norm(src, axis=1, keepdims=True)
        t = tgt / jnp.linalg.norm(tgt, axis=1, keepdims=True)
        cost = (1.0 - jnp.matmul(s, t.T, precision=HIGHEST)) / EPS_C
        geom = geometry.Geometry(cost_matrix=cost, epsilon=EPS)
        a = jnp.ones(cost.shape[0], cost.dtype)
        b = jnp.ones(cost.shape[1], cost.dtype)
        prob = linear_problem.LinearProblem(geom, a=a, b=b, tau_a=K_S, tau_b=K_T)
        out = solver(prob)
        return out.f, out.g, out.n_iters, out.converged

    return run


def ott_log_rows(src, tgt, f, g):
    cost = C.cosine64(src, tgt, EPS_C)
    f, g = np.asarray(f, np.float64), np.asarray(g, np.float64)
    return f / EPS + logsumexp((g[None, :] - cost) / EPS, axis=1)


def uotsel_run(threshold=PAPER.threshold, method="auto", n_iter=None, fused=True):
    """uotsel as ``select`` runs it (``transport``: cost and solve in one program), or as two
    calls (``cosine_cost`` then ``sinkhorn``)."""
    cap = n_iter or 1000
    thr = 1e-30 if n_iter else threshold
    settings = dict(
        eps=EPS, tau_source=TAU_S, tau_target=TAU_T, threshold=thr, max_iter=cap, method=method
    )

    def run(src, tgt):
        if fused:
            return uotsel.transport(src, tgt, eps_c=EPS_C, **settings)
        return uotsel.sinkhorn(uotsel.cosine_cost(src, tgt, EPS_C), **settings)

    return run


# --- measurements --------------------------------------------------------------------------


def rel_error(log_rows, ref):
    return float(np.max(np.abs(np.expm1(np.asarray(log_rows, np.float64) - ref))))


def top_agreement(log_rows, ref, k=100):
    ours = set(np.argsort(-np.asarray(log_rows, np.float64), kind="stable")[:k].tolist())
    return len(ours & set(np.argsort(-ref, kind="stable")[:k].tolist()))


def floor_ms(src, tgt, n_iters, repeats):
    """This machine's floor: cost matmul + one exp pass + 2 matrix-vector passes per iteration."""
    s = jnp.asarray(src / np.linalg.norm(src, axis=1, keepdims=True))
    t = jnp.asarray(tgt / np.linalg.norm(tgt, axis=1, keepdims=True))
    mm = jax.jit(lambda s, t: (1.0 - jnp.matmul(s, t.T, precision=HIGHEST)) / EPS_C)
    cost = mm(s, t)
    ex = jax.jit(lambda c: jnp.exp(-c))

    @jax.jit
    def passes(k):
        def body(_, uv):
            u, v = uv
            u = 1.0 / (k @ v)
            return u, 1.0 / (u @ k)

        n, m = k.shape
        return jax.lax.fori_loop(0, n_iters, body, (jnp.ones(n), jnp.ones(m)))

    kernel = ex(cost)
    t_mm = C.timed(lambda: mm(s, t), repeats)["median_s"]
    t_exp = C.timed(lambda: ex(cost), repeats)["median_s"]
    t_mv = C.timed(lambda: passes(kernel), repeats)["median_s"]
    return {
        "matmul_s": t_mm,
        "exp_s": t_exp,
        "matvec_passes_s": t_mv,
        "iterations": n_iters,
        "floor_s": t_mm + t_exp + t_mv,
    }


def smallest_iterations(run_k, ref, target, limit=3000):
    """Smallest iteration cap whose result is within ``target`` (doubling, then bisection)."""
    lo, hi = 0, 1
    while hi <= limit and rel_error(run_k(hi), ref) > target:
        lo, hi = hi, hi * 2
    if hi > limit:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if rel_error(run_k(mid), ref) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def bench_problem(name, src, tgt, repeats):
    cost64 = C.cosine64(src, tgt, EPS_C)
    ref = reference_log_rows(cost64)
    srcj, tgtj = jnp.asarray(src), jnp.asarray(tgt)
    rows = []

    def record(peer, fn, to_rows):
        jax.clear_caches()
        t = C.timed(fn, repeats)
        log_rows, iters = to_rows(fn())
        rows.append(
            {
                "peer": peer,
                **t,
                "iterations": iters,
                "rel_error": rel_error(log_rows, ref),
                "top100": top_agreement(log_rows, ref),
            }
        )
        return rows[-1]

    as_pair = lambda out: out  # noqa: E731
    record("POT sinkhorn_knopp_unbalanced (f64)", lambda: pot_knopp(src, tgt), as_pair)
    record("POT sinkhorn_knopp_unbalanced (f32)", lambda: pot_knopp32(src, tgt), as_pair)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record(
            "POT sinkhorn_stabilized_unbalanced (f64)", lambda: pot_stabilized(src, tgt), as_pair
        )
    record("paper's scaling iterations, numpy (f64)", lambda: paper_numpy(src, tgt), as_pair)

    def ott_rows(out):
        f, g, n_iters, _ = out
        return ott_log_rows(src, tgt, f, g), int(n_iters)

    for bits in (32, 64):
        with jax.enable_x64(bits == 64):
            dtype = jnp.float32 if bits == 32 else jnp.float64
            s_in, t_in = jnp.asarray(src, dtype), jnp.asarray(tgt, dtype)
            ott_default = _ott_solver(1e-3)
            rec = record(
                f"ott-jax Sinkhorn, threshold 1e-3 (f{bits})",
                lambda: ott_default(s_in, t_in),  # noqa: B023
                ott_rows,
            )
            rec["converged"] = bool(ott_default(s_in, t_in)[3])
            tight = next(
                (t for t in OTT_THRESHOLDS[bits] if bool(_ott_solver(t)(s_in, t_in)[3])), None
            )
            if tight is not None:
                ott_tight = _ott_solver(tight)
                record(
                    f"ott-jax Sinkhorn, threshold {tight:g} (f{bits}, tightest reached)",
                    lambda: ott_tight(s_in, t_in),  # noqa: B023
                    ott_rows,
                )

    def ours(out):
        return np.asarray(out.log_row_sums, np.float64), int(out.n_iters)

    auto = uotsel_run()
    rec_auto = record("uotsel transport (f32, certified 1e-5)", lambda: auto(srcj, tgtj), ours)
    rec_auto["reported_error"] = float(auto(srcj, tgtj).error)
    split = uotsel_run(fused=False)
    record("uotsel cosine_cost + sinkhorn, two calls (f32)", lambda: split(srcj, tgtj), ours)
    if jax.default_backend() != "cpu":
        # The accelerator's loop with and without iterations written out in a row, same process.
        cost = jax.block_until_ready(uotsel.cosine_cost(srcj, tgtj, EPS_C))
        settings = unbalanced.prepare((), *cost.shape, cost.dtype, PAPER)
        for unroll in sorted({1, _it.ACCELERATOR_UNROLL}):
            form = _it.Form(_it.ACCELERATOR_CHECK_EVERY, "auto", unroll)
            record(
                f"uotsel sinkhorn of a device cost, K = {form.check_every}, "
                f"{unroll} unrolled (f32)",
                lambda: unbalanced.solve_staged(cost, settings, form=form).output,  # noqa: B023
                ours,
            )
    log_only = uotsel_run(method="log")
    record("uotsel transport method='log' (f32)", lambda: log_only(srcj, tgtj), ours)
    with jax.enable_x64(True):
        s64, t64 = jnp.asarray(src, jnp.float64), jnp.asarray(tgt, jnp.float64)
        record("uotsel transport (f64, certified 1e-5)", lambda: auto(s64, t64), ours)

    floor = floor_ms(src, tgt, rec_auto["iterations"], repeats)
    tta = time_to_accuracy(src, tgt, srcj, tgtj, ref, repeats)
    return {
        "problem": name,
        "shape": list(cost64.shape),
        "dim": int(src.shape[1]),
        "peers": rows,
        "floor": floor,
        "time_to_accuracy": tta,
    }


def time_to_accuracy(src, tgt, srcj, tgtj, ref, repeats):
    out = []
    ott_rows = lambda o: ott_log_rows(src, tgt, o[0], o[1])  # noqa: E731

    def ott64(k):
        """A runner of ott-jax in float64 capped at ``k`` iterations (compiled once)."""
        solver = _ott_solver(0, k)

        def run():
            with jax.enable_x64(True):
                s64, t64 = jnp.asarray(src, jnp.float64), jnp.asarray(tgt, jnp.float64)
                return jax.block_until_ready(solver(s64, t64))

        return run

    peers = {
        "POT knopp (f64)": (
            lambda k: pot_knopp(src, tgt, k)[0],
            lambda k: lambda: pot_knopp(src, tgt, k),
        ),
        "POT knopp (f32)": (
            lambda k: pot_knopp32(src, tgt, k)[0],
            lambda k: lambda: pot_knopp32(src, tgt, k),
        ),
        "ott-jax (f32)": (
            lambda k: ott_rows(_ott_solver(0, k)(srcj, tgtj)),
            lambda k: functools.partial(_ott_solver(0, k), srcj, tgtj),
        ),
        "ott-jax (f64)": (lambda k: ott_rows(ott64(k)()), ott64),
    }
    for target in (1e-4, 1e-6):
        for peer, (rows_at, runner) in peers.items():
            k = smallest_iterations(rows_at, ref, target)
            entry = {"target": target, "peer": peer, "iterations": k}
            if k is not None:
                entry["median_s"] = C.timed(runner(k), repeats)["median_s"]
            out.append(entry)
        # uotsel stops on its own certificate at the target.
        if target >= 1e-5:
            run = uotsel_run(threshold=target)
            res = run(srcj, tgtj)
            out.append(
                {
                    "target": target,
                    "peer": "uotsel (f32, certified stop)",
                    "iterations": int(res.n_iters),
                    "achieved": rel_error(res.log_row_sums, ref),
                    "median_s": C.timed(functools.partial(run, srcj, tgtj), repeats)["median_s"],
                }
            )
        with jax.enable_x64(True):
            s64, t64 = jnp.asarray(src, jnp.float64), jnp.asarray(tgt, jnp.float64)
            run = uotsel_run(threshold=target)
            res = run(s64, t64)
            out.append(
                {
                    "target": target,
                    "peer": "uotsel (f64, certified stop)",
                    "iterations": int(res.n_iters),
                    "achieved": rel_error(res.log_row_sums, ref),
                    "median_s": C.timed(functools.partial(run, s64, t64), repeats)["median_s"],
                }
            )
    return out


def markdown(info, results, device_label):
    lines = [
        f"## Unbalanced Sinkhorn, paper settings{device_label}",
        "",
        C.machine_line(info),
        "",
        "Cosine cost (`eps_c = 0.01`), `eps = 1`, `tau = (1, 100)`, unit weights; cost "
        "computation included for every peer; steady state = median of "
        f"{results[0]['peers'][0]['repeats']} runs after warm-up; error = largest relative "
        "error of `P 1` over all rows against POT float64 converged to `1e-13`.",
        "",
    ]
    for res in results:
        peers = res["peers"]
        ours = next(p for p in peers if p["peer"].startswith("uotsel transport (f32"))
        rows = [
            [
                p["peer"],
                C.ms(p["first_s"]),
                C.span_ms(p["steady"]),
                C.ratio(p["steady"], ours["steady"]),
                p["iterations"],
                f"{p['rel_error']:.1e}",
                p["top100"],
            ]
            for p in peers
        ]
        fl = res["floor"]
        lines += [
            f"### {res['problem']} (cost {res['shape'][0]} x {res['shape'][1]}, D = {res['dim']})",
            "",
            C.table(
                [
                    "peer",
                    "first call ms",
                    "steady ms, median (min-max)",
                    "steady x uotsel",
                    "iterations",
                    "max rel. error P1",
                    "top-100 overlap",
                ],
                rows,
            ),
            "",
            _verdict(peers, ours),
            f"Its reported certified error was {ours.get('reported_error', float('nan')):.1e}. "
            f"Floor on this machine: cost matmul {C.ms(fl['matmul_s'])} ms + one exp pass "
            f"{C.ms(fl['exp_s'])} ms + {fl['iterations']} x 2 matrix-vector passes "
            f"{C.ms(fl['matvec_passes_s'])} ms = {C.ms(fl['floor_s'])} ms; uotsel is at "
            f"{ours['median_s'] / fl['floor_s']:.2g}x the floor.",
            "",
        ]
        tta = [
            [
                t["target"],
                t["peer"],
                t["iterations"] if t["iterations"] else "not reached",
                C.ms(t["median_s"]) if "median_s" in t else "-",
                f"{t['achieved']:.1e}" if "achieved" in t else "-",
            ]
            for t in res["time_to_accuracy"]
        ]
        lines += [
            "Time to accuracy (peers: the smallest iteration count that reaches the "
            "target, found with the reference; uotsel: its own certified stop):",
            "",
            C.table(["target", "peer", "iterations", "steady ms", "achieved"], tta),
            "",
        ]
    return "\n".join(lines)


def _verdict(peers, ours):
    """One sentence per problem: uotsel against each external peer, slower ones included."""
    parts = []
    for p in peers:
        if p["peer"].startswith(("uotsel", "paper's")):
            continue
        r = C.ratio(p["steady"], ours["steady"])
        if r == "1" or C.ratio(ours["steady"], p["steady"]) == "1":
            parts.append(f"as fast as {p['peer']} within the spread of the runs")
        elif p["median_s"] >= ours["median_s"]:
            parts.append(f"{r}x faster than {p['peer']}")
        else:
            slower = C.ratio(ours["steady"], p["steady"])
            parts.append(f"**{slower}x slower** than {p['peer']}")
    return "Steady state, uotsel `transport` is " + "; ".join(parts) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--device", action="store_true", help="label the results with the accelerator JAX runs on"
    )
    parser.add_argument("--only", help="run one problem by name")
    args = parser.parse_args()
    info = C.machine()
    results = []
    for name, (src, tgt) in problems().items():
        if args.only and name != args.only:
            continue
        print(f"running {name} ...", flush=True)
        results.append(bench_problem(name, src, tgt, args.repeats))
    label = f" on {info['jax_device']}" if args.device else ""
    section = "sinkhorn_peers" + ("_device" if args.device else "")
    C.write_results(section, markdown(info, results, label), {"machine": info, "results": results})
    print(markdown(info, results, label))


if __name__ == "__main__":
    main()
