"""``SinkhornOutput.rounding``: ``error + rounding`` bounds the true error of a float32 solve.

The true error is the largest relative error of the returned ``P 1`` and ``P^T 1`` against the
exact solution of the same problem (the float32 cost and weights, read as float64), computed by
the float64 log-domain Sinkhorn below (written here, checked against POT), stopped by the
contraction bound at 1e-12. Families: point clouds with squared Euclidean costs as in the
unbalanced tests of POT and ott-jax, ``eps`` from 1e-2 to 1, ``tau`` from 0.1 to 100 and inf,
unequal weights, cost / eps up to 2^10; a hypothesis property over the same ranges; sums built
to defeat sequential float32 addition; the paper-like 2000 x 200 cosine problem, where the
bound must stay within 10x of the true error.

Also: weights below the smallest normal number of the dtype are refused before tracing.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import ot
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import uotsel
from uotsel import _rounding, selection_file, unbalanced
from uotsel import io as uio

U = 2.0**-24
FIELDS = ("f", "g", "log_row_sums", "log_col_sums", "n_iters", "error", "converged", "eps")
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


# --- float64 reference -----------------------------------------------------------------------


def _lse(z, axis):
    top = np.max(z, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(z - top), axis=axis))


def exact_marginals(cost, eps, tau_s, tau_t, a, b, tol=1e-12, max_iter=100_000):
    """float64 ``(log P 1 [n], log P^T 1 [m], bound)`` of the exact solution: log-domain
    iterations with the optimal dual translation, stopped when the contraction bound on the
    relative error of both marginals (``bound``) is at most ``tol``."""
    c = np.asarray(cost, np.float64)
    la, lb = np.log(np.asarray(a, np.float64)), np.log(np.asarray(b, np.float64))
    inv_s = 0.0 if math.isinf(tau_s) else 1.0 / tau_s
    inv_t = 0.0 if math.isinf(tau_t) else 1.0 / tau_t
    k_s, k_t = 1.0 / (1.0 + eps * inv_s), 1.0 / (1.0 + eps * inv_t)
    slack_s, slack_t = eps * inv_s * k_s, eps * inv_t * k_t
    one_minus = slack_s + slack_t - slack_s * slack_t
    gain = 1.0 / eps + (k_t * inv_t / one_minus if inv_t else 0.0)
    gain = max(gain, k_s * k_t * inv_s / one_minus if inv_s else 0.0)
    f = np.zeros(c.shape[0])
    for _ in range(max_iter):
        g = k_t * eps * (lb - _lse((f[:, None] - c) / eps, 0))
        f_new = k_s * eps * (la - _lse((g[None, :] - c) / eps, 1))
        bound = math.expm1(gain * np.max(np.abs(f_new - f)))
        f = f_new
        if bound <= tol:
            break
        if inv_s or inv_t:
            gap = _lse(la - f * inv_s, 0) - _lse(lb - g * inv_t, 0)
            f = f + gap / (inv_s + inv_t)
    rows = f / eps + _lse((g[None, :] - c) / eps, 1)
    cols = g / eps + _lse((f[:, None] - c) / eps, 0)
    return rows, cols, bound


def true_error(out, ref_rows, ref_cols):
    rows = np.asarray(out.log_row_sums, np.float64)
    cols = np.asarray(out.log_col_sums, np.float64)
    return max(np.max(np.abs(np.expm1(rows - ref_rows))), np.max(np.abs(np.expm1(cols - ref_cols))))


def check_bound(cost, eps=1.0, tau_s=1.0, tau_t=100.0, a=None, b=None, method="auto"):
    """Solve in float32 and return ``(true error, error, rounding)``, after asserting
    ``true <= error + rounding``."""
    cost = np.asarray(cost, np.float32)
    n, m = cost.shape
    a = np.ones(n, np.float32) if a is None else np.asarray(a, np.float32)
    b = np.ones(m, np.float32) if b is None else np.asarray(b, np.float32)
    out = uotsel.sinkhorn(
        cost,
        eps=eps,
        tau_source=tau_s,
        tau_target=tau_t,
        source_weights=a,
        target_weights=b,
        max_iter=5000,
        method=method,
    )
    ref_rows, ref_cols, ref_bound = exact_marginals(cost, eps, tau_s, tau_t, a, b)
    assert ref_bound <= 1e-10
    true = true_error(out, ref_rows, ref_cols)
    error, rounding = float(out.error), float(out.rounding)
    assert out.rounding.dtype == jnp.float32 and out.rounding.shape == ()
    assert rounding >= 0.0
    assert true <= error + rounding + ref_bound, (true, error, rounding)
    return true, error, rounding


def point_cloud(seed, n, m, dim, scale, eps):
    """Squared Euclidean costs between Gaussian clouds (the second shifted and stretched),
    scaled so that the largest cost is ``scale * eps``; unequal positive weights."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    y = rng.normal(size=(m, dim)) * 1.5 + 1.0
    cost = np.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)
    cost = cost / cost.max() * scale * eps
    return cost, rng.uniform(0.2, 3.0, n), rng.uniform(0.2, 3.0, m)


