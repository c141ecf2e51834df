import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    clustered_features,
    cosine_cost64,
    log_domain_marginals,
    pot_marginals,
    top_k_agrees,
)

import uotsel
from uotsel import _iterations, programs, unbalanced


def _check_against(out, ref_rows, ref_cols=None, rtol=1e-4, floor=1e-6):
    rows = np.asarray(out.log_row_sums, np.float64)
    keep = ref_rows >= floor * ref_rows.max()
    rel = np.abs(np.expm1(rows - np.log(ref_rows)))
    assert rel[keep].max() <= rtol, rel[keep].max()
    if ref_cols is not None:
        cols = np.asarray(out.log_col_sums, np.float64)
        rel_c = np.abs(np.expm1(cols - np.log(ref_cols)))
        assert rel_c.max() <= rtol, rel_c.max()


@pytest.mark.parametrize("backbone", ["resnet18_supervised", "mocov2_resnet50"])
@pytest.mark.slow
def test_paper_features_match_pot_float64(paper_features, backbone):
    source, target = paper_features[backbone]
    cost64 = cosine_cost64(source, target)
    ref_rows, ref_cols = pot_marginals(cost64)
    out = uotsel.sinkhorn(uotsel.cosine_cost(source, target))
    assert bool(out.converged)
    _check_against(out, ref_rows, ref_cols)
    assert top_k_agrees(out.log_row_sums, ref_rows, 100)


@pytest.mark.parametrize("kind", ["random", "clustered"])
@pytest.mark.slow
def test_synthetic_costs_match_pot_float64(kind):
    rng = np.random.default_rng(7)
    if kind == "random":
        source = rng.normal(size=(800, 32)).astype(np.float32)
        target = rng.normal(size=(120, 32)).astype(np.float32)
    else:
        source, target = clustered_features(rng, 800, 120)
    ref_rows, ref_cols = pot_marginals(cosine_cost64(source, target))
    out = uotsel.sinkhorn(uotsel.cosine_cost(source, target))
    assert bool(out.converged)
    _check_against(out, ref_rows, ref_cols)
    assert top_k_agrees(out.log_row_sums, ref_rows, 100)


@pytest.mark.parametrize(
    "tau_source, tau_target",
    [
        (1.0, 100.0),
        (100.0, 100.0),
        (10.0, 0.5),
        (0.1, 0.1),
        (math.inf, 10.0),
        (10.0, math.inf),
        (math.inf, math.inf),
    ],
)
@pytest.mark.slow
def test_tau_sweep_matches_pot(tau_source, tau_target):
    rng = np.random.default_rng(3)
    n = m = 40 if math.isinf(tau_source) and math.isinf(tau_target) else None
    n, m = (n, m) if n else (150, 40)
    cost = rng.uniform(0, 8, size=(n, m))
    ref_rows, ref_cols = pot_marginals(cost, 1.0, tau_source, tau_target)
    out = uotsel.sinkhorn(
        cost.astype(np.float32),
        tau_source=tau_source,
        tau_target=tau_target,
        threshold=1e-5,
        max_iter=5000,
    )
    assert bool(out.converged), (int(out.n_iters), float(out.error))
    _check_against(out, ref_rows, ref_cols, rtol=2e-5)


