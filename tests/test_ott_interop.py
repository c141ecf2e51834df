"""uotsel.ott_interop against ott-jax's own Sinkhorn on the same problems."""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("ott")

from ott.geometry import costs as ott_costs
from ott.geometry import geometry, pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn as ott_sinkhorn

import uotsel
from uotsel import ott_interop as oi
from uotsel import paper

EPS, TAU_S, TAU_T = paper.EPS, paper.TAU_SOURCE, paper.TAU_TARGET
K_S, K_T = TAU_S / (TAU_S + EPS), TAU_T / (TAU_T + EPS)


def ott_solve(prob, threshold=None, init=None, lse_mode=True, iters=1000):
    """ott's Sinkhorn: to ``threshold``, its error checked after every iteration (so that
    ``n_iters`` is exact), or for ``iters`` iterations (None), past its float32 floor."""
    if threshold is None:
        solver = ott_sinkhorn.Sinkhorn(
            threshold=0.0,
            inner_iterations=1,
            min_iterations=iters,
            max_iterations=iters,
            lse_mode=lse_mode,
        )
    else:
        solver = ott_sinkhorn.Sinkhorn(
            threshold=threshold, inner_iterations=1, max_iterations=iters, lse_mode=lse_mode
        )
    return jax.jit(lambda p, i: solver(p, init=i))(prob, init)


def rel(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.max(np.abs(ours / theirs - 1.0)))


def same_ranking(ours, theirs, tie=3e-5):
    """Both argsorts are equal, except for swaps of units whose ``theirs`` values lie within
    ``tie`` (relative) of each other."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    a = np.argsort(-ours, kind="stable")
    b = np.argsort(-theirs, kind="stable")
    diff = np.flatnonzero(a != b)
    return all(abs(theirs[a[i]] / theirs[b[i]] - 1.0) <= tie for i in diff)


@pytest.fixture(scope="module")
def paper_like():
    """A paper-like 2000 x 200 cosine problem (random d = 64 features as class means, eps = 1,
    tau = (1, 100), unit weights): the ott problem, uotsel's and ott's solutions."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2000, 64)).astype(np.float32))
    y = jnp.asarray(rng.normal(size=(200, 64)).astype(np.float32))
    geom = pointcloud.PointCloud(
        x, y, cost_fn=ott_costs.Cosine(), scale_cost=paper.EPS_C, epsilon=EPS
    )
    prob = linear_problem.LinearProblem(
        geom,
        a=jnp.ones(2000),
        b=jnp.ones(200),
        tau_a=oi.tau_to_ott(TAU_S, EPS),
        tau_b=oi.tau_to_ott(TAU_T, EPS),
    )
    ours = oi.solve(prob)
    theirs = ott_solve(prob, iters=100)
    return x, y, prob, ours, theirs


@pytest.mark.slow
def test_paper_like_problem_matches_ott(paper_like):
    x, y, prob, ours, theirs = paper_like
    converted = oi.from_problem(prob)
    assert converted.geometry.kind == "cosine"
    assert converted.geometry.eps_c == pytest.approx(paper.EPS_C, rel=1e-7)
    assert (converted.eps, converted.tau_source) == (EPS, pytest.approx(TAU_S, rel=1e-12))
    assert converted.tau_target == pytest.approx(TAU_T, rel=1e-12)
    assert bool(ours.converged)
    # The same problem as uotsel's paper defaults, from the features.
    direct = uotsel.transport(x, y)
    assert rel(ours.row_sums, direct.row_sums) <= 2e-6
    rows = theirs.marginal(1)
    assert rel(ours.row_sums, rows) <= 2e-5
    assert rel(ours.col_sums, theirs.marginal(0)) <= 2e-5
    # The potentials are ott's (the plan has no weights in its kernel in either library).
    assert float(jnp.max(jnp.abs(ours.f - theirs.f))) <= 3e-5
    assert float(jnp.max(jnp.abs(ours.g - theirs.g))) <= 6e-5
    top_ours = np.argsort(-np.asarray(ours.row_sums), kind="stable")[:100]
    top_theirs = np.argsort(-np.asarray(rows), kind="stable")[:100]
    np.testing.assert_array_equal(top_ours, top_theirs)
    assert same_ranking(ours.row_sums, rows)


