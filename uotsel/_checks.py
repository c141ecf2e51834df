"""Argument checks shared by the public functions.

Every public entry point validates its arguments here, once, before anything is traced, so that
bad input raises a one-line ``ValueError``/``TypeError`` naming the argument instead of a NaN
result or an error deep inside ``jit``. Values that are JAX tracers (the caller wrapped us in
their own ``jit``) are checked for shape and dtype only.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values we can inspect (not a tracer)."""
    return not isinstance(x, jax.core.Tracer)


def as_float_array(x: Any, name: str, ndim: int | tuple[int, ...]) -> Any:
    """Return ``x`` as a floating array of the given rank, or raise naming ``name``."""
    if x is None:
        raise TypeError(f"{name}: expected an array, got None")
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        try:
            x = np.asarray(x)
        except Exception as err:
            raise TypeError(f"{name}: expected an array, got {type(x).__name__}") from err
    ndims = (ndim,) if isinstance(ndim, int) else ndim
    if x.ndim not in ndims:
        want = " or ".join(str(d) for d in ndims)
        raise ValueError(f"{name}: expected a {want}-d array, got shape {tuple(x.shape)}")
    kind = np.dtype(x.dtype).kind
    if kind not in "fiub":
        raise TypeError(f"{name}: expected a numeric array, got dtype {x.dtype}")
    if kind != "f":
        x = x.astype(np.float32) if isinstance(x, np.ndarray) else x.astype("float32")
    return x


def check_finite(x: Any, name: str) -> None:
    """Raise if a concrete array holds NaN or inf."""
    if is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(np.asarray(x))))
        raise ValueError(f"{name}: contains {bad} NaN or infinite value(s)")


def check_nonempty(x: Any, name: str, axis: int = 0, what: str = "rows") -> None:
    if x.shape[axis] == 0:
        raise ValueError(f"{name}: is empty (0 {what})")


def check_positive_scalar(value: Any, name: str, allow_inf: bool = False) -> None:
    """Raise unless ``value`` (scalar or array) is > 0 (and finite unless ``allow_inf``)."""
    if not is_concrete(value):
        return
    if isinstance(value, bool | np.bool_) or getattr(value, "dtype", None) == np.bool_:
        raise TypeError(f"{name}: expected a positive number, got a bool ({value!r})")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except OverflowError:
        raise ValueError(f"{name}: holds an integer beyond the float range") from None
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected a positive number, got {value!r}") from err
    if arr.dtype.kind not in "fiu" or np.isnan(arr).any():
        raise ValueError(f"{name}: must be a positive number, got {value!r}")
    if (arr <= 0).any():
        raise ValueError(f"{name}: must be > 0, got {_show(value)}")
    if not allow_inf and np.isinf(arr).any():
        raise ValueError(f"{name}: must be finite, got {_show(value)}")


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return int(value)


def check_nonzero_rows(x: Any, name: str) -> None:
    """Raise if a concrete ``[n, d]`` array has an all-zero row (cosine is undefined)."""
    if not is_concrete(x):
        return
    zero = np.flatnonzero(~np.any(np.asarray(x) != 0, axis=-1).reshape(-1))
    if zero.size:
        raise ValueError(
            f"{name}: {zero.size} row(s) have zero norm (first: {int(zero[0])}); "
            "the cosine cost is undefined for them"
        )


def _show(value: Any) -> str:
    arr = np.asarray(value)
    if arr.ndim == 0:
        v = float(arr)
        return "inf" if math.isinf(v) else repr(v)
    return f"an array with min {float(arr.min())!r}"