@pytest.mark.parametrize("tau", [100.0, 1000.0])
@pytest.mark.parametrize("form", [_iterations.Form(1, "dot"), _iterations.Form(8, "reduce")])
def test_large_taus_reach_the_default_threshold_in_float32(tau, form):
    # Balanced-ish penalties on both sides put f near +0.66 tau and g near -0.66 tau: the first
    # pass's dual translation moves f alone, so g's deviation from the next absorption point is
    # as large. Unless that deviation also calls for absorbing again, its rounding (an ulp of
    # 660 is 6e-5) holds the certified error above 1e-5 for good.
    for seed in range(3):
        cost = np.random.default_rng(seed).uniform(0, 8, size=(150, 40))
        settings = unbalanced.prepare(
            (), 150, 40, np.float32, uotsel.UOT(), tau_source=tau, tau_target=tau, max_iter=5000
        )
        out = unbalanced.solve_staged(jnp.asarray(cost, jnp.float32), settings, form=form).output
        assert bool(out.converged), (seed, int(out.n_iters), float(out.error))
        # The outputs are read from potentials near 660 in float32: their own rounding
        # (``out.rounding``) comes on top of the certified error.
        rows, cols = pot_marginals(cost, 1.0, tau, tau)
        err_rows = np.abs(np.expm1(np.asarray(out.log_row_sums, np.float64) - np.log(rows)))
        err_cols = np.abs(np.expm1(np.asarray(out.log_col_sums, np.float64) - np.log(cols)))
        assert max(err_rows.max(), err_cols.max()) <= float(out.error) + float(out.rounding)


def _relaxed_cosine(seed, eps, **how):
    """A 300 x 40 cosine problem (costs up to 200) at ``eps`` with ``tau = (1, 0.1)``, solved
    in float32, after checking its output against a float64 log-domain reference."""
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(300, 32)).astype(np.float32)
    cost = np.asarray(uotsel.cosine_cost(source, rng.normal(size=(40, 32)).astype(np.float32)))
    out = uotsel.sinkhorn(cost, eps=eps, tau_source=1.0, tau_target=0.1, **how)
    rows, cols = log_domain_marginals(cost, eps, 1.0, 0.1)
    err_rows = np.abs(np.expm1(np.asarray(out.log_row_sums, np.float64) - rows))
    err_cols = np.abs(np.expm1(np.asarray(out.log_col_sums, np.float64) - cols))
    assert max(err_rows.max(), err_cols.max()) <= float(out.error) + float(out.rounding)
    return out


@pytest.mark.parametrize("method", ["auto", "log"])
def test_float32_log_domain_reaches_the_threshold_on_costs_of_thousands_of_eps(method):
    # eps = 0.1 (C / eps up to 2,000): the kernel loop hands over to the log domain at once.
    # Iterating on absolute potentials, the log domain's sums carry the rounding of |f| / eps,
    # which held the certified error near 7e-5 for good (72 iterations); on deviations from a
    # base point it converges as float64 does (23).
    for seed in range(3):
        out = _relaxed_cosine(seed, 0.1, method=method)
        assert bool(out.converged), (seed, int(out.n_iters), float(out.error))
        assert int(out.n_iters) < 40


@pytest.mark.slow
def test_float32_log_domain_at_smaller_eps_stops_early_within_its_rounding():
    # The same problems at eps = 0.03 (C / eps up to 6,700): the dual translation, taken from
    # the marginals' log-masses near -49, moves the iterate by more than a step every few
    # iterations, and float32 stops above 1e-5, reported as such. The float32 rounding of
    # these problems is two orders of magnitude above either.
    for seed in range(3):
        out = _relaxed_cosine(seed, 0.03)
        assert not bool(out.converged) and 1e-5 < float(out.error) < 5e-5
        assert float(out.rounding) > 20 * float(out.error)


@pytest.mark.slow
def test_weights_match_pot_entropic_form():
    rng = np.random.default_rng(5)
    cost = rng.uniform(0, 6, size=(90, 30))
    a = rng.uniform(0.2, 3.0, size=90)
    b = rng.uniform(0.2, 3.0, size=30)
    ref_rows, ref_cols = pot_marginals(cost, 0.7, 2.0, 50.0, a, b)
    out = uotsel.sinkhorn(
        cost.astype(np.float32),
        eps=0.7,
        tau_source=2.0,
        tau_target=50.0,
        source_weights=a,
        target_weights=b,
    )
    _check_against(out, ref_rows, ref_cols)