@pytest.mark.slow
def test_uniform_weights_are_carried_over(paper_like):
    x, y, _, _, _ = paper_like
    geom = pointcloud.PointCloud(
        x, y, cost_fn=ott_costs.Cosine(), scale_cost=paper.EPS_C, epsilon=EPS
    )
    prob = linear_problem.LinearProblem(geom, tau_a=K_S, tau_b=K_T)
    converted = oi.from_problem(prob)
    np.testing.assert_array_equal(converted.source_weights, np.full(2000, 1 / 2000, np.float32))
    np.testing.assert_array_equal(converted.target_weights, np.full(200, 1 / 200, np.float32))
    ours = oi.solve(prob)
    theirs = ott_solve(prob, iters=100)
    assert bool(ours.converged)
    assert rel(ours.row_sums, theirs.marginal(1)) <= 2e-5
    assert rel(ours.col_sums, theirs.marginal(0)) <= 2e-5
    # Weights scaled by alpha (source) and beta (target) multiply the whole plan by one
    # factor, exp((k_s (1 - k_t) log alpha + k_t (1 - k_s) log beta) / (1 - k_s k_t)): the
    # same ranking, other masses (0.5 % of the unit-weight ones here).
    unit = uotsel.transport(x, y)
    factor = math.exp(
        (K_S * (1 - K_T) * math.log(1 / 2000) + K_T * (1 - K_S) * math.log(1 / 200))
        / (1 - K_S * K_T)
    )
    assert 0.005 < factor < 0.0052
    assert rel(ours.row_sums, factor * np.asarray(unit.row_sums, np.float64)) <= 2e-5
    assert rel(ours.col_sums, factor * np.asarray(unit.col_sums, np.float64)) <= 2e-5


@pytest.mark.slow
def test_naive_ott_defaults_are_far_off(paper_like):
    """ott at its defaults (cost 1 - cos, epsilon relative to the cost, weights 1 / n) is
    another problem: its row sums are 99 % below the paper problem's, and its top 100 differ."""
    x, y, _, ours, _ = paper_like
    geom = pointcloud.PointCloud(x, y, cost_fn=ott_costs.Cosine())
    assert oi.from_geometry(geom).epsilon is None
    assert 0.006 < float(geom.epsilon) < 0.0065
    naive = linear_problem.LinearProblem(geom, tau_a=K_S, tau_b=K_T)
    out = ott_sinkhorn.Sinkhorn()(naive)
    rows = np.asarray(out.marginal(1))
    off = 1.0 - rows / np.asarray(ours.row_sums)
    assert off.min() > 0.99
    top = lambda r: set(np.argsort(-np.asarray(r), kind="stable")[:100].tolist())  # noqa: E731
    assert top(rows) != top(ours.row_sums)


@pytest.mark.slow
def test_warm_starts_both_ways(paper_like):
    _, _, prob, ours, theirs = paper_like
    cold = ott_solve(prob, threshold=1e-3)
    warm = ott_solve(prob, threshold=1e-3, init=oi.to_ott_init(ours))
    assert int(cold.n_iters) >= 10
    assert int(warm.n_iters) <= 2
    again = oi.solve(prob, init=theirs.f)
    assert bool(again.converged) and int(again.n_iters) <= 2


@pytest.mark.slow
def test_warm_start_in_kernel_mode():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(150, 8)).astype(np.float32))
    y = jnp.asarray(rng.normal(size=(30, 8)).astype(np.float32))
    geom = pointcloud.PointCloud(x, y, scale_cost="mean", epsilon=0.2)
    prob = linear_problem.LinearProblem(geom, tau_a=0.8, tau_b=0.95)
    ours = oi.solve(prob)
    init = oi.to_ott_init(ours, lse_mode=False)
    np.testing.assert_allclose(init[0], np.exp(np.asarray(ours.f) / 0.2), rtol=1e-6)
    cold = ott_solve(prob, threshold=1e-6, lse_mode=False)
    warm = ott_solve(prob, threshold=1e-6, init=init, lse_mode=False)
    assert bool(cold.converged) and bool(warm.converged)
    assert int(warm.n_iters) <= 2 < int(cold.n_iters)
    assert rel(ours.row_sums, warm.marginal(1)) <= 2e-5


