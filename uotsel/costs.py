"""Cost matrices between source units (rows) and target units (columns).

All costs are computed at the highest matmul precision: with the paper's ``eps_c = 0.01`` an
error of ``5e-4`` in a cosine (what a TF32/bf16 matmul pass can make on a GPU) is a 5% change
of the transport plan. Large problems can be computed in row chunks (``chunk_size``) so that
the temporaries stay ``[chunk_size, m]`` instead of ``[n, m]``-sized copies of the inputs.

Every finite input is safe, from subnormal numbers to the largest finite float:

- cosine: rows whose norm is far from 1 are first scaled by a power of two read from their bits
  (exact, and the only way to see subnormal entries: XLA on CPU flushes them to zero in
  arithmetic), then normalised; the cost lies in ``[0, 2 / eps_c]`` and ``eps_c`` must be a
  normal number, so it never overflows;
- ``l2``/``sqeuclidean``: the features are divided by a power of two near their largest
  magnitude (exact) before anything is squared, and the result is scaled back; only a distance
  that itself exceeds the float range is refused, naming ``source``.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _checks, paper
from uotsel import _exact_scaling as exact

__all__ = [
    "COSTS",
    "Cost",
    "CustomCost",
    "PairwiseCost",
    "check_eps_c",
    "check_kind",
    "cosine_cost",
    "cost_matrix",
    "custom_matrix",
    "l2_cost",
    "needs_wide",
    "pairwise",
    "prepare",
    "raise_if_flagged",
    "resolve",
    "sqeuclidean_cost",
]

Array = jax.Array
_HIGHEST = jax.lax.Precision.HIGHEST


class Cost(NamedTuple):
    """A cost between unit features, by family (hashable: a static argument of the programs).

    Attributes:
      name: how users and files call it.
      angular: True: ``(1 - cos(s, t)) / eps_c``, on directions only (rows of zeros have none
        and are refused; k-means on the unit sphere); False: ``|s - t| ** power``.
      power: the distance's power (1 or 2) when not ``angular``.
    """

    name: str
    angular: bool
    power: int = 1

    @property
    def uses_eps_c(self) -> bool:
        """Whether ``eps_c`` scales the cost."""
        return self.angular

    @property
    def spherical(self) -> bool:
        """Whether k-means for this cost works on the unit sphere."""
        return self.angular


class CustomCost(NamedTuple):
    """A user's cost: ``fn(source [n, d], target [m, d]) -> [n, m]``, traceable by JAX."""

    fn: Any
    name: str = "custom"


# The registry: a cost added here is known by its name everywhere (API, command line, files).
COSTS: dict[str, Cost] = {
    c.name: c
    for c in (
        Cost("cosine", angular=True),
        Cost("l2", angular=False, power=1),
        Cost("sqeuclidean", angular=False, power=2),
    )
}
# Row norms in [2^-40, 2^40] take the direct path (dot products scaled by the norms afterwards):
# neither the products nor their flushed-to-zero parts can then matter. Others are rescaled
# exactly first.
_DIRECT = 2.0**40


class PairwiseCost(NamedTuple):
    """Result of :func:`pairwise`.

    Attributes:
      cost: ``[n, m]`` costs in units of ``2 ** exponent``.
      exponent: int32 scalar; 0 unless :func:`pairwise` was asked to leave the scale out.
      valid: ``[3]`` bool, in one array so that checking them costs one transfer: every source
        row finite (and, for the cosine, not all zero); the same for the target rows; no
        ``l2``/``sqeuclidean`` cost can have overflowed to ``inf``, and for the cosine, every
        row norm within ``[2^-40, 2^40]`` unless ``wide`` (otherwise compute it again with
        ``wide=True``, see :func:`needs_wide`). A False entry in the first two is explained
        by :func:`raise_if_flagged`.
    """

    cost: Array
    exponent: Array
    valid: Array