@pytest.mark.slow
def test_float32_safe_for_huge_costs():
    rng = np.random.default_rng(11)
    cost = rng.uniform(0.0, 1e4, size=(200, 30))
    out = uotsel.sinkhorn(cost.astype(np.float32), eps=1.0)
    rows = np.asarray(out.log_row_sums, np.float64)
    assert np.isfinite(rows).all() and np.isfinite(np.asarray(out.log_col_sums)).all()
    # P 1 underflows in float32 for a third of the rows; its log is still accurate.
    assert np.mean(np.exp(rows.astype(np.float32)) == 0) > 0.3
    ref_rows, ref_cols = log_domain_marginals(cost)
    np.testing.assert_allclose(rows, ref_rows, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(np.asarray(out.log_col_sums, np.float64), ref_cols, atol=1e-3)


@pytest.mark.slow
def test_paper_tail_log_scores_are_accurate(paper_features):
    source, target = paper_features["mocov2_resnet50"]
    ref_rows, _ = log_domain_marginals(cosine_cost64(source, target))
    out = uotsel.sinkhorn(uotsel.cosine_cost(source, target))
    # Every row, including the deep tail, within 1e-4 relative in P 1.
    assert np.abs(np.asarray(out.log_row_sums, np.float64) - ref_rows).max() < 1e-4


@pytest.mark.slow
def test_certificate_bounds_true_error_float64():
    rng = np.random.default_rng(2)
    source, target = clustered_features(rng, 300, 60)
    cost = cosine_cost64(source, target)
    ref_rows, ref_cols = pot_marginals(cost)
    with jax.enable_x64(True):
        for threshold in (1e-2, 1e-4, 1e-6, 1e-8):
            out = uotsel.sinkhorn(jnp.asarray(cost, jnp.float64), threshold=threshold)
            assert out.log_row_sums.dtype == jnp.float64
            err_rows = np.abs(np.expm1(np.asarray(out.log_row_sums) - np.log(ref_rows))).max()
            err_cols = np.abs(np.expm1(np.asarray(out.log_col_sums) - np.log(ref_cols))).max()
            assert max(err_rows, err_cols) <= float(out.error) + 1e-10
            assert float(out.error) <= threshold


@pytest.mark.slow
def test_stalling_at_the_float32_floor_stops_early():
    rng = np.random.default_rng(0)
    cost = ((1 - np.clip(rng.normal(size=(300, 50)) * 0.3, -1, 1)) / 0.05).astype(np.float32)
    # Potentials near 900, deviations from the absorption point up to 16 (an ulp: 2e-6 at most):
    # 1e-7 cannot be certified in float32.
    out = uotsel.sinkhorn(cost, tau_source=1000.0, tau_target=1000.0, threshold=1e-7, max_iter=5000)
    assert not bool(out.converged)
    assert int(out.n_iters) < 500
    assert 1e-7 < float(out.error) < 1e-5
    with jax.enable_x64(True):
        out64 = uotsel.sinkhorn(
            jnp.asarray(cost, jnp.float64),
            tau_source=1000.0,
            tau_target=1000.0,
            threshold=1e-7,
            max_iter=5000,
        )
        assert bool(out64.converged)


@pytest.mark.slow
def test_a_slow_mode_float32_cannot_resolve_stops_early_and_says_so():
    # One side held exactly, the other at tau = 1000 eps, costs up to 300 eps: the dual
    # contracts by 1 - 1e-3 an iteration and, in float32, creeps below what the masses resolve.
    cost = np.random.default_rng(3).uniform(0, 300, size=(60, 20))
    given = {"tau_source": math.inf, "tau_target": 1000.0, "max_iter": 20000}
    out = uotsel.sinkhorn(cost.astype(np.float32), **given)
    assert not bool(out.converged) and int(out.n_iters) < 5000
    assert 1e-5 < float(out.error) < 1e-4
    with jax.enable_x64(True):
        out64 = uotsel.sinkhorn(jnp.asarray(cost), **given)
        assert bool(out64.converged) and int(out64.n_iters) > int(out.n_iters)


def _hard_for_the_kernel():
    # Rows 5-9 are near the second target unit only, whose scaling under a strongly relaxed
    # target side (tau 0.05) is e^-95 of the first's: the absorbed kernel cannot carry it.
    return np.array([[0.0, 200.0]] * 5 + [[300.0, 100.0]] * 5, np.float32)


@pytest.mark.slow
def test_kernel_hands_over_to_the_log_domain_when_out_of_range():
    from uotsel import _iterations

    cost = _hard_for_the_kernel()
    p = _iterations.make_problem(
        jnp.asarray(cost),
        jnp.zeros(10),
        jnp.zeros(2),
        jnp.ones(10, bool),
        jnp.ones(2, bool),
        1.0,
        1.0,
        0.05,
        1e-5,
        1000,
    )
    f0 = jnp.zeros(10)
    start = _iterations.initial_pass(p, f0, _iterations.start(p, f0))
    _, stuck = _iterations.kernel_loop(p, start, jnp.bool_(False), _iterations.Form())
    assert bool(stuck)
    auto = uotsel.sinkhorn(cost, tau_target=0.05)
    ref_rows, ref_cols = log_domain_marginals(cost, 1.0, 1.0, 0.05)
    assert bool(auto.converged)
    np.testing.assert_allclose(auto.log_row_sums, ref_rows, atol=2e-5)
    np.testing.assert_allclose(auto.log_col_sums, ref_cols, rtol=1e-5, atol=2e-5)
    # In a batch, only the problem that needs it is finished in the log domain.
    easy = np.array([[0.0, 2.0]] * 5 + [[3.0, 1.0]] * 5, np.float32)
    batch = uotsel.sinkhorn(np.stack([easy, cost]), tau_target=np.array([0.05, 0.05]))
    single = uotsel.sinkhorn(easy, tau_target=0.05)
    np.testing.assert_allclose(batch.log_row_sums[0], single.log_row_sums, atol=1e-6)
    np.testing.assert_allclose(batch.log_row_sums[1], auto.log_row_sums, atol=1e-6)
    assert batch.n_iters.tolist() == [int(single.n_iters), int(auto.n_iters)]


@pytest.mark.parametrize("backbone", ["resnet18_supervised", "mocov2_resnet50"])
@pytest.mark.slow
def test_methods_agree_on_paper_features(paper_features, backbone):
    source, target = paper_features[backbone]
    cost = uotsel.cosine_cost(source, target)
    auto = uotsel.sinkhorn(cost, method="auto")
    log = uotsel.sinkhorn(cost, method="log")
    np.testing.assert_allclose(auto.log_row_sums, log.log_row_sums, atol=3e-5)
    top = lambda out: set(np.argsort(-np.asarray(out.log_row_sums))[:100].tolist())  # noqa: E731
    assert top(auto) == top(log)


@pytest.mark.slow
def test_non_convergence_is_reported_as_data():
    cost = np.random.default_rng(0).uniform(0, 50, size=(60, 20)).astype(np.float32)
    out = uotsel.sinkhorn(cost, max_iter=2, threshold=1e-8)
    assert int(out.n_iters) == 2
    assert not bool(out.converged)
    assert float(out.error) > 1e-8


@pytest.mark.parametrize("method", uotsel.unbalanced.METHODS)
@pytest.mark.slow
def test_jit_matches_eager(method):
    rng = np.random.default_rng(4)
    cost = rng.uniform(0, 20, size=(70, 15)).astype(np.float32)
    jitted = uotsel.sinkhorn(cost, method=method)
    with jax.disable_jit():
        eager = uotsel.sinkhorn(cost, method=method)
    assert int(jitted.n_iters) == int(eager.n_iters)
    np.testing.assert_allclose(jitted.log_row_sums, eager.log_row_sums, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jitted.log_col_sums, eager.log_col_sums, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_no_recompilation_when_settings_change():
    rng = np.random.default_rng(9)
    source = rng.normal(size=(50, 8)).astype(np.float32)
    target = rng.normal(size=(12, 8)).astype(np.float32)
    uotsel.sinkhorn(uotsel.cosine_cost(source, target))
    uotsel.sinkhorn(uotsel.cosine_cost(source, target), method="log")
    compiled = (programs.solve, programs._first_program, programs._rest_program)
    solve_before = [program._cache_size() for program in compiled]
    assert solve_before[:2] != [0, 0]
    from uotsel import costs

    cost_before = costs.pairwise._cache_size()
    for eps_c, eps, tau_s, tau_t, thr in [
        (0.02, 0.5, 2.0, 10.0, 1e-4),
        (0.05, 2.0, math.inf, 100.0, 1e-3),
        (0.1, 1.0, 1.0, math.inf, 1e-5),
    ]:
        c = uotsel.cosine_cost(source, target, eps_c)
        uotsel.sinkhorn(c, eps=eps, tau_source=tau_s, tau_target=tau_t, threshold=thr, max_iter=500)
        uotsel.sinkhorn(3.0 * c, eps=eps, tau_source=tau_s, tau_target=tau_t)
        uotsel.sinkhorn(c, eps=eps, tau_source=tau_s, tau_target=tau_t, method="log")
    assert [program._cache_size() for program in compiled] == solve_before
    assert costs.pairwise._cache_size() == cost_before


@pytest.mark.slow
def test_batch_with_masks_equals_separate_solves():
    rng = np.random.default_rng(6)
    shapes = [(30, 5), (25, 9), (30, 9), (12, 3)]
    n, m = 30, 9
    costs_, masks_a, masks_b, eps = [], [], [], [1.0, 0.5, 2.0, 1.0]
    singles = []
    for (ni, mi), e in zip(shapes, eps, strict=False):
        c = rng.uniform(0, 10, size=(ni, mi)).astype(np.float32)
        singles.append(uotsel.sinkhorn(c, eps=e))
        padded = np.full((n, m), 1e6, np.float32)  # padding values must not matter
        padded[:ni, :mi] = c
        costs_.append(padded)
        masks_a.append(np.arange(n) < ni)
        masks_b.append(np.arange(m) < mi)
    out = uotsel.sinkhorn(
        np.stack(costs_),
        eps=np.array(eps),
        source_mask=np.stack(masks_a),
        target_mask=np.stack(masks_b),
    )
    assert out.log_row_sums.shape == (4, n)
    for i, ((ni, mi), single) in enumerate(zip(shapes, singles, strict=False)):
        np.testing.assert_allclose(
            out.log_row_sums[i, :ni], single.log_row_sums, rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            out.log_col_sums[i, :mi], single.log_col_sums, rtol=1e-5, atol=1e-5
        )
        assert np.all(np.isneginf(out.log_row_sums[i, ni:]))
        assert int(out.n_iters[i]) == int(single.n_iters)
        assert bool(out.converged[i])


@pytest.mark.slow
def test_warm_start_needs_fewer_iterations():
    rng = np.random.default_rng(8)
    source, target = clustered_features(rng, 400, 50)
    cold = uotsel.sinkhorn(uotsel.cosine_cost(source, target, 0.010))
    nearby = uotsel.cosine_cost(source, target, 0.0102)
    fresh = uotsel.sinkhorn(nearby)
    warm = uotsel.sinkhorn(nearby, init=cold)
    assert int(warm.n_iters) < int(fresh.n_iters)
    np.testing.assert_allclose(warm.log_row_sums, fresh.log_row_sums, atol=1e-4)


@pytest.mark.slow
def test_plan_marginals_match_outputs():
    rng = np.random.default_rng(10)
    cost = rng.uniform(0, 5, size=(40, 10)).astype(np.float32)
    out = uotsel.sinkhorn(cost, threshold=1e-6)
    plan = np.asarray(out.plan(cost), np.float64)
    np.testing.assert_allclose(plan.sum(1), np.asarray(out.row_sums), rtol=1e-5)
    np.testing.assert_allclose(plan.sum(0), np.asarray(out.col_sums), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=0.0), "eps: must be > 0"),
        (dict(eps=-1.0), "eps: must be > 0"),
        (dict(eps=math.inf), "eps: must be finite"),
        (dict(tau_source=0.0), "tau_source: must be > 0"),
        (dict(tau_target=-2.0), "tau_target: must be > 0"),
        (dict(tau_target=float("nan")), "tau_target: must be a positive number"),
        (dict(threshold=0.0), "threshold: must be > 0"),
        (dict(max_iter=0), "max_iter: must be >= 1"),
        (dict(source_weights=np.ones(4)), r"source_weights: expected shape \[5\]"),
        (dict(target_weights=-np.ones(3)), "target_weights: must be finite and > 0"),
        (dict(source_mask=np.zeros(5, bool)), "source_mask: masks out every source unit"),
        (dict(source_mask=np.ones(5)), "source_mask: expected a bool array"),
        (dict(init=np.zeros(3)), r"init: expected shape \[5\]"),
        (dict(tau_source=math.inf, tau_target=math.inf), "equal total mass"),
    ],
)
def test_bad_arguments_raise_before_tracing(kwargs, match):
    cost = np.ones((5, 3), np.float32)
    with pytest.raises((ValueError, TypeError), match=match):
        uotsel.sinkhorn(cost, **kwargs)