SCALES = [1.0, 0.5, "mean", "max_cost", "median"]


@jax.tree_util.register_pytree_node_class
class _ScaledCosine(ott_costs.Cosine):
    """A subclass changes the cost: it must go through the cost matrix."""

    def __call__(self, x, y):
        return 2.0 * super().__call__(x, y)


COST_FNS = {
    "cosine": (ott_costs.Cosine, "cosine"),
    "sqeuclidean": (ott_costs.SqEuclidean, "sqeuclidean"),
    "euclidean": (ott_costs.Euclidean, "l2"),
    "pnorm": (lambda: ott_costs.PNormP(1.5), None),
    "cosine-subclass": (_ScaledCosine, None),
    "cosine-ridge": (lambda: ott_costs.Cosine(ridge=1e-3), None),
}


@pytest.fixture(scope="module")
def points():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(120, 8)).astype(np.float32))
    y = jnp.asarray(rng.normal(size=(30, 8)).astype(np.float32))
    return x, y


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", list(COST_FNS))
def test_cost_mapping(points, name, scale):
    make, kind = COST_FNS[name]
    geom = pointcloud.PointCloud(*points, cost_fn=make(), scale_cost=scale)
    converted = oi.from_geometry(geom)
    assert converted.kind == kind
    assert converted.epsilon is None
    assert converted.scale == pytest.approx(float(geom.inv_scale_cost), rel=1e-7)
    if kind is None:
        assert converted.source is None and converted.cost is not None
    else:
        assert converted.cost is None and converted.source is points[0]
    ref = np.asarray(geom.cost_matrix)
    err = np.abs(np.asarray(converted.matrix()) - ref).max() / np.abs(ref).max()
    assert err <= 1e-6


@pytest.mark.parametrize(
    "name, scale",
    [
        ("cosine", 0.5),
        ("sqeuclidean", "mean"),
        ("euclidean", "max_cost"),
        ("pnorm", "median"),
        ("cosine-subclass", 1.0),
    ],
)
@pytest.mark.slow
def test_cost_mapping_solves_like_ott(points, name, scale):
    make, _ = COST_FNS[name]
    geom = pointcloud.PointCloud(*points, cost_fn=make(), scale_cost=scale, epsilon=0.1)
    prob = linear_problem.LinearProblem(geom, tau_a=0.9, tau_b=0.99)
    ours = oi.solve(prob)
    theirs = ott_solve(prob)
    assert bool(ours.converged)
    assert rel(ours.row_sums, theirs.marginal(1)) <= 3e-5
    assert rel(ours.col_sums, theirs.marginal(0)) <= 3e-5


@pytest.mark.slow
def test_cosine_scale_is_eps_c(points):
    x, y = points
    geom = pointcloud.PointCloud(x, y, cost_fn=ott_costs.Cosine(), scale_cost=0.05)
    converted = oi.from_geometry(geom)
    assert converted.eps_c == pytest.approx(0.05, rel=1e-7)
    via_transport = uotsel.transport(x, y, eps_c=converted.eps_c)
    via_solve = oi.solve(geom)
    assert rel(via_transport.row_sums, via_solve.row_sums) <= 5e-6
    assert oi.from_geometry(pointcloud.PointCloud(x, y)).eps_c is None


@pytest.mark.slow
def test_cost_matrix_and_kernel_geometries(points):
    cost = jnp.asarray(np.random.default_rng(2).random((50, 20)).astype(np.float32)) * 3
    for scale in SCALES:
        geom = geometry.Geometry(cost_matrix=cost, scale_cost=scale)
        converted = oi.from_geometry(geom)
        assert converted.kind is None
        np.testing.assert_array_equal(converted.matrix(), geom.cost_matrix)
    kernel = geometry.Geometry(kernel_matrix=jnp.exp(-cost / 0.5), epsilon=0.5)
    converted = oi.from_geometry(kernel)
    assert converted.epsilon == 0.5
    np.testing.assert_allclose(converted.matrix(), cost, atol=1e-5)
    prob = linear_problem.LinearProblem(geometry.Geometry(cost_matrix=cost, epsilon=0.5))
    ours, theirs = oi.solve(prob), ott_solve(prob)
    assert rel(ours.row_sums, theirs.marginal(1)) <= 2e-5


