"""Several iterations per test of a loop's condition (``uotsel._check_every``): the packed state
round-trips bit for bit, and masked iterations give the iterates of one trip per iteration."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uotsel import _check_every as check_every

_SPECIAL = [np.nan, np.inf, -np.inf, -0.0, 1e-45, -3e-39, 3.4e38]


def _bits(x) -> bytes:
    return np.asarray(x).tobytes()


@settings(max_examples=40, deadline=None)
@given(
    floats=st.lists(st.floats(width=32, allow_subnormal=True), min_size=3, max_size=3),
    ints=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=2, max_size=2),
    flag=st.booleans(),
)
def test_the_packed_state_round_trips_bit_for_bit(floats, ints, flag):
    leaves = [
        jnp.asarray(floats + _SPECIAL, jnp.float32),
        jnp.float32(floats[0]),
        jnp.int32(ints[0]),
        jnp.asarray(floats[:2], jnp.float32).reshape(2, 1),
        jnp.bool_(flag),
        jnp.int32(ints[1]),
    ]
    layout = check_every.Layout.of(leaves)
    packed = layout.pack(leaves)
    assert [x.shape for x in packed] == [(12,), (4,)]
    back = layout.unpack(packed)
    for old, new in zip(leaves, back, strict=True):
        assert new.dtype == old.dtype and new.shape == old.shape
        assert _bits(new) == _bits(old)


@settings(max_examples=20, deadline=None)
@given(
    ints=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=3, max_size=3),
    flags=st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_vectors_of_counters_and_flags_round_trip_among_floats(ints, flags):
    """A batch's state: its counters and flags are vectors too."""
    leaves = [
        jnp.asarray(_SPECIAL, jnp.float32),
        jnp.asarray(ints, jnp.int32),
        jnp.asarray(flags, jnp.bool_),
        jnp.int32(ints[0]),
    ]
    layout = check_every.Layout.of(leaves)
    packed = layout.pack(leaves)
    assert [(x.shape, x.dtype) for x in packed] == [((13,), jnp.float32), ((1,), jnp.int32)]
    for old, new in zip(leaves, layout.unpack(packed), strict=True):
        assert new.dtype == old.dtype and _bits(new) == _bits(old)


def test_float64_state_packs_its_scalars_in_int64():
    with jax.enable_x64(True):
        leaves = [jnp.asarray([np.nan, -0.0, 5e-324]), jnp.float64(-5e-324), jnp.int32(-7)]
        layout = check_every.Layout.of(leaves)
        packed = layout.pack(leaves)
        assert packed[1].dtype == jnp.int64
        for old, new in zip(leaves, layout.unpack(packed), strict=True):
            assert new.dtype == old.dtype and _bits(new) == _bits(old)


@pytest.mark.parametrize("count, unroll", [(1, 1), (2, 1), (3, 1), (8, 1), (8, 2), (3, 2)])
def test_masked_iterations_stop_where_the_loop_would(count, unroll):
    """A loop that doubles ``x`` and counts its trips while ``x < 100``: with several
    iterations per test it reaches the same state, one test every ``count`` iterations."""

    def iterate(state, live):
        x, trips = state
        return jnp.where(live, 2.0 * x, x), jnp.where(live, trips + 1, trips)

    def go(state):
        return state[0] < 100.0

    def body(state):
        state, tests = state
        return check_every.run(iterate, go, count, state, unroll), tests + 1

    (x, trips), tests = jax.jit(
        lambda s: jax.lax.while_loop(lambda s: go(s[0]), body, (s, jnp.int32(0)))
    )((jnp.float32(3.0), jnp.int32(0)))
    assert float(x) == 192.0 and int(trips) == 6
    assert int(tests) == -(-6 // count)