@pytest.mark.slow
def test_infinite_costs_forbid_pairs():
    cost = np.array([[0.0, np.inf], [1.0, 0.5], [np.inf, 2.0]], np.float32)
    out = uotsel.sinkhorn(cost, tau_target=math.inf)
    plan = np.asarray(out.plan(np.where(np.isinf(cost), 1e30, cost)))
    assert plan[0, 1] == 0 and plan[2, 0] == 0
    np.testing.assert_allclose(out.col_sums, 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match=r"cost: 1 row\(s\) and 0 column\(s\) have no finite"):
        uotsel.sinkhorn(np.array([[0.0, 1.0], [np.inf, np.inf]], np.float32))
    with pytest.raises(ValueError, match="cost: contains 0 NaN and 1 -inf"):
        uotsel.sinkhorn(np.array([[0.0, -np.inf], [1.0, 1.0]], np.float32))
    # A padded (masked) row may hold anything.
    out = uotsel.sinkhorn(
        np.array([[0.0, 1.0], [np.inf, np.inf]], np.float32), source_mask=np.array([True, False])
    )
    assert bool(out.converged)


@pytest.mark.slow
def test_bad_costs():
    with pytest.raises(ValueError, match="cost: contains 1 NaN"):
        uotsel.sinkhorn(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="cost: expected a 2 or 3-d array"):
        uotsel.sinkhorn(np.ones(3))
    with pytest.raises(ValueError, match="cost: has no rows"):
        uotsel.sinkhorn(np.ones((0, 3)))
    with pytest.raises(TypeError, match="cost: expected a numeric array"):
        uotsel.sinkhorn(np.array([["a", "b"]]))