def test_epsilon_rules(points):
    x, y = points
    default = pointcloud.PointCloud(x, y)
    assert oi.from_geometry(default).epsilon is None
    assert oi.from_problem(linear_problem.LinearProblem(default)).eps == paper.EPS
    explicit = pointcloud.PointCloud(x, y, epsilon=0.3)
    assert oi.from_geometry(explicit).epsilon == pytest.approx(0.3)
    relative = pointcloud.PointCloud(x, y, epsilon=0.1, relative_epsilon="mean")
    assert oi.from_geometry(relative).epsilon == pytest.approx(float(relative.epsilon))
    prob = linear_problem.LinearProblem(explicit, tau_a=0.5, tau_b=0.75)
    p = oi.from_problem(prob)
    assert (p.eps, p.tau_source, p.tau_target) == pytest.approx((0.3, 0.3, 0.9))
    p = oi.from_problem(prob, eps=2.0)
    assert (p.eps, p.tau_source, p.tau_target) == pytest.approx((2.0, 2.0, 6.0))
    assert float(oi.solve(prob, eps=2.0).eps) == 2.0
    assert float(oi.solve(explicit).eps) == pytest.approx(0.3)


@pytest.mark.parametrize("tau_a, tau_b", [(1.0, 0.99), (0.5, 1.0), (1.0, 1.0)])
@pytest.mark.slow
def test_balanced_sides(points, tau_a, tau_b):
    geom = pointcloud.PointCloud(*points, scale_cost="mean", epsilon=0.05)
    prob = linear_problem.LinearProblem(geom, tau_a=tau_a, tau_b=tau_b)
    p = oi.from_problem(prob)
    assert math.isinf(p.tau_source) == (tau_a == 1.0)
    assert math.isinf(p.tau_target) == (tau_b == 1.0)
    ours = oi.solve(prob)
    theirs = ott_solve(prob)
    assert bool(ours.converged)
    plan_ours = np.asarray(ours.plan(p.geometry.matrix()))
    plan_theirs = np.asarray(theirs.matrix)
    assert np.abs(plan_ours - plan_theirs).max() <= 3e-5 * plan_theirs.max()
    if tau_a == 1.0:
        np.testing.assert_allclose(ours.row_sums, prob.a, rtol=2e-5)
    if tau_b == 1.0:
        np.testing.assert_allclose(ours.col_sums, prob.b, rtol=2e-5)


@pytest.mark.slow
def test_zero_weights_are_masked(points):
    geom = pointcloud.PointCloud(*points, scale_cost="mean", epsilon=0.1)
    a = jnp.ones(120).at[jnp.array([3, 50])].set(0.0)
    prob = linear_problem.LinearProblem(geom, a=a, tau_a=0.9, tau_b=0.95)
    p = oi.from_problem(prob)
    assert p.target_mask is None
    np.testing.assert_array_equal(p.source_mask, np.asarray(a) > 0)
    ours, theirs = oi.solve(prob), ott_solve(prob)
    keep = np.asarray(a) > 0
    assert np.all(np.isneginf(np.asarray(ours.log_row_sums)[~keep]))
    assert rel(np.asarray(ours.row_sums)[keep], np.asarray(theirs.marginal(1))[keep]) <= 2e-5
    f, _ = oi.to_ott_init(ours)
    assert np.all(np.isneginf(np.asarray(f)[~keep])) and np.all(np.isneginf(theirs.f[~keep]))
    with pytest.raises(TypeError, match=r"^source_mask:"):
        oi.solve(prob, source_mask=keep)