def whole_numbers(values: Any, name: str) -> np.ndarray:
    """``values`` as an int64 array of whole numbers, or raise naming ``name``.

    Integer arrays pass; float arrays pass when every value is finite and whole (a fractional
    value is refused, never truncated); booleans, strings and objects are refused.
    """
    arr = np.asarray(values)
    kind = arr.dtype.kind
    if kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name}: {int(arr.max())} is too large (at most 2**63 - 1)")
    if kind in "iu":
        return arr.astype(np.int64, copy=False)
    if kind != "f":
        raise TypeError(f"{name}: expected whole numbers, got dtype {arr.dtype}")
    if not arr.size:
        return arr.astype(np.int64)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{name}: {arr[bad].ravel()[0].item()!r} is not a whole number")
    fractional = arr != np.floor(arr)
    if fractional.any():
        raise ValueError(f"{name}: {arr[fractional].ravel()[0].item()!r} is not a whole number")
    if np.abs(arr).max() >= 2.0**63:
        raise ValueError(f"{name}: {np.abs(arr).max():.0f} is too large (at most 2**63 - 1)")
    return arr.astype(np.int64)


# The unit id of a sample in no unit: an image that could not be read when the units were
# computed (``uotsel-train extract``). Such a sample counts in no unit, is expanded into no
# selection, is left out of the member-means check and is never scored or chosen.
NO_UNIT = -1


def unit_ids(values: Any, name: str, num_units: int | None = None) -> np.ndarray:
    """``values`` as ``[N]`` int64 per-sample unit ids, each in ``[0, K)`` (``K`` =
    ``num_units``, when given) or :data:`NO_UNIT` (``-1``, a sample in no unit).

    Raises:
      ValueError: one line starting with ``name``: not a 1-d integer array, or an id below
        ``-1`` or at least ``K``.
    """
    ids = np.asarray(values)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"{name}: expected a 1-d array of integer unit ids, one per sample")
    if not ids.size:
        return ids.astype(np.int64)
    low, high = int(ids.min()), int(ids.max())
    if low < NO_UNIT or (num_units is not None and high >= num_units):
        span = "0 or more" if num_units is None else f"in [0, {num_units})"
        raise ValueError(
            f"{name}: ids must be {span}, or {NO_UNIT} (no unit); got range [{low}, {high}]"
        )
    return ids.astype(np.int64, copy=False)


def check_rows(
    x: Any,
    name: str,
    *,
    chunk_size: int = 65536,
    nonzero: bool = False,
    float32: bool = True,
    progress: Any = None,
) -> np.ndarray:
    """Scan a concrete ``[n, d]`` array (a ``np.memmap`` too) ``chunk_size`` rows at a time.

    Raises naming ``name`` and the first bad row when a row holds NaN or inf, a value beyond
    float32's range (``float32``), or only zeros (``nonzero``). ``progress``, when given, is
    called with the number of rows checked after every chunk.

    Returns:
      ``[Z]`` int64 ascending indices of the rows that hold only zeros.
    """
    limit = float(np.finfo(np.float32).max)
    zeros = []
    for lo in range(0, x.shape[0], chunk_size):
        block = np.asarray(x[lo : lo + chunk_size])
        if block.dtype.kind == "b":
            block = block.astype(np.uint8)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            row = lo + int(np.flatnonzero(~finite)[0])
            raise ValueError(f"{name}: row {row} contains NaN or inf")
        top = np.abs(block).max(axis=1) if block.shape[1] else np.zeros(block.shape[0])
        if float32 and block.dtype.kind in "fiu" and block.size and top.max() > limit:
            row = lo + int(np.flatnonzero(top > limit)[0])
            raise ValueError(f"{name}: row {row} holds a value beyond float32's range")
        zero = lo + np.flatnonzero(top == 0)
        if nonzero and zero.size:
            raise ValueError(f"{name}: row {zero[0]} is all zeros")
        zeros.append(zero)
        if progress is not None:
            progress(block.shape[0])
    return np.concatenate(zeros).astype(np.int64) if zeros else np.zeros(0, np.int64)


def is_ott_object(x: Any) -> bool:
    """True when ``x`` is an instance of a class defined in ott-jax (or of a subclass of one),
    decided from the class's module names, so ``ott`` is never imported here."""
    return any(c.__module__ == "ott" or c.__module__.startswith("ott.") for c in type(x).__mro__)
