"""The first programs (``unbalanced._first_program``, ``feature_transport._transport_first``)
are compiled with ``unbalanced.FIRST_PROGRAM_OPTIONS``, which keeps XLA's CPU compiler from
splitting reductions into reduce-window chains. The options must take effect (fewer kernels to
compile) and change no output bit against the same program compiled with the defaults."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from uotsel import feature_transport, unbalanced

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


def _transport_args(rng, n, m, d, **settings):
    source = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    target = jnp.asarray(rng.normal(size=(m, d)), jnp.float32)
    prepared = unbalanced.prepare((), n, m, np.float32, **settings)
    return ("cosine", source, target, jnp.float32(0.01), n, prepared, False, None)


@pytest.mark.parametrize(
    "n, m, d, settings",
    [
        (2000, 200, 128, {}),
        (300, 37, 2048, {"tau_source": math.inf}),
        (1000, 100, 16, {"eps": 0.1, "tau_target": 0.5}),
        (64, 40, 4096, {"source_weights": np.linspace(0.5, 2.0, 64, dtype=np.float32)}),
    ],
)
def test_transport_first_program_equals_the_default_compilation(n, m, d, settings):
    args = _transport_args(np.random.default_rng(n + d), n, m, d, **settings)
    ours = feature_transport._transport_first(*args)
    theirs = _defaults(feature_transport._transport_first, _STATIC_TRANSPORT)(*args)
    _assert_same_bits(ours, theirs)


@pytest.mark.parametrize("lockstep", [False, True])
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
    ours = unbalanced._first_program(cost, settings, lockstep)
    theirs = _defaults(unbalanced._first_program, ("lockstep",))(cost, settings, lockstep)
    _assert_same_bits(ours, theirs)


def test_options_remove_the_reduce_window_kernels():
    args = _transport_args(np.random.default_rng(0), 2000, 200, 128)
    ours = feature_transport._transport_first.lower(*args).compile().as_text()
    theirs = _defaults(feature_transport._transport_first, _STATIC_TRANSPORT)
    assert "reduce-window" in theirs.lower(*args).compile().as_text()
    assert "reduce-window" not in ours