costs_strategy = st.integers(min_value=0, max_value=2**31 - 1).map(
    lambda seed: np.random.default_rng(seed).uniform(0, 30, size=(12, 5)).astype(np.float32)
)


@settings(max_examples=25, deadline=None)
@given(cost=costs_strategy, seed=st.integers(0, 1000))
@pytest.mark.slow
def test_property_permuting_rows_permutes_scores(cost, seed):
    perm = np.random.default_rng(seed).permutation(cost.shape[0])
    base = uotsel.sinkhorn(cost, threshold=1e-6)
    permuted = uotsel.sinkhorn(cost[perm], threshold=1e-6)
    np.testing.assert_allclose(
        permuted.log_row_sums, np.asarray(base.log_row_sums)[perm], atol=2e-5
    )


@settings(max_examples=25, deadline=None)
@given(cost=costs_strategy, seed=st.integers(0, 1000))
@pytest.mark.slow
def test_property_permuting_columns_keeps_row_scores(cost, seed):
    perm = np.random.default_rng(seed).permutation(cost.shape[1])
    base = uotsel.sinkhorn(cost, threshold=1e-6)
    permuted = uotsel.sinkhorn(cost[:, perm], threshold=1e-6)
    np.testing.assert_allclose(permuted.log_row_sums, base.log_row_sums, atol=2e-5)
    np.testing.assert_allclose(
        permuted.log_col_sums, np.asarray(base.log_col_sums)[perm], atol=2e-5
    )


