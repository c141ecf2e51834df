"""The first programs (``programs._first_program``, ``feature_transport._transport_first``)
are compiled with ``unbalanced.FIRST_PROGRAM_OPTIONS``, which keeps XLA's CPU compiler from
splitting long reductions into reduce-window chains. The options must take effect (fewer kernels
to compile) and leave the answers as they are: the solver's bit for bit; ``transport``'s to
float32 rounding, since some XLA versions also split the sums of the feature norms (over D > 32),
and then with the same error against a float64 solve."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uotsel import feature_transport, programs, unbalanced

pytestmark = pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="the options name a pass of the CPU compiler"
)

_STATIC_TRANSPORT = ("kind", "chunk_size", "wide", "mesh")


def _defaults(program, static):
    """The same function as ``program``, compiled with XLA's default options."""
    return jax.jit(program.__wrapped__, static_argnames=static)


def _assert_same_bits(ours, theirs):
    ours, theirs = jax.tree.leaves(ours), jax.tree.leaves(theirs)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), strict=True)


def _assert_same_answers(ours, theirs):
    """Flags and counts equal; floats equal to float32 rounding: a few ulps of the largest
    cosine cost, 2 / eps_c = 200 (ulp 1.5e-5), which the potentials inherit."""
    ours, theirs = jax.tree.leaves(ours), jax.tree.leaves(theirs)
    for a, b in zip(ours, theirs, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-4)
        else:
            np.testing.assert_array_equal(a, b, strict=True)


def _transport_args(rng, n, m, d, dtype=np.float32, **settings):
    source = jnp.asarray(rng.normal(size=(n, d)), dtype)
    target = jnp.asarray(rng.normal(size=(m, d)), dtype)
    prepared = unbalanced.prepare((), n, m, dtype, **settings)
    return ("cosine", source, target, jnp.asarray(0.01, dtype), n, prepared, False, None)


@pytest.mark.parametrize(
    "n, m, d, settings",
    [
        (2000, 200, 128, {}),
        (300, 37, 2048, {"tau_source": math.inf}),
        (1000, 100, 16, {"eps": 0.1, "tau_target": 0.5}),
        (64, 40, 4096, {"source_weights": np.linspace(0.5, 2.0, 64, dtype=np.float32)}),
    ],
)
@pytest.mark.slow
def test_transport_first_program_equals_the_default_compilation(n, m, d, settings):
    args = _transport_args(np.random.default_rng(n + d), n, m, d, **settings)
    ours = feature_transport._transport_first(*args)
    theirs = _defaults(feature_transport._transport_first, _STATIC_TRANSPORT)(*args)
    _assert_same_answers(ours, theirs)


@pytest.mark.parametrize("d", [128, 2048])
@pytest.mark.slow
def test_transport_first_program_as_accurate_as_the_default_compilation(d):
    """Largest error of ``P 1`` against a float64 solve to 1e-12: no larger with the options."""
    n, m = 400, 40
    rng = np.random.default_rng(d)
    args = _transport_args(rng, n, m, d)
    with jax.enable_x64(True):
        exact = _transport_args(np.random.default_rng(d), n, m, d, np.float64, threshold=1e-12)
        reference = np.asarray(feature_transport._transport_first(*exact)[0].log_row_sums)

    def error(program):
        log_rows = np.asarray(program(*args)[0].log_row_sums, np.float64)
        return np.max(np.abs(np.expm1(log_rows - reference)))

    ours = error(feature_transport._transport_first)
    theirs = error(_defaults(feature_transport._transport_first, _STATIC_TRANSPORT))
    assert ours < 3e-5 and ours <= 1.25 * theirs


@pytest.mark.parametrize("lockstep", [False, True])
@pytest.mark.slow
def test_solver_first_program_equals_the_default_compilation(lockstep):
    """A batch of three problems with masks, weights and one side held exactly."""
    rng = np.random.default_rng(3)
    cost = jnp.asarray(rng.uniform(0.0, 50.0, size=(3, 700, 90)), jnp.float32)
    mask = np.ones((3, 700), bool)
    mask[1, 650:] = False
    settings = unbalanced.prepare(
        (3,),
        700,
        90,
        np.float32,
        eps=np.array([1.0, 0.3, 4.0], np.float32),
        tau_target=np.array([100.0, math.inf, 2.0], np.float32),
        source_mask=mask,
        target_weights=rng.uniform(0.5, 1.5, size=(3, 90)).astype(np.float32),
    )
    ours = programs._first_program(cost, settings, lockstep)
    theirs = _defaults(programs._first_program, ("lockstep",))(cost, settings, lockstep)
    _assert_same_bits(ours, theirs)


@pytest.mark.slow
def test_options_remove_the_reduce_window_kernels():
    args = _transport_args(np.random.default_rng(0), 2000, 200, 128)
    ours = feature_transport._transport_first.lower(*args).compile().as_text()
    theirs = _defaults(feature_transport._transport_first, _STATIC_TRANSPORT)
    assert "reduce-window" in theirs.lower(*args).compile().as_text()
    assert "reduce-window" not in ours