def test_reference_matches_pot():
    for seed, (tau_s, tau_t) in enumerate([(1.0, 100.0), (0.5, 5.0), (20.0, 0.3)]):
        cost, a, b = point_cloud(seed, 40, 15, 2, 30.0, 0.5)
        plan = ot.unbalanced.sinkhorn_knopp_unbalanced(
            a, b, cost, 0.5, (tau_s, tau_t), reg_type="entropy", numItermax=200_000, stopThr=1e-14
        )
        rows, cols, bound = exact_marginals(cost, 0.5, tau_s, tau_t, a, b)
        assert bound <= 1e-12
        np.testing.assert_allclose(rows, np.log(plan.sum(1)), rtol=0, atol=1e-9)
        np.testing.assert_allclose(cols, np.log(plan.sum(0)), rtol=0, atol=1e-9)


# --- the bound --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale, eps, tau_s, tau_t",
    [
        (1.0, 1.0, 1.0, 100.0),
        (30.0, 0.1, 0.1, 0.1),
        (300.0, 0.01, 100.0, 100.0),
        (1024.0, 0.05, 1.0, 10.0),
        (500.0, 1.0, 10.0, math.inf),
        (200.0, 0.3, math.inf, 2.0),
        (1024.0, 1.0, 0.3, 50.0),
    ],
)
def test_point_clouds_like_pot_and_ott(scale, eps, tau_s, tau_t):
    cost, a, b = point_cloud(int(scale), 64, 24, 3, scale, eps)
    check_bound(cost, eps, tau_s, tau_t, a, b)


@SETTINGS
@given(
    seed=st.integers(0, 2**31 - 1),
    log2_scale=st.floats(0.0, 10.0),
    log_eps=st.floats(-2.0, 0.0),
    log_taus=st.tuples(st.floats(-1.0, 2.0), st.floats(-1.0, 2.0)),
    exact=st.sampled_from(["none", "source", "target"]),
)
@pytest.mark.slow
def test_bound_holds_over_cost_scales(seed, log2_scale, log_eps, log_taus, exact):
    eps = 10.0**log_eps
    tau_s, tau_t = (10.0**t for t in log_taus)
    tau_s = math.inf if exact == "source" else tau_s
    tau_t = math.inf if exact == "target" else tau_t
    cost, a, b = point_cloud(seed, 48, 20, 2, 2.0**log2_scale, eps)
    check_bound(cost, eps, tau_s, tau_t, a, b)


@pytest.mark.slow
def test_log_method_and_hand_over():
    cost, a, b = point_cloud(3, 64, 24, 3, 400.0, 0.1)
    check_bound(cost, 0.1, 1.0, 100.0, a, b, method="log")
    # Relaxed target side far from the rows: the kernel hands over to the log domain.
    hard = np.array([[0.0, 200.0]] * 5 + [[300.0, 100.0]] * 5, np.float32)
    check_bound(hard, 1.0, 1.0, 0.05)


@pytest.mark.slow
def test_bound_covers_sums_that_float32_addition_loses():
    # Every column has one row at cost 0 and 1999 rows whose kernel entries (0.9 u) vanish
    # when added one by one to it: float32 column sums lose about 1e-4 of their mass.
    n, m = 2000, 20
    cost = np.full((n, m), -math.log(0.9 * U))
    cost[np.arange(m), np.arange(m)] = 0.0
    true, error, _ = check_bound(cost)
    assert true > error  # the certificate alone does not cover it


@pytest.mark.slow
def test_bound_covers_potentials_far_from_zero():
    # Unequal total masses with strong marginal penalties: |f| / eps near 6.6e3, whose float32
    # rounding is far above the certified error of the converged iteration.
    rng = np.random.default_rng(1)
    cost = rng.uniform(0.0, 1.0, (125, 6))
    a, b = np.full(125, 3.0), np.full(6, 0.2)
    true, error, _ = check_bound(cost, 0.01, 14.0, 60.0, a, b)
    assert error <= 1e-5 and true > 10 * error


