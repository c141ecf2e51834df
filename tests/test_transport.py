import math

import numpy as np
import pytest

import uotsel
from uotsel import feature_transport as transport_module


@pytest.mark.parametrize("cost", uotsel.COSTS)
@pytest.mark.slow
def test_transport_equals_cost_then_sinkhorn(rng, cost):
    source = rng.normal(size=(120, 16)).astype(np.float32)
    target = rng.normal(size=(9, 16)).astype(np.float32)
    settings = dict(eps=0.5, tau_source=2.0, tau_target=math.inf)
    fused = uotsel.transport(source, target, cost=cost, eps_c=0.05, **settings)
    c = uotsel.cost_matrix(source, target, cost, eps_c=0.05)
    split = uotsel.sinkhorn(c, **settings)
    assert int(fused.n_iters) == int(split.n_iters)
    np.testing.assert_allclose(fused.log_row_sums, split.log_row_sums, atol=2e-5)
    np.testing.assert_allclose(fused.log_col_sums, split.log_col_sums, atol=2e-5)


@pytest.mark.slow
def test_transport_does_not_recompile_for_settings(rng):
    source = rng.normal(size=(40, 5)).astype(np.float32)
    target = rng.normal(size=(7, 5)).astype(np.float32)
    programs = [
        getattr(transport_module, name)
        for name in ("_transport_one", "_transport_first", "_transport_rest")
    ]
    uotsel.transport(source, target)
    uotsel.transport(source, target, method="log")
    before = [program._cache_size() for program in programs]
    assert before[:2] != [0, 0]
    for eps_c, tau in ((0.02, 10.0), (0.5, math.inf), (0.003, 0.5)):
        for method in ("auto", "log"):
            uotsel.transport(
                source, target, eps_c=eps_c, tau_target=tau, eps=2.0, threshold=1e-4, method=method
            )
    assert [program._cache_size() for program in programs] == before


@pytest.mark.slow
def test_transport_hands_over_like_sinkhorn():
    """Costs the absorbed kernel cannot carry (see test_unbalanced): the second program runs
    and gives the answer of the one-program solve."""
    source = np.array([[0.0]] * 5 + [[300.0]] * 5, np.float32)
    target = np.array([[0.0], [200.0]], np.float32)
    before = transport_module._transport_rest._cache_size()
    fused = uotsel.transport(source, target, cost="l2", tau_target=0.05)
    assert transport_module._transport_rest._cache_size() == before + 1
    logs = uotsel.transport(source, target, cost="l2", tau_target=0.05, method="log")
    assert bool(fused.converged)
    np.testing.assert_allclose(fused.log_row_sums, logs.log_row_sums, atol=2e-5)
    np.testing.assert_allclose(fused.log_col_sums, logs.log_col_sums, atol=2e-5)


@pytest.mark.parametrize(
    "source, target, kwargs, match",
    [
        pytest.param(
            np.zeros((3, 2)),
            np.ones((2, 2)),
            {},
            "source: 3 row.s. have zero norm",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            np.ones((3, 2)),
            np.array([[np.inf, 1.0]]),
            {},
            "target: contains 1 NaN or inf",
            marks=pytest.mark.slow,
        ),
        (np.ones((3, 2)), np.ones((2, 3)), {}, "target: feature dimension 3"),
        (np.ones((3, 2)), np.ones((2, 2)), {"cost": "cos"}, "cost: unknown cost 'cos'"),
        (np.ones((3, 2)), np.ones((2, 2)), {"eps_c": 0}, "eps_c: must be > 0"),
        (np.ones((3, 2)), np.ones((2, 2)), {"tau_source": -1}, "tau_source: must be > 0"),
    ],
)
def test_transport_bad_inputs(source, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        uotsel.transport(source, target, **kwargs)