def prepare(source: Any, target: Any):
    """Check shapes and put both feature matrices on the device in a common float dtype."""
    source, target, dtype = checked(source, target)
    return to_device(source, dtype), to_device(target, dtype)


def checked(source: Any, target: Any) -> tuple[Any, Any, Any]:
    """``(source, target, dtype)``: both feature matrices checked, where they are, and the
    common float dtype they are computed in."""
    source = _checks.as_float_array(source, "source", 2)
    target = _checks.as_float_array(target, "target", 2)
    _checks.check_nonempty(source, "source", 0, "units")
    _checks.check_nonempty(target, "target", 0, "units")
    if source.shape[1] != target.shape[1]:
        raise ValueError(
            f"target: feature dimension {target.shape[1]} does not match source's {source.shape[1]}"
        )
    if source.shape[1] == 0:
        raise ValueError("source: has no features (D = 0); source and target need D >= 1")
    dtype = jax.dtypes.canonicalize_dtype(np.result_type(source.dtype, target.dtype))
    return source, target, dtype


def check_eps_c(eps_c: Any, dtype: Any = np.float32) -> None:
    """``eps_c`` must be a positive, finite, normal number of ``dtype`` (so that
    ``2 / eps_c`` is finite). A Python number passes once per value and dtype."""
    if type(eps_c) in (float, int):
        _plain_eps_c_ok(type(eps_c), eps_c, np.dtype(dtype).str)
    else:
        _check_eps_c(eps_c, dtype)


@functools.lru_cache(maxsize=256)
def _plain_eps_c_ok(kind: type, eps_c: float | int, dtype: str) -> None:
    _check_eps_c(eps_c, np.dtype(dtype))


def _check_eps_c(eps_c: Any, dtype: Any) -> None:
    _checks.check_positive_scalar(eps_c, "eps_c")
    tiny = float(np.finfo(dtype).tiny)
    if _checks.is_concrete(eps_c) and np.any(np.asarray(eps_c, np.float64) < tiny):
        raise ValueError(
            f"eps_c: must be at least {tiny:.3g} (the smallest normal {np.dtype(dtype).name}), "
            f"got {float(np.min(eps_c)):.3g}"
        )


def to_device(x: Any, dtype: Any) -> Any:
    """Host arrays are copied once (``jax.device_put``); traced or device arrays are cast."""
    if isinstance(x, np.ndarray):
        return jax.device_put(np.asarray(x, dtype))
    return jnp.asarray(x, dtype)


def _row_norms(x: Array) -> tuple[Array, Array]:
    """Row norms ``[n]``, computed as max|x| * |x / max|x||| so that tiny or huge rows neither
    under- nor overflow when squared, and whether every row is finite and non-zero (False also
    for rows of subnormal numbers, which arithmetic sees as zero: the host check decides)."""
    top = jnp.max(jnp.abs(x), axis=1)
    safe_top = jnp.where(top > 0, top, 1.0)
    norms = top * jnp.sqrt(jnp.sum(jnp.square(x / safe_top[:, None]), axis=1))
    return norms, jnp.all(jnp.isfinite(norms) & (top > 0))


def _direct(norms: Array) -> Array:
    """Whether every norm lies in ``[2^-40, 2^40]``, where scaling after the product is exact."""
    return jnp.all((norms >= 1.0 / _DIRECT) & (norms <= _DIRECT))


