"""Bad and extreme input: every public entry point either gives the float64 answer within an
explicit tolerance or raises a ``ValueError`` whose message starts with the argument to change.

The references are independent: costs in float64 numpy from the same float32 inputs, and a
float64 log-domain Sinkhorn written here (soft-min in cost units, so no ``C / eps`` is ever
formed, with the optimal dual translation and the certified stopping rule of
``docs/solver.md``). Magnitudes run from subnormal numbers to 1e30, ``eps`` from 1e-8 to 1e8,
``tau`` from 1e-6 to inf.

Tolerances (``u = 2^-24``, float32's unit roundoff):

- cosine cost: ``|dC| <= 4 (d + 4) u / eps_c`` (a d-term dot product of unit vectors);
- ``l2``: ``|dC| <= E / (C + sqrt(E)) + 4 u C + 4 sqrt(d) tiny``, with
  ``E = 8 (d + 2) u (S^2 + T^2)`` the rounding of the squared distance of features centred on the
  target mean (``S``, ``T`` their largest norms) and ``tiny`` the smallest normal float32 (what
  flushing subnormal numbers to zero can lose); ``sqeuclidean``: ``|dC| <= E + 4 u C + 4 tiny``;
- ``log(P 1)`` and ``log(P^T 1)``: ``log1p(error) + 32 u (1 + P + L) + 2 dC / eps``: the solver's
  certified error, the float32 rounding of the potentials (``P``: the largest potential or cost,
  in units of ``eps``) and of the result (``L``: its largest magnitude), and the cost's own
  rounding (a cost perturbation ``dC`` moves ``log(P 1)`` by at most ``2 dC / eps``).

A refusal must be justified: ``eps`` is named only when the costs reach ``2^17 eps`` (the solver
refuses at ``2^18 eps``, float32 resolving potentials to ``eps / 16`` up to ``2^20 eps``), the taus
only when the float64 potentials pass ``2^19 eps`` or both taus exceed ``2^24 eps`` (where
float32 holds a marginal exactly) with unequal masses; a suggested smallest ``eps`` must work.
"""

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import uotsel

U = 2.0**-24
TINY = float(np.finfo(np.float32).tiny)
NAMED = re.compile(
    r"^(eps|eps_c|tau_source|tau_target|tau_source, tau_target|source|target|cost|matching): "
)
SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


# --- float64 references ----------------------------------------------------------------------


def softmin(z, eps, axis):
    """``eps * log sum exp(z / eps)`` along ``axis``, with ``z`` in cost units."""
    top = np.max(z, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, axis) + eps * np.log(np.sum(np.exp((z - top) / eps), axis=axis))


def shrink(y, eps, tau):
    """``tau / (tau + eps) * y``, without the cancellation of ``y - eps / (tau + eps) * y``."""
    if math.isinf(tau):
        return y
    slack = eps / (tau + eps)
    return y - slack * y if slack < 0.5 else (tau / (tau + eps)) * y


def lse(z):
    return z.max() + np.log(np.sum(np.exp(z - z.max())))


def reference_uot(cost, eps, tau_s, tau_t, a, b, max_iter=20000):
    """Float64 log-domain Sinkhorn with the optimal translation; ``converged`` is the certified
    stop at 1e-13 (or a few ulps of the potentials)."""
    cost = np.asarray(cost, np.float64)
    la, lb = np.log(a), np.log(b)
    inv_s = 0.0 if math.isinf(tau_s) else 1.0 / tau_s
    inv_t = 0.0 if math.isinf(tau_t) else 1.0 / tau_t
    slack_s = 0.0 if math.isinf(tau_s) else eps / (tau_s + eps)
    slack_t = 0.0 if math.isinf(tau_t) else eps / (tau_t + eps)
    one_minus = slack_s + slack_t - slack_s * slack_t
    kappa = (1 - slack_s) * (1 - slack_t)
    gain = max(
        kappa / one_minus * inv_s if inv_s else 0.0,
        ((1 - slack_t) / one_minus * inv_t if inv_t else 0.0) + 1.0 / eps,
    )
    translation = 1.0 / (inv_s + inv_t) if (inv_s or inv_t) else 0.0
    with np.errstate(over="ignore"):
        return _iterate(cost, eps, la, lb, inv_s, inv_t, tau_s, tau_t, gain, translation, max_iter)


