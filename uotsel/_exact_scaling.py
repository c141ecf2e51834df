"""Exact scaling by powers of two, read from and written to a float's bits.

XLA on CPU flushes subnormal numbers to zero in arithmetic, so a row of subnormal features
looks like a row of zeros to every product; these helpers see and move such values exactly, by
integer arithmetic on the bits, and multiply only by normal powers of two (exact for every
result in the normal range). The costs use them to keep every finite input safe
(:mod:`uotsel.costs`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def int_type(dtype: Any) -> Any:
    return jnp.int64 if np.dtype(dtype).itemsize == 8 else jnp.int32


def pow2(e: Array, dtype: Any) -> Array:
    """Exactly ``2 ** e`` for integer ``e`` in the normal range of ``dtype``, from its bits."""
    info = np.finfo(dtype)
    itype = int_type(dtype)
    bits = (e.astype(itype) + (info.maxexp - 1)) << info.nmant
    return jax.lax.bitcast_convert_type(bits, dtype)


def times_pow2(x: Array, e: Array, steps: int = 2) -> Array:
    """``x * 2 ** e`` for ``|e| <= 64 * steps``, in ``steps`` exact multiplications (every
    factor a normal number)."""
    out = x
    for part in range(steps):
        out = out * pow2((e + part) // steps, x.dtype)
    return out


def exponent(top: Array) -> Array:
    """int32 ``e`` with ``top < 2 ** e`` for a normal, finite ``top``; 0 otherwise."""
    _, e = jnp.frexp(top)
    usable = jnp.isfinite(top) & (top >= np.finfo(top.dtype).tiny)
    return jnp.where(usable, e, 0).astype(jnp.int32)


def exact_rows(x: Array) -> Array:
    """``x`` ``[r, d]`` with every row scaled by a power of two so that its largest magnitude
    lies in ``[2^p, 2^(p+1))`` (``p`` the mantissa bits), read from the bits: exact for
    subnormal entries too. All-zero rows stay zero."""
    info = np.finfo(x.dtype)
    itype = int_type(x.dtype)
    bits = jax.lax.bitcast_convert_type(x, itype)
    magnitude = bits & jnp.asarray(np.iinfo(np.dtype(itype)).max, itype)
    field = magnitude >> info.nmant
    fraction = magnitude & ((1 << info.nmant) - 1)
    significand = jnp.where(field > 0, fraction | (1 << info.nmant), fraction)
    # value = significand * 2 ** (max(field, 1) - bias - nmant)
    power = jnp.where(significand > 0, jnp.maximum(field, 1), jnp.iinfo(itype).min // 2)
    shift = power - jnp.max(power, axis=1, keepdims=True)
    smallest = -(info.maxexp - 2)
    factor = jnp.where(shift >= smallest, pow2(jnp.maximum(shift, smallest), x.dtype), 0.0)
    value = significand.astype(x.dtype) * factor
    return jnp.where(bits < 0, -value, value)