@pytest.mark.slow
def test_paper_like_problem_is_bounded_within_10x():
    rng = np.random.default_rng(0)
    source, target = rng.normal(size=(2000, 512)), rng.normal(size=(200, 512))
    source /= np.linalg.norm(source, axis=1, keepdims=True)
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    cost = np.asarray(uotsel.cosine_cost(source.astype(np.float32), target.astype(np.float32)))
    true, error, rounding = check_bound(cost)
    assert error + rounding <= 10 * true, (true, error, rounding)


@pytest.mark.slow
def test_float64_rounding_is_tiny():
    cost, a, b = point_cloud(5, 64, 24, 3, 500.0, 0.1)
    ref_rows, ref_cols, ref_bound = exact_marginals(cost, 0.1, 1.0, 100.0, a, b)
    with jax.enable_x64(True):
        for method in unbalanced.METHODS:
            out = uotsel.sinkhorn(
                jnp.asarray(cost),
                eps=0.1,
                source_weights=a,
                target_weights=b,
                threshold=1e-10,
                max_iter=5000,
                method=method,
            )
            assert out.rounding.dtype == jnp.float64
            assert float(out.rounding) <= 1e-11
            true = true_error(out, ref_rows, ref_cols)
            assert true <= float(out.error) + float(out.rounding) + ref_bound


@pytest.mark.slow
def test_batches_bound_each_problem():
    costs, weights = [], []
    for seed in range(3):
        cost, a, b = point_cloud(seed, 30, 9, 2, 100.0 * (seed + 1), 1.0)
        costs.append(cost)
        weights.append((a, b))
    batch = np.stack(costs).astype(np.float32)
    a = np.stack([w[0] for w in weights]).astype(np.float32)
    b = np.stack([w[1] for w in weights]).astype(np.float32)
    for lockstep in (False, True):
        prepared = unbalanced.prepare(
            (3,), 30, 9, jnp.float32, source_weights=a, target_weights=b, max_iter=5000
        )
        out = unbalanced.solve_staged(jnp.asarray(batch), prepared, lockstep=lockstep).output
        assert out.rounding.shape == (3,)
        for i in range(3):
            rows, cols, bound = exact_marginals(batch[i], 1.0, 1.0, 100.0, a[i], b[i])
            one = jax.tree.map(lambda x, i=i: x[i], out)
            assert true_error(one, rows, cols) <= float(one.error) + float(one.rounding) + bound


@pytest.mark.slow
def test_masked_units_are_left_out():
    cost, a, b = point_cloud(2, 40, 12, 2, 300.0, 0.2)
    cost, a, b = cost.astype(np.float32), a.astype(np.float32), b.astype(np.float32)
    rows_on, cols_on = np.arange(40) % 5 != 0, np.arange(12) < 9
    for method in unbalanced.METHODS:
        out = uotsel.sinkhorn(
            cost,
            eps=0.2,
            source_weights=a,
            target_weights=b,
            source_mask=rows_on,
            target_mask=cols_on,
            method=method,
        )
        rows, cols, bound = exact_marginals(
            cost[rows_on][:, cols_on], 0.2, 1.0, 100.0, a[rows_on], b[cols_on]
        )
        ours = out._replace(
            log_row_sums=out.log_row_sums[rows_on], log_col_sums=out.log_col_sums[cols_on]
        )
        assert true_error(ours, rows, cols) <= float(out.error) + float(out.rounding) + bound


# --- the check changes nothing else -----------------------------------------------------------


def _cases():
    cost, a, b = point_cloud(11, 50, 20, 2, 200.0, 0.2)
    hard = np.array([[0.0, 200.0]] * 5 + [[300.0, 100.0]] * 5, np.float32)
    batch = np.stack([point_cloud(s, 50, 20, 2, 50.0, 1.0)[0] for s in range(2)])
    return [
        (cost, dict(eps=0.2, source_weights=a, target_weights=b, max_iter=3000)),
        (cost, dict(eps=0.2, tau_source=math.inf, tau_target=3.0, method="log")),
        (hard, dict(tau_target=0.05)),
        (batch, dict(tau_source=np.array([1.0, 10.0]))),
        (cost, dict(max_iter=2, threshold=1e-9)),
    ]