def _iterate(cost, eps, la, lb, inv_s, inv_t, tau_s, tau_t, gain, translation, max_iter):
    f = np.zeros(cost.shape[0])
    converged = False
    for _ in range(max_iter):
        g = shrink(eps * lb - softmin(f[:, None] - cost, eps, 0), eps, tau_t)
        f_new = shrink(eps * la - softmin(g[None, :] - cost, eps, 1), eps, tau_s)
        error = np.expm1(gain * np.max(np.abs(f_new - f)))
        f = f_new
        scale = max(np.max(np.abs(f)), np.max(np.abs(g))) / eps
        if error <= max(1e-13, 2.0**-44 * scale):
            converged = True
            break
        if translation:
            f = f + translation * (lse(la - f * inv_s) - lse(lb - g * inv_t))
    rows = la - f * inv_s if inv_s else (softmin(g[None, :] - cost, eps, 1) + f) / eps
    cols = (softmin(f[:, None] - cost, eps, 0) + g) / eps
    return dict(rows=rows, cols=cols, f=f, g=g, converged=converged)


def cost64(kind, source, target, eps_c=1.0):
    s = np.asarray(source, np.float64)
    t = np.asarray(target, np.float64)
    if kind == "cosine":
        s = s / np.linalg.norm(s, axis=1, keepdims=True)
        t = t / np.linalg.norm(t, axis=1, keepdims=True)
        return (1.0 - np.clip(s @ t.T, -1.0, 1.0)) / eps_c
    d2 = np.sum((s[:, None, :] - t[None, :, :]) ** 2, axis=-1)
    return np.sqrt(d2) if kind == "l2" else d2


def cost_tolerance(kind, source, target, ref, eps_c=1.0):
    """Entry-wise bound on the float32 cost's error (module docstring)."""
    d = source.shape[1]
    if kind == "cosine":
        return np.full(ref.shape, 4 * (d + 4) * U / eps_c)
    s = np.asarray(source, np.float64)
    t = np.asarray(target, np.float64)
    mean = t.mean(axis=0)
    spread = np.max(np.sum((s - mean) ** 2, 1)) + np.max(np.sum((t - mean) ** 2, 1))
    e = 8 * (d + 2) * U * spread
    if kind == "l2":
        return e / (ref + np.sqrt(e)) + 4 * U * ref + 4 * math.sqrt(d) * TINY
    return e + 4 * U * ref + 4 * TINY


def features(seed, shape, exponent):
    """float32 features ``[n, d]`` whose rows have magnitudes around ``10**exponent`` (each row
    within a factor 1000 of it), from subnormal to huge."""
    rng = np.random.default_rng(seed)
    rows = 10.0 ** (exponent + rng.uniform(-1.5, 1.5, size=(shape[0], 1)))
    return (rng.normal(size=shape) * rows).astype(np.float32)


def check_solution(log_rows, log_cols, error, ref, cost, eps, cost_error=0.0):
    """Our log-marginals against the float64 reference, within the module's tolerance."""
    if not ref["converged"]:
        return  # the reference itself could not certify; nothing to compare with
    finite = np.isfinite(cost)
    top = max(np.max(np.abs(ref["f"])), np.max(np.abs(ref["g"])), np.max(np.abs(cost[finite])))
    for ours, theirs in ((log_rows, ref["rows"]), (log_cols, ref["cols"])):
        if ours is None:
            continue
        ours = np.asarray(ours, np.float64)
        assert np.all(np.isfinite(ours))
        slack = 32 * U * (1 + top / eps + np.max(np.abs(theirs))) + 2 * cost_error / eps
        allowed = math.log1p(float(error)) + slack
        assert np.max(np.abs(ours - theirs)) <= allowed, (np.max(np.abs(ours - theirs)), allowed)


