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


def prepare(source: Any, target: Any):
    """Check shapes and put both feature matrices on the device in a common float dtype."""
    source = _checks.as_float_array(source, "source", 2)
    target = _checks.as_float_array(target, "target", 2)
    _checks.check_nonempty(source, "source", 0, "units")
    _checks.check_nonempty(target, "target", 0, "units")
    if source.shape[1] != target.shape[1]:
        raise ValueError(
            f"target: feature dimension {target.shape[1]} does not match source's {source.shape[1]}"
        )
    dtype = jax.dtypes.canonicalize_dtype(np.result_type(source.dtype, target.dtype))
    return _to_device(source, dtype), _to_device(target, dtype)


def _to_device(x: Any, dtype: Any) -> Any:
    """Host arrays are copied once (``jax.device_put``); traced or device arrays are cast."""
    if isinstance(x, np.ndarray):
        return jax.device_put(np.asarray(x, dtype))
    return jnp.asarray(x, dtype)


def _row_norms(x: Array) -> tuple[Array, Array]:
    """Row norms ``[n]``, computed as max|x| * |x / max|x||| so that tiny or huge rows neither
    under- nor overflow when squared, and whether every row is finite and non-zero."""
    top = jnp.max(jnp.abs(x), axis=1)
    safe_top = jnp.where(top > 0, top, 1.0)
    norms = top * jnp.sqrt(jnp.sum(jnp.square(x / safe_top[:, None]), axis=1))
    return norms, jnp.all(jnp.isfinite(norms) & (top > 0))


def _cos_block(rows: Array, row_norms: Array, target: Array, target_norms: Array) -> Array:
    """``1 - cos`` ``[r, m]``; the dot products are scaled by the norms afterwards (no
    normalised copies of the inputs), unless a norm is so extreme that they could overflow."""
    lo, hi = 1e-18, 1e18
    safe = jnp.all((row_norms > lo) & (row_norms < hi)) & jnp.all(
        (target_norms > lo) & (target_norms < hi)
    )

    def scale_after(rows, target):
        dots = jnp.matmul(rows, target.T, precision=_HIGHEST)
        return dots / row_norms[:, None] / target_norms[None, :]

    def scale_before(rows, target):
        return jnp.matmul(
            rows / row_norms[:, None], (target / target_norms[:, None]).T, precision=_HIGHEST
        )

    cos = jax.lax.cond(safe, scale_after, scale_before, rows, target)
    return 1.0 - jnp.clip(cos, -1.0, 1.0)


def _sq_block(rows: Array, target: Array, mean: Array) -> Array:
    # Centred on the target mean: the expansion |s|^2 + |t|^2 - 2 s.t loses digits when the
    # points are far from the origin relative to their spread.
    s, t = rows - mean, target - mean
    d2 = (
        jnp.sum(s * s, axis=1)[:, None]
        + jnp.sum(t * t, axis=1)[None, :]
        - 2.0 * jnp.matmul(s, t.T, precision=_HIGHEST)
    )
    return jnp.maximum(d2, 0.0)


@functools.partial(jax.jit, static_argnames=("kind", "chunk_size"))
def _pairwise(kind: str, source: Array, target: Array, scale: Array, chunk_size: int):
    """The ``[n, m]`` cost of ``kind`` over row blocks of ``source``, and a validity flag per
    input (finite, and for the cosine no all-zero row), computed in the same pass."""
    n = source.shape[0]
    if kind == "cosine":
        source_norms, source_ok = _row_norms(source)
        target_norms, target_ok = _row_norms(target)

        def block(rows, norms):
            return _cos_block(rows, norms, target, target_norms) / scale

        extra = source_norms
    else:
        source_ok = jnp.all(jnp.isfinite(source))
        target_ok = jnp.all(jnp.isfinite(target))
        mean = jnp.mean(target, axis=0)

        def block(rows, _):
            d2 = _sq_block(rows, target, mean)
            return jnp.sqrt(d2) if kind == "l2" else d2

        extra = jnp.zeros(n, source.dtype)
    flags = jnp.stack([source_ok, target_ok])
    if chunk_size >= n:
        return block(source, extra), flags
    pad = (-n) % chunk_size
    rows = jnp.pad(source, ((0, pad), (0, 0))).reshape(-1, chunk_size, source.shape[1])
    extra = jnp.pad(extra, (0, pad), constant_values=1).reshape(-1, chunk_size)
    out = jax.lax.map(lambda xs: block(*xs), (rows, extra))
    return out.reshape(-1, out.shape[-1])[:n], flags


def _run(kind: str, source: Any, target: Any, scale: Any, chunk_size: int | None) -> Array:
    source, target = prepare(source, target)
    if chunk_size is None:
        chunk_size = source.shape[0]
    chunk_size = _checks.check_positive_int(chunk_size, "chunk_size")
    cost, flags = _pairwise(kind, source, target, jnp.asarray(scale, source.dtype), chunk_size)
    raise_if_flagged(flags, source, target, kind)
    return cost


def raise_if_flagged(flags: Any, source: Any, target: Any, kind: str) -> None:
    """The checks ran inside the computation (``flags`` from ``_pairwise``); only a failure
    pays for the detailed one-line message."""
    if _checks.is_concrete(flags) and not bool(np.all(flags)):
        for x, name in ((source, "source"), (target, "target")):
            _checks.check_finite(x, name)
            if kind == "cosine":
                _checks.check_nonzero_rows(x, name)


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
    return _run("cosine", source, target, eps_c, chunk_size)


def sqeuclidean_cost(source: Any, target: Any, *, chunk_size: int | None = None) -> Array:
    """Squared Euclidean cost ``C[j, i] = |source_j - target_i|^2``.

    Args:
      source: ``[n, d]``; target: ``[m, d]``; chunk_size: as in :func:`cosine_cost`.

    Returns:
      ``[n, m]`` non-negative costs.
    """
    return _run("sqeuclidean", source, target, 1.0, chunk_size)


def l2_cost(source: Any, target: Any, *, chunk_size: int | None = None) -> Array:
    """Euclidean cost ``C[j, i] = |source_j - target_i|``.

    Args:
      source: ``[n, d]``; target: ``[m, d]``; chunk_size: as in :func:`cosine_cost`.

    Returns:
      ``[n, m]`` non-negative costs.
    """
    return _run("l2", source, target, 1.0, chunk_size)


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