@pytest.mark.slow
def test_float64_potentials_are_ott_potentials(points):
    """In float64 the two solvers agree far below float32 rounding: the same problem, the
    same potentials, no offset. (ott solves on the converted matrix: its own cosine, evaluated
    inside its compiled loop, differs from its eager value by ~4e-9 in float64.)"""
    with jax.enable_x64(True):
        x, y = (jnp.asarray(p, jnp.float64) for p in points)
        geom = pointcloud.PointCloud(x, y, cost_fn=ott_costs.Cosine(ridge=0.0), epsilon=0.05)
        converted = oi.from_geometry(geom)
        assert converted.kind == "cosine"
        cost = converted.matrix()
        assert cost.dtype == jnp.float64
        assert float(jnp.max(jnp.abs(cost - geom.cost_matrix))) <= 1e-14
        same = geometry.Geometry(cost_matrix=cost, epsilon=0.05)
        for tau_a, tau_b in [(0.7, 1.0), (0.5, 0.99)]:
            kw = dict(a=jnp.ones(120), b=jnp.ones(30), tau_a=tau_a, tau_b=tau_b)
            ours = oi.solve(linear_problem.LinearProblem(geom, **kw), threshold=1e-12)
            theirs = ott_solve(linear_problem.LinearProblem(same, **kw), iters=3000)
            assert bool(ours.converged)
            assert ours.f.dtype == jnp.float64
            assert float(jnp.max(jnp.abs(ours.f - theirs.f))) <= 1e-12
            assert float(jnp.max(jnp.abs(ours.g - theirs.g))) <= 1e-12
            assert rel(ours.row_sums, theirs.marginal(1)) <= 1e-11


@pytest.mark.slow
def test_paper_settings_through_a_geometry(points):
    """A geometry alone is solved with uotsel's defaults (paper taus, unit weights)."""
    x, y = points
    geom = pointcloud.PointCloud(x, y, cost_fn=ott_costs.Cosine(), scale_cost=paper.EPS_C)
    ours = oi.solve(geom)
    direct = uotsel.transport(x, y)
    assert rel(ours.row_sums, direct.row_sums) <= 5e-6
    relaxed = oi.solve(geom, tau_target=10.0, source_weights=jnp.full(120, 2.0))
    assert bool(relaxed.converged)


@pytest.mark.slow
def test_solve_inside_jit(points):
    """Traced geometries are converted too (a traced point cloud through its cost matrix, its
    ``Cosine`` ridge cannot be checked)."""
    geom = pointcloud.PointCloud(*points, cost_fn=ott_costs.Cosine(), scale_cost=0.1, epsilon=0.5)
    prob = linear_problem.LinearProblem(geom, tau_a=0.9, tau_b=0.95)
    for obj in (geom, prob):
        traced = jax.jit(lambda o: oi.solve(o).row_sums)(obj)
        assert rel(traced, oi.solve(obj).row_sums) <= 5e-6


@pytest.mark.slow
def test_errors(points):
    x, y = points
    geom = pointcloud.PointCloud(x, y)
    prob = linear_problem.LinearProblem(geom, tau_a=0.5, tau_b=0.9)
    with pytest.raises(TypeError, match=r"^geom:"):
        oi.from_geometry(np.zeros((3, 2)))
    with pytest.raises(TypeError, match=r"^geom:.*from_problem"):
        oi.from_geometry(prob)
    with pytest.raises(TypeError, match=r"^problem:"):
        oi.from_problem(geom)
    with pytest.raises(TypeError, match=r"^geom_or_problem:"):
        oi.solve(np.zeros((3, 2)))
    with pytest.raises(TypeError, match=r"^geom_or_problem:"):
        oi.solve(ott_costs.Cosine())
    with pytest.raises(ValueError, match=r"^geom: batched"):
        oi.from_geometry(pointcloud.PointCloud(jnp.stack([x, x]), jnp.stack([y, y])))
    with pytest.raises(ValueError, match=r"^geom: batched"):
        oi.from_geometry(geometry.Geometry(cost_matrix=jnp.ones((2, 4, 3))))
    with pytest.raises(ValueError, match=r"^geom: ott cannot compute its scale_cost"):
        oi.from_geometry(
            pointcloud.PointCloud(x, y, cost_fn=ott_costs.Cosine(), scale_cost="max_norm")
        )
    with pytest.raises(ValueError, match=r"^geom: ott cannot compute its scale_cost"):
        oi.from_geometry(geometry.Geometry(cost_matrix=jnp.ones((4, 3)), scale_cost="foo"))
    with pytest.raises(ValueError, match=r"^geom: scale_cost"):
        oi.from_geometry(geometry.Geometry(cost_matrix=jnp.zeros((4, 3)), scale_cost="mean"))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"^tau_a:"):
            oi.from_problem(linear_problem.LinearProblem(geom, tau_a=bad))
    with pytest.raises(ValueError, match=r"^tau_b:"):
        oi.from_problem(linear_problem.LinearProblem(geom, tau_b=float("nan")))
    with pytest.raises(ValueError, match=r"^eps:"):
        oi.from_problem(prob, eps=0.0)
    with pytest.raises(ValueError, match=r"^problem.a:"):
        oi.from_problem(linear_problem.LinearProblem(geom, a=-jnp.ones(120)))
    for name in ("tau_source", "tau_target", "source_weights", "target_weights"):
        with pytest.raises(TypeError, match=rf"^{name}:"):
            oi.solve(prob, **{name: 1.0})
    with pytest.raises(TypeError, match=r"^output:"):
        oi.to_ott_init((jnp.zeros(3), jnp.zeros(2)))
    with pytest.raises(TypeError, match=r"^lse_mode:"):
        oi.to_ott_init(oi.solve(prob), lse_mode=1)
    with pytest.raises(TypeError, match=r"^tau:"):
        oi.tau_to_ott("big", 1.0)
    with pytest.raises(ValueError, match=r"^tau:"):
        oi.tau_to_ott(0.0, 1.0)
    with pytest.raises(ValueError, match=r"^eps:"):
        oi.tau_to_ott(1.0, math.inf)