def check_refusal(err, cost, eps, tau_s, tau_t, a, b):
    """The message names an argument, and the refusal is justified (module docstring)."""
    message = str(err)
    assert NAMED.match(message), message
    top_cost = float(np.max(np.abs(cost[np.isfinite(cost)])))
    if message.startswith("eps:"):
        assert top_cost >= 2.0**17 * eps, (message, top_cost / eps)
        return float(re.search(r"about ([0-9.e+-]+)", message).group(1))
    if message.startswith("tau_source, tau_target: both are inf"):
        assert math.isinf(tau_s) and math.isinf(tau_t)
        assert not np.isclose(a.sum(), b.sum(), rtol=1e-5)
    elif message.startswith("tau_source, tau_target: both are at least"):
        assert min(tau_s, tau_t) >= 2.0**24 * eps * (1 - 1e-6)
        assert not np.isclose(a.sum(), b.sum(), rtol=1e-5)
    else:
        ref = reference_uot(cost, eps, tau_s, tau_t, a, b, max_iter=3000)
        potentials = max(np.max(np.abs(ref["f"])), np.max(np.abs(ref["g"])))
        assert potentials >= 2.0**19 * eps, (message, potentials / eps)
    return None


taus = st.one_of(st.just(math.inf), st.floats(-6.0, 8.0).map(lambda e: 10.0**e))


# --- costs -----------------------------------------------------------------------------------


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(list(uotsel.COSTS)),
    source_exponent=st.floats(-45.0, 30.0),
    target_exponent=st.floats(-45.0, 30.0),
)
@pytest.mark.slow
def test_costs_match_float64_or_name_the_argument(seed, kind, source_exponent, target_exponent):
    source = features(seed, (7, 5), source_exponent)
    target = features(seed + 1, (4, 5), target_exponent)
    if kind == "cosine":
        zero = [
            name
            for name, x in (("source", source), ("target", target))
            if not np.any(x != 0, axis=1).all()
        ]
        if zero:
            with pytest.raises(ValueError, match=rf"^{zero[0]}: \d+ row\(s\) have zero norm"):
                uotsel.cost_matrix(source, target, kind, eps_c=0.01)
            return
        got = uotsel.cost_matrix(source, target, kind, eps_c=0.01)
        ref = cost64(kind, source, target, 0.01)
        tol = cost_tolerance(kind, source, target, ref, 0.01)
    else:
        ref = cost64(kind, source, target)
        limit = float(np.finfo(np.float32).max)
        if ref.max() > limit:
            with pytest.raises(ValueError, match=r"^source: .* exceed the float32 range"):
                uotsel.cost_matrix(source, target, kind)
            return
        try:
            got = uotsel.cost_matrix(source, target, kind)
        except ValueError as err:
            assert ref.max() > limit / 2 and str(err).startswith("source: "), str(err)
            return
        tol = cost_tolerance(kind, source, target, ref)
    got = np.asarray(got, np.float64)
    assert got.dtype == np.float64 and np.all(np.isfinite(got))
    assert np.all(np.abs(got - ref) <= tol), np.max(np.abs(got - ref) - tol)


def test_subnormal_and_huge_rows_give_the_cosine_of_their_direction():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 5)).astype(np.float32)
    target = rng.normal(size=(3, 5)).astype(np.float32)
    expected = np.asarray(uotsel.cosine_cost(base, target), np.float64)
    for factor in (1e-42, 1e-39, 1e-30, 1e30, 1e38 / 4):
        scaled = (base.astype(np.float64) * factor).astype(np.float32)
        got = np.asarray(uotsel.cosine_cost(scaled, target), np.float64)
        # Subnormal rows keep only a few significant bits: compare with their own float64 cost.
        ref = cost64("cosine", scaled, target, 0.01)
        np.testing.assert_allclose(got, ref, atol=4 * 9 * U / 0.01)
        if factor >= 1e-30:
            np.testing.assert_allclose(got, expected, atol=4 * 9 * U / 0.01)
    # A row with subnormal entries next to a small normal one: those entries still count.
    mixed = np.array([[2e-38, 3e-39, -7e-40, 0.0, 1e-45]], np.float32)
    got = np.asarray(uotsel.cosine_cost(mixed, target), np.float64)
    np.testing.assert_allclose(got, cost64("cosine", mixed, target, 0.01), atol=4 * 9 * U / 0.01)