def _cos_block(
    rows: Array, row_norms: Array, target: Array, target_norms: Array, wide: bool | None
) -> Array:
    """``1 - cos`` ``[r, m]``. Not ``wide`` (norms in ``[2^-40, 2^40]``): the dot products are
    scaled by the norms afterwards (no normalised copies of the inputs); ``wide``: both sides
    are first rescaled exactly (:func:`uotsel._exact_scaling.exact_rows`) and normalised;
    None: the first when the norms allow it, else the second."""

    def scale_after(rows, target):
        dots = jnp.matmul(rows, target.T, precision=_HIGHEST)
        return dots / row_norms[:, None] / target_norms[None, :]

    def rescale_first(rows, target):
        def unit(x):
            x = exact.exact_rows(x)
            norms = jnp.sqrt(jnp.sum(x * x, axis=1, keepdims=True))
            return x / jnp.where(norms > 0, norms, 1.0)

        return jnp.matmul(unit(rows), unit(target).T, precision=_HIGHEST)

    if wide is None:
        safe = _direct(row_norms) & _direct(target_norms)
        cos = jax.lax.cond(safe, scale_after, rescale_first, rows, target)
    else:
        cos = (rescale_first if wide else scale_after)(rows, target)
    return 1.0 - jnp.clip(cos, -1.0, 1.0)


def needs_wide(kind: Any, valid: Any) -> bool:
    """Whether a cosine cost computed without ``wide`` must be computed again with it: some
    row norm lies outside ``[2^-40, 2^40]`` or could not be computed (subnormal rows; invalid
    rows are then named by :func:`raise_if_flagged`). ``valid`` from :class:`PairwiseCost`."""
    if not check_kind(kind).angular or not _checks.is_concrete(valid):
        return False
    return not bool(np.all(np.asarray(valid)))


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


@functools.partial(jax.jit, static_argnames=("kind", "chunk_size", "rescale", "wide"))
def pairwise(
    kind: Any,
    source: Array,
    target: Array,
    eps_c: Array,
    chunk_size: int,
    rescale: bool = True,
    wide: bool | None = False,
) -> PairwiseCost:
    """The ``[n, m]`` cost of ``kind`` over row blocks of ``source``, with validity flags
    computed in the same pass: the compiled core of :func:`cost_matrix`.

    Traceable (call it inside your own ``jax.jit``); nothing is checked here: inputs come from
    :func:`prepare`, and the flags go to :func:`raise_if_flagged`.

    Args:
      kind: a :class:`Cost` or its name in :data:`COSTS`.
      source: ``[n, d]``; target: ``[m, d]`` (same float dtype).
      eps_c: cosine temperature (ignored by the other kinds), a traced scalar.
      chunk_size: source rows per block.
      rescale: ``l2``/``sqeuclidean`` only: False leaves the power-of-two scale of the features
        out (``PairwiseCost.exponent``), so that no cost can overflow.
      wide: cosine only: True rescales every row exactly before normalising it, which any
        finite non-zero row survives; False divides the dot products by the row norms
        afterwards (faster, and exact for norms in ``[2^-40, 2^40]``, which ``valid[2]``
        reports); None chooses between the two inside the program (both are compiled), for
        callers that cannot look at ``valid`` before going on.

    Returns:
      A :class:`PairwiseCost`.
    """
    n, d = source.shape
    dtype = source.dtype
    kind = check_kind(kind)
    if kind.angular:
        source_norms, source_ok = _row_norms(source)
        target_norms, target_ok = _row_norms(target)
        exponent = jnp.int32(0)
        in_range = _direct(source_norms) & _direct(target_norms)
        if wide is not False:
            in_range = jnp.bool_(True)

        def block(rows, norms):
            return _cos_block(rows, norms, target, target_norms, wide) / eps_c

        extra = source_norms
    else:
        source_ok = jnp.all(jnp.isfinite(source))
        target_ok = jnp.all(jnp.isfinite(target))
        top = jnp.maximum(jnp.max(jnp.abs(source)), jnp.max(jnp.abs(target)))
        e = exact.exponent(top)  # features / 2^e lie in (-1, 1): nothing below can overflow
        power = kind.power
        unit = power * e  # the cost of the scaled features is in units of 2^unit
        scaled_target = exact.times_pow2(target, -e)
        mean = jnp.mean(scaled_target, axis=0)
        # |s - t| < 2 sqrt(d) for the scaled features: the cost fits when this bound does.
        bound = math.ceil(math.log2(2.0 * math.sqrt(d)) * power)
        in_range = (unit + bound < np.finfo(dtype).maxexp) if rescale else jnp.bool_(True)
        exponent = jnp.int32(0) if rescale else unit

        def block(rows, _):
            d2 = _sq_block(exact.times_pow2(rows, -e), scaled_target, mean)
            c = jnp.sqrt(d2) if power == 1 else d2 if power == 2 else d2 ** (power / 2)
            return exact.times_pow2(c, unit, 2 * power) if rescale else c

        extra = jnp.zeros(n, dtype)
    if chunk_size >= n:
        cost = block(source, extra)
    else:
        pad = (-n) % chunk_size
        rows = jnp.pad(source, ((0, pad), (0, 0))).reshape(-1, chunk_size, d)
        chunks = jnp.pad(extra, (0, pad), constant_values=1).reshape(-1, chunk_size)
        out = jax.lax.map(lambda xs: block(*xs), (rows, chunks))
        cost = out.reshape(-1, out.shape[-1])[:n]
    return PairwiseCost(cost, exponent, jnp.stack([source_ok, target_ok, in_range]))