def _solve_all():
    outs = [uotsel.sinkhorn(c.astype(np.float32), **kw) for c, kw in _cases()]
    rng = np.random.default_rng(2)
    source = rng.normal(size=(120, 16)).astype(np.float32)
    target = rng.normal(size=(30, 16)).astype(np.float32)
    return outs + [uotsel.transport(source, target)]


@pytest.mark.slow
def test_other_outputs_do_not_depend_on_the_check(monkeypatch):
    with_check = _solve_all()

    def blank(*args):
        return jnp.zeros(4, jnp.float32)

    monkeypatch.setattr(_rounding, "kernel_check", lambda *args: (blank(), jnp.bool_(True)))
    monkeypatch.setattr(_rounding, "log_check", blank)
    monkeypatch.setattr(_rounding, "rounding", lambda p, check, error: jnp.full_like(error, 1e30))
    jax.clear_caches()
    try:
        without = _solve_all()
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    for out, other in zip(with_check, without, strict=True):
        assert np.all(np.asarray(other.rounding) == np.float32(1e30))
        for field in FIELDS:
            mine, theirs = np.asarray(getattr(out, field)), np.asarray(getattr(other, field))
            assert mine.dtype == theirs.dtype and mine.tobytes() == theirs.tobytes(), field
        threshold = 1e-9 if int(np.max(out.n_iters)) == 2 else 1e-5
        np.testing.assert_array_equal(out.converged, np.asarray(out.error) <= threshold)


# --- pieces -------------------------------------------------------------------------------------


@pytest.mark.parametrize("products", ["dot", "reduce"])
@pytest.mark.parametrize("n", [2000, 1999, 97, 2])
def test_blocked_column_sums_stay_within_their_bound(n, products):
    # A large first term, then terms below half an ulp of it: sequential float32 addition
    # drops all of them; blocked sums must stay within (block + blocks) u.
    kernel = np.full((n, 3), 0.9 * U, np.float32)
    kernel[0] = 1.0
    kernel[:, 2] = np.float32(0.1)
    x = np.ones(n, np.float32)
    sums = _rounding.blocked_col_sums(jnp.asarray(x)[:, None], jnp.asarray(kernel), products)
    sums = np.asarray(sums)
    exact = x.astype(np.float64) @ kernel.astype(np.float64)
    relative = np.abs(sums[0].astype(np.float64) / exact - 1.0)
    assert np.all(relative <= _rounding.col_sum_error(n) * U)
    values = _rounding.row_sums(jnp.asarray(kernel.T), jnp.asarray(x)[:, None], products)
    values = np.asarray(values)[:, 0]
    relative = np.abs(values.astype(np.float64) / exact - 1.0)
    assert np.all(relative <= _rounding.row_sum_error(n) * U)


@pytest.mark.slow
def test_select_reports_rounding_in_diagnostics_and_record():
    rng = np.random.default_rng(4)
    source = rng.normal(size=(60, 8)).astype(np.float32)
    target = rng.normal(size=(12, 8)).astype(np.float32)
    sel = uotsel.select(source, target, strategy="uot", top_k=5)
    assert sel.diagnostics["rounding"] == float(sel.solver.rounding)
    assert sel.diagnostics["rounding"] >= 0.0

    def units(x, spec):
        return uio.Units(x, None, None, None, None, spec, "0" * 64)

    record = selection_file.selection_record(
        sel, units(source, "s.npz"), units(target, "t.npz"), "x"
    )
    assert record["solver"]["rounding"] == sel.diagnostics["rounding"]


@pytest.mark.parametrize("tau_s, tau_t", [(1.0, 100.0), (math.inf, 10.0), (10.0, math.inf)])
@pytest.mark.slow
def test_extreme_normal_weights_are_solved(tau_s, tau_t):
    low, high = unbalanced.weight_range(np.float32)
    rng = np.random.default_rng(1)
    cost = rng.uniform(0, 5, (100, 100))
    a = np.ones(100, np.float32)
    a[1], a[7] = low, 1e-30
    b = np.ones(100, np.float32)
    b[3] = low
    if math.isinf(tau_t):
        a[9] = 1e30  # unequal masses with an exact target side stay solvable
    check_bound(cost, 1.0, tau_s, tau_t, a, b)
    a = np.ones(100, np.float32)
    a[0] = np.float32(high) / 2
    check_bound(cost, 1.0, tau_s, tau_t, a, b)