@settings(max_examples=25, deadline=None)
@given(cost=costs_strategy, scale=st.floats(0.1, 10.0))
@pytest.mark.slow
def test_property_scaling_cost_eps_and_tau_together_keeps_the_plan(cost, scale):
    base = uotsel.sinkhorn(cost, eps=1.0, tau_source=1.0, tau_target=100.0, threshold=1e-6)
    scaled = uotsel.sinkhorn(
        cost * np.float32(scale),
        eps=scale,
        tau_source=scale,
        tau_target=100.0 * scale,
        threshold=1e-6,
    )
    np.testing.assert_allclose(scaled.log_row_sums, base.log_row_sums, atol=5e-5)


@settings(max_examples=25, deadline=None)
@given(cost=costs_strategy, tau=st.floats(0.05, 50.0))
def test_property_exact_target_side_holds_its_marginal(cost, tau):
    out = uotsel.sinkhorn(cost, tau_source=tau, tau_target=math.inf, threshold=1e-5, max_iter=20000)
    assert bool(out.converged)
    np.testing.assert_allclose(np.asarray(out.col_sums), 1.0, rtol=2e-5)
    assert np.all(np.isfinite(np.asarray(out.log_row_sums)))


@pytest.mark.slow
def test_lockstep_batches_match_sequential_batches():
    """The vmapped (accelerator) path and the sequential (CPU) path give the same answers,
    including a problem that needs the log-domain hand-over and masked padding."""
    from uotsel import unbalanced

    rng = np.random.default_rng(12)
    easy = rng.uniform(0, 8, size=(10, 2)).astype(np.float32)
    costs = np.stack([easy, _hard_for_the_kernel(), np.where(np.arange(2) < 1, easy, 1e6)])
    mask_b = np.array([[True, True], [True, True], [True, False]])
    settings = unbalanced.SolverSettings(
        source_weights=None,
        target_weights=None,
        source_mask=None,
        target_mask=mask_b,
        init=None,
        eps=np.float32(1.0),
        tau_source=np.float32(1.0),
        tau_target=np.full(3, 0.05, np.float32),
        threshold=np.float32(1e-5),
        max_iter=np.int32(1000),
    )
    for method in unbalanced.METHODS:
        seq, ok_seq = unbalanced.solve(costs, settings, method=method, lockstep=False)
        lock, ok_lock = unbalanced.solve(costs, settings, method=method, lockstep=True)
        assert bool(ok_seq) and bool(ok_lock)
        np.testing.assert_array_equal(seq.n_iters, lock.n_iters)
        np.testing.assert_allclose(seq.log_row_sums, lock.log_row_sums, atol=1e-6)
        np.testing.assert_allclose(seq.log_col_sums, lock.log_col_sums, atol=1e-6)