def _run(kind: Cost, source: Any, target: Any, eps_c: Any, chunk_size: int | None) -> Array:
    source, target = prepare(source, target)
    if kind.uses_eps_c:
        check_eps_c(eps_c, source.dtype)
    if chunk_size is None:
        chunk_size = source.shape[0]
    chunk_size = _checks.check_positive_int(chunk_size, "chunk_size")
    eps_c = jnp.asarray(eps_c, source.dtype)
    concrete = _checks.is_concrete(source) and _checks.is_concrete(target)
    result = pairwise(kind, source, target, eps_c, chunk_size, wide=False if concrete else None)
    if needs_wide(kind, result.valid):
        result = pairwise(kind, source, target, eps_c, chunk_size, wide=True)
    raise_if_flagged(result, source, target, kind)
    return result.cost


def raise_if_flagged(result: PairwiseCost, source: Any, target: Any, kind: Any) -> None:
    """Raise the one-line error for bad features or an overflowing cost. The checks ran inside
    the computation (the flags of ``result``); only a raised flag pays for looking at the
    inputs on the host."""
    if not _checks.is_concrete(result.valid) or bool(np.all(result.valid)):
        return
    kind = check_kind(kind)
    for x, name in ((source, "source"), (target, "target")):
        _checks.check_finite(x, name)
        if kind.angular:
            _checks.check_nonzero_rows(x, name)
    cost = result.cost
    if cost is not None and _checks.is_concrete(cost) and not bool(jnp.all(cost < jnp.inf)):
        top = max(float(jnp.max(jnp.abs(x))) for x in (source, target))
        raise ValueError(
            f"source: {kind.name} costs between source and target exceed the "
            f"{np.dtype(cost.dtype).name} range (features up to {top:.3g}); divide both "
            "by a common factor"
        )