def test_is_ott_object(points):
    geom = pointcloud.PointCloud(*points)
    for x in (geom, linear_problem.LinearProblem(geom), ott_costs.Cosine(), _ScaledCosine()):
        assert oi.is_ott_object(x)
    for x in (None, 1.0, np.zeros(3), jnp.zeros(3), uotsel.sinkhorn(np.ones((2, 2)))):
        assert not oi.is_ott_object(x)


@pytest.mark.slow
def test_ott_stays_unimported():
    code = (
        "import sys, uotsel\n"
        "assert 'uotsel.ott_interop' not in sys.modules\n"
        "from uotsel import ott_interop\n"
        "assert not ott_interop.is_ott_object(1.0)\n"
        "print(','.join(m for m in sys.modules if m == 'ott' or m.startswith('ott.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


@settings(max_examples=200, deadline=None)
@given(
    tau=st.floats(1e-6, 1e6) | st.just(math.inf),
    eps=st.floats(1e-4, 1e4),
)
def test_tau_round_trip(tau, eps):
    tau_a = oi.tau_to_ott(tau, eps)
    assert 0.0 < tau_a <= 1.0
    back = oi.tau_from_ott(tau_a, eps)
    if math.isinf(tau):
        assert math.isinf(back)
        return
    # 1 - tau_a keeps ~log2(1 + tau / eps) fewer bits than tau_a (all of them when tau_a
    # rounds to 1: such a side is held exactly, as uotsel holds it).
    if tau_a == 1.0:
        assert tau / eps > 2**52
        return
    assert back == pytest.approx(tau, rel=8 * np.finfo(float).eps * (2 + tau / eps))
    assert oi.tau_to_ott(back, eps) == pytest.approx(tau_a, rel=4 * np.finfo(float).eps)


@pytest.mark.slow
def test_pot_names_in_the_table():
    """POT's conventions as docs/solver.md lists them, next to ott's: ``reg_type="entropy"``
    is uotsel's problem with ``f = reg * logu``; the default ``"kl"`` is uotsel's with the cost
    ``C - eps log a - eps log b``; empty weights are uniform ``1 / n``."""
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(1)
    cost = rng.random((40, 12)) * 3
    a, b = rng.random(40) + 0.2, rng.random(12) + 0.5
    eps, tau = 0.5, (1.0, 10.0)
    pot = dict(stopThr=1e-15, numItermax=100000, log=True)
    with jax.enable_x64(True):

        def ours(c, wa, wb):
            return uotsel.sinkhorn(
                c,
                eps=eps,
                tau_source=tau[0],
                tau_target=tau[1],
                source_weights=wa,
                target_weights=wb,
                threshold=1e-13,
            )

        with pytest.warns(UserWarning, match="entropy"):
            plan, log = ot.unbalanced.sinkhorn_knopp_unbalanced(
                a, b, cost, eps, tau, reg_type="entropy", **pot
            )
        out = ours(cost, a, b)
        assert rel(out.plan(cost), plan) <= 1e-12
        np.testing.assert_allclose(out.f, eps * log["logu"], atol=1e-13)
        np.testing.assert_allclose(out.g, eps * log["logv"], atol=1e-13)
        plan, log = ot.unbalanced.sinkhorn_knopp_unbalanced(a, b, cost, eps, tau, **pot)
        shifted = cost - eps * np.log(a)[:, None] - eps * np.log(b)[None, :]
        out = ours(shifted, a, b)
        assert rel(out.plan(shifted), plan) <= 1e-12
        np.testing.assert_allclose(out.f, eps * log["logu"], atol=1e-13)
        with pytest.warns(UserWarning, match="entropy"):
            plan, _ = ot.unbalanced.sinkhorn_knopp_unbalanced(
                [], [], cost, eps, tau, reg_type="entropy", **pot
            )
        out = ours(cost, np.full(40, 1 / 40), np.full(12, 1 / 12))
        assert rel(out.plan(cost), plan) <= 1e-12


# The core takes ott objects wherever it takes a cost or features.


def _cloud(seed=11, n=120, m=9, d=8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.normal(size=(m, d)).astype(np.float32)
    return x, y


@pytest.mark.slow
def test_sinkhorn_transport_and_select_take_a_point_cloud():
    from ott.geometry import costs as ott_costs
    from ott.geometry import pointcloud

    x, y = _cloud()
    cloud = pointcloud.PointCloud(x, y, cost_fn=ott_costs.Cosine(), scale_cost=0.01)
    by_features = uotsel.transport(x, y)
    np.testing.assert_array_equal(uotsel.transport(cloud).f, by_features.f)
    np.testing.assert_allclose(
        uotsel.sinkhorn(cloud).log_row_sums, by_features.log_row_sums, rtol=0, atol=2e-5
    )
    sel = uotsel.select(cloud, top_k=5)
    np.testing.assert_array_equal(sel.ranking, uotsel.select(x, y, top_k=5).ranking)
    assert sel.settings["cost"] == "cosine" and sel.settings["eps_c"] == pytest.approx(0.01)
    # a keyword of the caller wins over what the geometry implies
    assert uotsel.select(cloud, eps_c=0.05, top_k=5).settings["eps_c"] == 0.05


@pytest.mark.slow
def test_select_takes_a_cost_matrix_geometry_for_every_strategy():
    from ott.geometry import geometry

    x, y = _cloud(12)
    geom = geometry.Geometry(cost_matrix=np.asarray(uotsel.cost_matrix(x, y, "l2")))
    for strategy in ("uot", "greedy_ot", "nearest"):
        got = uotsel.select(geom, strategy=strategy, top_k=5)
        want = uotsel.select(x, y, strategy=strategy, cost="l2", eps_c=1.0, top_k=5)
        np.testing.assert_array_equal(got.ranking, want.ranking)


@pytest.mark.slow
def test_sinkhorn_takes_a_linear_problem_with_its_weights_and_taus():
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem

    x, y = _cloud(13)
    cost = np.asarray(uotsel.cosine_cost(x, y, 0.1))
    a, b = np.full(len(x), 0.5, np.float32), np.full(len(y), 2.0, np.float32)
    problem = linear_problem.LinearProblem(
        geometry.Geometry(cost_matrix=cost), a=a, b=b, tau_a=0.5, tau_b=0.9
    )
    got = uotsel.sinkhorn(problem, eps=2.0)
    # tau = eps * tau_a / (1 - tau_a): 2 and 18 at eps = 2
    want = uotsel.sinkhorn(
        cost, eps=2.0, tau_source=2.0, tau_target=18.0, source_weights=a, target_weights=b
    )
    np.testing.assert_allclose(got.f, want.f, rtol=1e-6, atol=1e-6)


def test_ott_objects_in_the_wrong_place_are_named():
    from ott.geometry import pointcloud

    x, y = _cloud(14)
    cloud = pointcloud.PointCloud(x, y)
    with pytest.raises(TypeError, match=r"^target: must be None"):
        uotsel.select(cloud, y)
    with pytest.raises(TypeError, match=r"^target: must be None"):
        uotsel.transport(cloud, y)