def test_l2_of_huge_features_is_finite_and_sqeuclidean_overflow_is_named():
    rng = np.random.default_rng(1)
    source = rng.normal(size=(5, 4)).astype(np.float32)
    target = rng.normal(size=(3, 4)).astype(np.float32)
    for factor in (1e19, 1e30, 1e37):
        got = np.asarray(uotsel.l2_cost(source * factor, target * factor), np.float64)
        ref = cost64("l2", source * factor, target * factor)
        np.testing.assert_allclose(got, ref, rtol=1e-5)
    with pytest.raises(ValueError, match=r"^source: sqeuclidean costs .* exceed the float32 range"):
        uotsel.sqeuclidean_cost(source * 1e20, target * 1e20)


@pytest.mark.parametrize("eps_c", [1e-39, 0.0])
def test_eps_c_must_be_a_normal_number(eps_c):
    with pytest.raises(ValueError, match=r"^eps_c: must be"):
        uotsel.cosine_cost(np.eye(2), np.eye(2), eps_c)


def test_features_without_dimensions_are_named():
    with pytest.raises(ValueError, match=r"^source: has no features \(D = 0\)"):
        uotsel.select(np.zeros((3, 0)), np.zeros((2, 0)), top_k=1)


# --- the solver ------------------------------------------------------------------------------


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    exponent=st.floats(-45.0, 30.0),
    log_eps=st.floats(-8.0, 8.0),
    tau_s=taus,
    tau_t=taus,
    weighted=st.booleans(),
    method=st.sampled_from(uotsel.unbalanced.METHODS),
)
@pytest.mark.slow
def test_sinkhorn_matches_float64_or_names_the_argument(
    seed, exponent, log_eps, tau_s, tau_t, weighted, method
):
    rng = np.random.default_rng(seed)
    cost = (rng.uniform(0, 1, size=(6, 4)) * 10.0**exponent).astype(np.float32)
    eps = 10.0**log_eps
    a = rng.uniform(0.5, 2.0, 6) if weighted else np.ones(6)
    b = rng.uniform(0.5, 2.0, 4) if weighted else np.ones(4)
    kw = dict(
        eps=eps,
        tau_source=tau_s,
        tau_target=tau_t,
        source_weights=a if weighted else None,
        target_weights=b if weighted else None,
        method=method,
    )
    c64 = cost.astype(np.float64)
    try:
        out = uotsel.sinkhorn(cost, **kw)
    except ValueError as err:
        smallest = check_refusal(err, c64, eps, tau_s, tau_t, a, b)
        if smallest is not None:
            assert smallest > eps
            try:
                uotsel.sinkhorn(cost, **{**kw, "eps": smallest})
            except ValueError as again:
                assert not str(again).startswith("eps:"), str(again)
        return
    assert not bool(out.converged) or float(out.error) <= 1e-5
    ref = reference_uot(c64, eps, tau_s, tau_t, a, b)
    check_solution(out.log_row_sums, out.log_col_sums, out.error, ref, c64, eps)


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["cosine", "l2"]),
    exponent=st.floats(-45.0, 30.0),
    log_eps=st.floats(-8.0, 8.0),
    log_eps_c=st.floats(-3.0, 1.0),
    tau_s=taus,
    tau_t=taus,
)
@pytest.mark.slow
def test_select_matches_float64_or_names_the_argument(
    seed, kind, exponent, log_eps, log_eps_c, tau_s, tau_t
):
    source = features(seed, (6, 5), exponent)
    target = features(seed + 1, (4, 5), exponent)
    eps, eps_c = 10.0**log_eps, 10.0**log_eps_c
    if kind == "cosine" and not (np.any(source != 0, 1).all() and np.any(target != 0, 1).all()):
        with pytest.raises(ValueError, match=r"^(source|target): \d+ row\(s\) have zero norm"):
            uotsel.select(source, target, top_k=3, cost=kind, eps_c=eps_c, eps=eps)
        return
    c64 = cost64(kind, source, target, eps_c)
    kw = dict(cost=kind, eps_c=eps_c, eps=eps, tau_source=tau_s, tau_target=tau_t)
    try:
        sel = uotsel.select(source, target, top_k=3, **kw)
    except ValueError as err:
        check_refusal(err, c64, eps, tau_s, tau_t, np.ones(6), np.ones(4))
        return
    assert not np.any(np.isnan(sel.scores)) and not np.any(np.isnan(sel.log_scores))
    np.testing.assert_allclose(sel.scores, np.exp(sel.log_scores))
    ref = reference_uot(c64, eps, tau_s, tau_t, np.ones(6), np.ones(4))
    cost_error = float(np.max(cost_tolerance(kind, source, target, c64, eps_c)))
    error = sel.diagnostics["error"]
    check_solution(sel.log_scores, None, error, ref, c64, eps, cost_error)