def cosine_cost(
    source: Any, target: Any, eps_c: Any = paper.EPS_C, *, chunk_size: int | None = None
) -> Array:
    """Cosine cost ``C[j, i] = (1 - cos(source_j, target_i)) / eps_c``.

    Args:
      source: ``[n, d]`` source unit features (any scale, subnormal to huge; rows are
        normalised here).
      target: ``[m, d]`` target unit features.
      eps_c: temperature ``> 0`` (paper: ``0.01``), at least the smallest normal number of the
        dtype; traced, so changing it never recompiles.
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
    return _run(COSTS["cosine"], source, target, eps_c, chunk_size)


def sqeuclidean_cost(source: Any, target: Any, *, chunk_size: int | None = None) -> Array:
    """Squared Euclidean cost ``C[j, i] = |source_j - target_i|^2``.

    Args:
      source: ``[n, d]``; target: ``[m, d]``; chunk_size: as in :func:`cosine_cost`.

    Returns:
      ``[n, m]`` non-negative costs (squares below the smallest normal number are 0).

    Raises:
      ValueError: as :func:`cosine_cost`, and naming ``source`` when a squared distance
        exceeds the float range.
    """
    return _run(COSTS["sqeuclidean"], source, target, 1.0, chunk_size)


def l2_cost(source: Any, target: Any, *, chunk_size: int | None = None) -> Array:
    """Euclidean cost ``C[j, i] = |source_j - target_i|``.

    Args:
      source: ``[n, d]``; target: ``[m, d]``; chunk_size: as in :func:`cosine_cost`.

    Returns:
      ``[n, m]`` non-negative costs.

    Raises:
      ValueError: as :func:`sqeuclidean_cost`.
    """
    return _run(COSTS["l2"], source, target, 1.0, chunk_size)


def cost_matrix(
    source: Any,
    target: Any,
    kind: Any = paper.COST,
    *,
    eps_c: Any = paper.EPS_C,
    chunk_size: int | None = None,
) -> Array:
    """The ``[n, m]`` cost ``kind`` (see :func:`resolve`: a name in :data:`COSTS`, a
    :class:`Cost` or a function) between ``source`` ``[n, d]`` and ``target`` ``[m, d]``.

    ``eps_c`` only scales the cosine cost; ``l2`` and ``sqeuclidean`` are used as they are.

    Raises:
      ValueError: for an unknown ``kind`` (the message lists the valid ones) or bad inputs.
    """
    kind = resolve(kind, "kind")
    if isinstance(kind, CustomCost):
        return custom_matrix(kind, *prepare(source, target))
    return _run(kind, source, target, eps_c, chunk_size)


def custom_matrix(kind: CustomCost, source: Array, target: Array) -> Array:
    """The ``[n, m]`` cost of a user's function on prepared features, checked (shape, and
    finite values when concrete).

    Raises:
      ValueError: naming ``cost`` when the function's result is not an ``[n, m]`` array of
        finite numbers.
    """
    c = jnp.asarray(kind.fn(source, target))
    want = (source.shape[0], target.shape[0])
    if c.shape != want or not jnp.issubdtype(c.dtype, jnp.floating):
        raise ValueError(
            f"cost: {kind.name} returned a {c.dtype} array of shape {list(c.shape)}; expected "
            f"float [{want[0]}, {want[1]}]"
        )
    if _checks.is_concrete(c) and not bool(jnp.all(jnp.isfinite(c))):
        raise ValueError(f"cost: {kind.name} returned values that are not finite")
    return c.astype(source.dtype)


def resolve(kind: Any, name: str = "cost") -> Cost | CustomCost:
    """The cost ``kind`` stands for: a name in :data:`COSTS`, a :class:`Cost`, a
    :class:`CustomCost`, or a function ``(source, target) -> [n, m]`` (wrapped in a
    :class:`CustomCost`); ``name`` is the caller's argument.

    Raises:
      ValueError: for anything else (the message lists the valid names).
    """
    if isinstance(kind, (Cost, CustomCost)):
        return kind
    if isinstance(kind, str) and kind in COSTS:
        return COSTS[kind]
    if callable(kind) and not isinstance(kind, type):
        return CustomCost(kind, getattr(kind, "__name__", "custom"))
    raise ValueError(
        f"{name}: unknown cost {kind!r}; valid: {', '.join(COSTS)}, a uotsel.costs.Cost or a "
        "function (source, target) -> [n, m]"
    )


def check_kind(kind: Any, name: str = "cost") -> Cost:
    """The registered :class:`Cost` ``kind`` names (or is); ``name`` is the caller's argument.

    Raises:
      ValueError: for an unknown cost or a user's function (the message lists the valid ones).
    """
    cost = resolve(kind, name)
    if isinstance(cost, CustomCost):
        raise ValueError(f"{name}: a function is not accepted here; valid: {', '.join(COSTS)}")
    return cost