def _staged_cases():
    rng = np.random.default_rng(13)
    easy = rng.uniform(0, 8, size=(10, 2)).astype(np.float32)
    hard = _hard_for_the_kernel()
    batch = np.stack([easy, hard, np.where(np.arange(2) < 1, easy, 1e6)])
    mask = np.array([[True, True], [True, True], [True, False]])
    return [
        ("easy", easy, {}, False),
        ("hard", hard, {}, True),
        ("wide", rng.uniform(0, 300, size=(40, 7)).astype(np.float32), {}, None),
        ("batch", batch, {"target_mask": mask}, True),
    ]


@pytest.mark.parametrize("lockstep", [False, True])
@pytest.mark.parametrize("case", _staged_cases(), ids=lambda c: c[0])
@pytest.mark.slow
def test_two_programs_give_the_answer_of_one(case, lockstep):
    """solve_first (+ solve_rest when asked) is solve split in two programs: same iterations,
    same scores; the first alone finishes an easy problem."""
    _, cost, kwargs, needs_rest = case
    lead = cost.shape[:-2]
    settings = unbalanced.prepare(lead, *cost.shape[-2:], np.float32, tau_target=0.05, **kwargs)
    whole = unbalanced.solve(cost, settings, lockstep=lockstep)
    _, _, more = unbalanced.solve_first(cost, settings, lockstep=lockstep)
    if needs_rest is not None:
        assert bool(more) == needs_rest
    staged = unbalanced.solve_staged(cost, settings, lockstep=lockstep)
    assert bool(whole.ok) and bool(staged.ok)
    np.testing.assert_array_equal(staged.output.n_iters, whole.output.n_iters)
    for name in ("log_row_sums", "log_col_sums", "error"):
        np.testing.assert_allclose(
            getattr(staged.output, name), getattr(whole.output, name), rtol=1e-6, atol=1e-6
        )