@pytest.mark.slow
def test_tiny_eps_is_refused_with_the_smallest_that_works():
    rng = np.random.default_rng(3)
    source, target = rng.normal(size=(20, 8)), rng.normal(size=(5, 8))
    with pytest.raises(ValueError, match=r"^eps: 1e-12 is too small for this cost in float32"):
        uotsel.select(source, target, eps=1e-12, top_k=5)
    try:
        uotsel.select(source, target, eps=1e-12, top_k=5)
    except ValueError as err:
        smallest = float(re.search(r"about ([0-9.e+-]+)", str(err)).group(1))
    assert 1e-4 < smallest < 1e-3  # costs up to 2 / eps_c = 200, so about 200 x 2^-18
    sel = uotsel.select(source, target, eps=smallest, top_k=5)
    assert np.all(np.isfinite(sel.log_scores))
    with pytest.raises(ValueError, match=r"^eps: .* outside the range float32 supports"):
        uotsel.sinkhorn(np.ones((2, 2), np.float32), eps=1e-40)


@pytest.mark.slow
def test_balanced_problem_with_unequal_masses_is_explained_in_the_users_terms():
    source, target = np.eye(4)[:, :3] + 0.1, np.eye(3)
    with pytest.raises(
        ValueError,
        match=r"^tau_source, tau_target: both are inf, .* the source has 4 units of mass 1 and "
        r"the target has 3 units of mass 1; make one of them finite$",
    ):
        uotsel.select(source, target, top_k=2, tau_source=math.inf, tau_target=math.inf)
    with pytest.raises(ValueError, match=r"^tau_source, tau_target: both are at least 1.68e\+07"):
        uotsel.select(source, target, top_k=2, tau_source=1e9, tau_target=1e10)
    with pytest.raises(ValueError, match=r"weights sum to 4 and the target weights sum to 3;"):
        uotsel.sinkhorn(
            np.ones((4, 3), np.float32),
            tau_source=math.inf,
            tau_target=math.inf,
            source_weights=np.ones(4),
            target_weights=np.ones(3),
        )
    # Equal masses: a balanced problem, held exactly on both sides.
    out = uotsel.sinkhorn(np.ones((3, 3), np.float32), tau_source=1e9, tau_target=math.inf)
    np.testing.assert_allclose(np.asarray(out.row_sums), 1.0, rtol=1e-5)


def test_label_without_matching_names_matching_before_top_k():
    with pytest.raises(ValueError, match=r"^matching: the label strategy needs"):
        uotsel.select(np.ones((5, 2)), None, strategy="label")  # default top_k=100 > 5


@pytest.mark.slow
def test_subnormal_class_means_select_like_their_direction():
    rng = np.random.default_rng(4)
    target = rng.normal(size=(3, 6)).astype(np.float32)
    source = np.concatenate([target + 0.1 * rng.normal(size=(3, 6)), rng.normal(size=(9, 6))])
    source = source.astype(np.float32)
    ref = uotsel.select(source, target, top_k=3)
    tiny = (source.astype(np.float64) * 1e-39).astype(np.float32)  # subnormal rows
    got = uotsel.select(tiny, target, top_k=3)
    assert sorted(got.selected.tolist()) == sorted(ref.selected.tolist()) == [0, 1, 2]
    assert np.all(np.isfinite(got.log_scores))
