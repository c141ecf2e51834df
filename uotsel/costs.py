"""Cost matrices between source units (rows) and target units (columns).

All costs are computed at the highest matmul precision: with the paper's ``eps_c = 0.01`` an
error of ``5e-4`` in a cosine (what a TF32/bf16 matmul pass can make on a GPU) is a 5% change
of the transport plan. Large problems can be computed in row chunks (``chunk_size``) so that
the temporaries stay ``[chunk_size, m]`` instead of ``[n, m]``-sized copies of the inputs.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _checks

__all__ = ["COSTS", "cosine_cost", "cost_matrix", "l2_cost", "sqeuclidean_cost"]

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


def _prepare(source: Any, target: Any, cosine: bool):
    source = _checks.as_float_array(source, "source", 2)
    target = _checks.as_float_array(target, "target", 2)
    _checks.check_nonempty(source, "source", 0, "units")
    _checks.check_nonempty(target, "target", 0, "units")
    if source.shape[1] != target.shape[1]:
        raise ValueError(
            f"target: feature dimension {target.shape[1]} does not match source's {source.shape[1]}"
        )
    _checks.check_finite(source, "source")
    _checks.check_finite(target, "target")
    if cosine:
        _checks.check_nonzero_rows(source, "source")
        _checks.check_nonzero_rows(target, "target")
    dtype = jax.dtypes.canonicalize_dtype(np.result_type(source.dtype, target.dtype))
    return jnp.asarray(source, dtype), jnp.asarray(target, dtype)


@functools.partial(jax.jit, static_argnames=("block", "chunk_size"))
def _blockwise(block, source: Array, target: Array, scale: Array, chunk_size: int) -> Array:
    """``block(rows, target) / scale`` over row blocks of ``source``, stacked to ``[n, m]``."""
    n = source.shape[0]
    if chunk_size >= n:
        return block(source, target) / scale
    pad = (-n) % chunk_size
    blocks = jnp.pad(source, ((0, pad), (0, 0))).reshape(-1, chunk_size, source.shape[1])
    out = jax.lax.map(lambda rows: block(rows, target) / scale, blocks)
    return out.reshape(-1, out.shape[-1])[:n]


def _unit_rows(x: Array) -> Array:
    # Scale by the largest entry first so that tiny (or huge) rows do not under- or overflow
    # when squared.
    x = x / jnp.max(jnp.abs(x), axis=1, keepdims=True)
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


def _cos_block(s: Array, t: Array) -> Array:
    s, t = _unit_rows(s), _unit_rows(t)
    return 1.0 - jnp.clip(jnp.matmul(s, t.T, precision=_HIGHEST), -1.0, 1.0)


def _sq_block(s: Array, t: Array) -> Array:
    # Centre on the target mean first: the expansion |s|^2 + |t|^2 - 2 s.t loses digits when
    # the points are far from the origin relative to their spread.
    mu = jnp.mean(t, axis=0)
    s, t = s - mu, t - mu
    d2 = (
        jnp.sum(s * s, axis=1)[:, None]
        + jnp.sum(t * t, axis=1)[None, :]
        - 2.0 * jnp.matmul(s, t.T, precision=_HIGHEST)
    )
    return jnp.maximum(d2, 0.0)


def _run(block, source, target, scale, chunk_size) -> Array:
    if chunk_size is None:
        chunk_size = source.shape[0]
    chunk_size = _checks.check_positive_int(chunk_size, "chunk_size")
    return _blockwise(block, source, target, jnp.asarray(scale, source.dtype), chunk_size)


def cosine_cost(
    source: Any, target: Any, eps_c: Any = 0.01, *, chunk_size: int | None = None
) -> Array:
    """Cosine cost ``C[j, i] = (1 - cos(source_j, target_i)) / eps_c``.

    Args:
      source: ``[n, d]`` source unit features (any scale; rows are normalised here).
      target: ``[m, d]`` target unit features.
      eps_c: temperature ``> 0`` (paper: ``0.01``); traced, so changing it never recompiles.
      chunk_size: compute ``chunk_size`` source rows at a time (``None``: all at once).

    Returns:
      ``[n, m]`` costs in ``[0, 2 / eps_c]``, in the inputs' float dtype.

    Raises:
      ValueError: on empty, non-finite or zero-norm rows, or mismatched dimensions.

    Example:
      >>> import numpy as np, uotsel
      >>> source = np.array([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]])
      >>> c = uotsel.cosine_cost(source, np.array([[1.0, 0.0]]), eps_c=0.5)
      >>> np.asarray(c).round(3).tolist()
      [[0.0], [2.0], [4.0]]
    """
    _checks.check_positive_scalar(eps_c, "eps_c")
    source, target = _prepare(source, target, cosine=True)
    return _run(_cos_block, source, target, eps_c, chunk_size)


def sqeuclidean_cost(source: Any, target: Any, *, chunk_size: int | None = None) -> Array:
    """Squared Euclidean cost ``C[j, i] = |source_j - target_i|^2``.

    Args:
      source: ``[n, d]``; target: ``[m, d]``; chunk_size: as in :func:`cosine_cost`.

    Returns:
      ``[n, m]`` non-negative costs.
    """
    source, target = _prepare(source, target, cosine=False)
    return _run(_sq_block, source, target, 1.0, chunk_size)


def l2_cost(source: Any, target: Any, *, chunk_size: int | None = None) -> Array:
    """Euclidean cost ``C[j, i] = |source_j - target_i|``.

    Args:
      source: ``[n, d]``; target: ``[m, d]``; chunk_size: as in :func:`cosine_cost`.

    Returns:
      ``[n, m]`` non-negative costs.
    """
    return jnp.sqrt(sqeuclidean_cost(source, target, chunk_size=chunk_size))


COSTS = ("cosine", "l2", "sqeuclidean")


def cost_matrix(
    source: Any,
    target: Any,
    kind: str = "cosine",
    *,
    eps_c: Any = 0.01,
    chunk_size: int | None = None,
) -> Array:
    """The ``[n, m]`` cost of the given ``kind`` (one of :data:`COSTS`).

    ``eps_c`` only scales the cosine cost; ``l2`` and ``sqeuclidean`` are used as they are.

    Raises:
      ValueError: for an unknown ``kind`` (the message lists the valid ones) or bad inputs.
    """
    if kind == "cosine":
        return cosine_cost(source, target, eps_c, chunk_size=chunk_size)
    if kind == "l2":
        return l2_cost(source, target, chunk_size=chunk_size)
    if kind == "sqeuclidean":
        return sqeuclidean_cost(source, target, chunk_size=chunk_size)
    raise ValueError(f"cost: unknown cost {kind!r}; valid: {', '.join(COSTS)}")