@pytest.mark.slow
def test_second_program_compiled_only_when_needed(paper_features):
    source, target = paper_features["resnet18_supervised"]
    before = programs._rest_program._cache_size()
    out = uotsel.sinkhorn(uotsel.cosine_cost(source[:333], target[:77], 0.1))
    assert bool(out.converged)
    assert programs._rest_program._cache_size() == before
    uotsel.sinkhorn(_hard_for_the_kernel()[:9], tau_target=0.05)
    assert programs._rest_program._cache_size() == before + 1


# --- weights beyond the dtype's normal range ------------------------------------------------------


def _cache_sizes():
    return [p._cache_size() for p in (unbalanced.solve, programs._first_program)]


@pytest.mark.parametrize("side", ["source_weights", "target_weights"])
@pytest.mark.parametrize("value", [1.2e-39, 1e-45, 1e-38])
def test_subnormal_weight_is_refused_before_tracing(side, value):
    cost = np.random.default_rng(0).uniform(0, 5, (100, 100)).astype(np.float32)
    weights = np.ones(100, np.float32)
    weights[17] = value
    before = _cache_sizes()
    with pytest.raises(ValueError, match=rf"^{side}: .*\(unit 17\).*\[1\.18e-38, 3\.4e\+38\]"):
        uotsel.sinkhorn(cost, **{side: weights})
    assert _cache_sizes() == before


def test_weight_range_is_refused_in_batches_and_float64():
    weights = np.ones((2, 10))
    weights[1, 3] = 1e-40
    with pytest.raises(ValueError, match=r"^source_weights: 1e-40 \(unit 3\)"):
        unbalanced.prepare((2,), 10, 4, np.float32, source_weights=weights)
    weights[1, 3] = 1e39  # finite in float64, beyond float32
    with pytest.raises(ValueError, match=r"^source_weights: 1e\+39 .*largest float32"):
        unbalanced.prepare((2,), 10, 4, np.float32, source_weights=weights)
    # A masked unit is not solved: its weight is not checked.
    mask = np.ones((2, 10), bool)
    mask[1, 3] = False
    unbalanced.prepare((2,), 10, 4, np.float32, source_weights=weights, source_mask=mask)
    low, _ = unbalanced.weight_range(np.float64)
    assert low == float(np.finfo(np.float64).tiny)
    with pytest.raises(ValueError, match=r"^target_weights: .*\[2\.23e-308, 1\.8e\+308\]"):
        unbalanced.prepare((), 10, 4, np.float64, target_weights=np.full(4, 1e-310))


@pytest.mark.slow
def test_the_smallest_normal_weights_are_solved_as_pot_does_in_float64():
    low, _ = unbalanced.weight_range(np.float32)
    rng = np.random.default_rng(1)
    cost = rng.uniform(0, 5, (30, 20))
    a = np.ones(30, np.float32)
    a[1], a[7] = low, 1e-30
    b = np.ones(20, np.float32)
    b[3] = low
    out = uotsel.sinkhorn(cost.astype(np.float32), source_weights=a, target_weights=b)
    want = np.log(pot_marginals(cost, a=a.astype(np.float64), b=b.astype(np.float64))[0])
    np.testing.assert_allclose(np.asarray(out.log_row_sums), want, rtol=0, atol=1e-4)
