"""Whether per-sample features are the ones a unit file's units were computed from.

Every unit a per-sample selection reads is the mean of its members' raw rows, computed in
float64 and stored as float32: a class mean (``uotsel centroids``, ``uotsel-train extract``, a
features + labels file) or the ``means`` of a ``uotsel kmeans`` file (the members of each
cluster under the file's final ``assignment``, :func:`uotsel.kmeans`). A k-means file's
``centroids`` carry no such guarantee, and are not what is selected from: spherical centroids
are unit vectors, and Euclidean ones are the means of the assignment *before* the last one,
which moves samples even when k-means stops on ``tol`` (``tests/test_member_means.py``). So
the rows whose unit id is ``k`` must average to unit ``k``'s feature; features of another
backbone or in another row order do not (a reordering inside each unit keeps every mean and
is not seen). Rows whose unit id is -1 (in no unit: images ``uotsel-train extract`` could not
read, whose rows are zeros and are not in any class mean) are left out.

The relative difference of unit ``k`` (``n_k`` rows ``x_i``, unit feature ``u_k``) is

    r_k = |mean_i x_i - u_k| / mean_i |x_i|        (Euclidean norms)

and it is refused above ``tol_k = TOLERANCE + (min(c, n_k) - 1 + min(J, n_k) - 1) * u``,
where ``c`` is the rows summed at a time, ``J`` the number of such chunks and ``u`` the unit
roundoff of the sums (``2^-24`` in float32):

- the unit file's float32 rounding moves ``u_k`` by at most ``2^-24 |u_k|``;
- the sums are made on the device in the features' float dtype: a chunk's sum of at most
  ``min(c, n_k)`` rows of a unit is off by at most ``(min(c, n_k) - 1) u`` times the sum of
  their absolute values (in any order of summation), and adding the chunk sums of the at most
  ``min(J, n_k)`` chunks holding the unit adds ``(min(J, n_k) - 1) u`` of it, so the mean is
  off by at most ``(min(c, n_k) - 1 + min(J, n_k) - 1) u mean_i |x_i|``: the second term of
  ``tol_k`` (at most ``2.6e-4`` for 1.28M rows in the default chunks of 4096);
- ``TOLERANCE = 2^-10`` (``9.8e-4``) is twice what storing the features at a lower precision
  than the units were computed at can cost: float16 rounds every value by at most ``2^-11`` of
  itself, which moves a mean by at most ``2^-11 mean_i |x_i|``; the other half covers unit
  files made by other tools that sum in float32.

A unit of other features moves by about the distance between units, tenths of the rows' norm
or more (``tests/test_member_means.py``: 0.7 to 1.3 for another planted backbone and for
shuffled rows).

- :class:`MemberSums`: per-unit sums of the rows, their norms and their counts while the
  features stream by chunks (:func:`uotsel.per_sample.select_samples` feeds it).
- :func:`relative_differences`, :func:`tolerances`: ``r_k`` and ``tol_k`` of every unit.
- :func:`check`: raise one line naming the worst unit.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _checks

__all__ = ["TOLERANCE", "MemberSums", "check", "relative_differences", "tolerances"]

# The share of the rows' mean norm a unit mean may differ by, besides the float32 sums' own
# error (module docstring): twice the most a float16 copy of the features moves it.
TOLERANCE = 2.0**-10


@functools.partial(jax.jit, static_argnames=("num_units",))
def unit_sums(rows: jax.Array, ids: jax.Array, num_units: int) -> tuple[jax.Array, jax.Array]:
    """``([K, D] sums, [K] sums of norms)`` of ``rows`` ``[c, D]`` by unit ``ids`` ``[c]``
    (int32; an id outside ``[0, K)``, as for padding rows, is left out), in the rows' dtype."""
    norms = jnp.sqrt(jnp.sum(rows * rows, axis=1))
    sums = jax.ops.segment_sum(rows, ids, num_segments=num_units)
    return sums, jax.ops.segment_sum(norms, ids, num_segments=num_units)


@functools.partial(jax.jit, static_argnames=("num_units",), donate_argnums=0)
def _add_sums(totals: tuple, rows: jax.Array, ids: jax.Array, num_units: int) -> tuple:
    """``totals`` (``[K, D]``, ``[K]``) plus :func:`unit_sums` of a chunk."""
    sums, norms = unit_sums(rows, ids, num_units)
    return totals[0] + sums, totals[1] + norms


class MemberSums:
    """Per-unit sums of per-sample features, fed chunk by chunk as they are scored.

    Args:
      unit_ids: ``[N]`` int unit id of every row, in ``[0, K)`` or -1 for a row in no unit,
        left out (checked by the caller).
      num_units: ``K``.
    """

    def __init__(self, unit_ids: np.ndarray, num_units: int):
        self.num_units = int(num_units)
        ids = np.asarray(unit_ids, np.int64)
        self.unit_ids = np.where(ids == _checks.NO_UNIT, self.num_units, ids)  # K: left out
        counts = np.bincount(self.unit_ids, minlength=self.num_units + 1)[:-1]
        self.counts = counts.astype(np.int64)
        self.rows = 1  # rows summed at a time, at most
        self.chunks = 0  # chunks added
        self.roundoff = 0.0  # unit roundoff of the device sums
        self._totals: tuple[Any, Any] | None = None  # on the device

    def ids(self, lo: int, hi: int, size: int) -> np.ndarray:
        """``[size]`` int32 unit ids of rows ``lo:hi``, padded with ``K`` (left out, as rows in
        no unit are)."""
        ids = np.full(size, self.num_units, np.int32)
        ids[: hi - lo] = self.unit_ids[lo:hi]
        return ids

    def add(self, rows: jax.Array, ids: jax.Array) -> None:
        """Add a chunk ``rows`` ``[c, D]`` (on the device) with its ``ids`` ``[c]`` (from
        :meth:`ids`, placed as the rows) to the totals, which stay on the device."""
        self.rows = max(self.rows, int(rows.shape[0]))
        self.chunks += 1
        self.roundoff = float(np.finfo(rows.dtype).eps) / 2
        if self._totals is None:
            self._totals = unit_sums(rows, ids, self.num_units)
        else:
            self._totals = _add_sums(self._totals, rows, ids, self.num_units)

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sums [K, D] float64, norms [K] float64, counts [K] int64)`` of every chunk
        added, on the host."""
        from uotsel.mesh import to_host

        if self._totals is None:
            raise ValueError("features: no rows were added")
        sums, norms = (np.asarray(to_host(x), np.float64) for x in self._totals)
        return sums, norms, self.counts

    def check(self, units: Any, name: str = "features") -> None:
        """:func:`check` of the totals against ``units`` ``[K, D]``."""
        sums, norms, counts = self.finish()
        check(sums, norms, counts, units, (self.rows, self.chunks, self.roundoff), name)


def relative_differences(
    sums: np.ndarray, norms: np.ndarray, counts: np.ndarray, units: Any
) -> np.ndarray:
    """``[K]`` float64 ``r_k = |sums_k / counts_k - units_k| / (norms_k / counts_k)``: how far
    the mean of unit ``k``'s rows is from its feature ``units`` ``[K, D]``, relative to their
    mean norm (``sums`` ``[K, D]``, ``norms`` ``[K]``: sums of the rows and of their norms,
    ``counts`` ``[K]``); NaN for a unit without rows, 0 for all-zero rows and feature, inf
    for all-zero rows and a non-zero feature."""
    counts = np.asarray(counts, np.float64)
    has = counts > 0
    size = np.where(has, counts, 1.0)
    gap = np.linalg.norm(sums / size[:, None] - np.asarray(units, np.float64), axis=1)
    scale = norms / size
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(scale > 0, gap / scale, np.where(gap > 0, np.inf, 0.0))
    return np.where(has, rel, np.nan)


def tolerances(counts: np.ndarray, rows: int, chunks: int, roundoff: float) -> np.ndarray:
    """``[K]`` float64 ``tol_k = TOLERANCE + (min(rows, n_k) - 1 + min(chunks, n_k) - 1) *
    roundoff``: the most ``r_k`` may reach for the features the units were computed from, when
    the ``n_k`` = ``counts`` ``[K]`` rows were summed ``rows`` at a time, in ``chunks`` chunks,
    with unit ``roundoff`` (module docstring)."""
    n = np.asarray(counts, np.int64)
    terms = np.maximum(np.minimum(n, rows) - 1, 0) + np.maximum(np.minimum(n, chunks) - 1, 0)
    return TOLERANCE + terms * roundoff


def check(
    sums: np.ndarray,
    norms: np.ndarray,
    counts: np.ndarray,
    units: Any,
    summed: tuple[int, int, float],
    name: str = "features",
) -> None:
    """Refuse features whose per-unit means are not the ``units`` ``[K, D]`` (``sums``,
    ``norms``, ``counts``: as :meth:`MemberSums.finish` gives them; ``summed``: ``(rows,
    chunks, roundoff)`` of :func:`tolerances`).

    Raises:
      ValueError: one line starting with ``name``, naming the unit farthest beyond its
        tolerance, its number of rows and its relative difference.
    """
    rel = relative_differences(sums, norms, counts, units)
    tol = tolerances(counts, *summed)
    with np.errstate(invalid="ignore"):
        excess = np.where(np.isnan(rel), -np.inf, rel / tol)
    worst = int(np.argmax(excess))
    if excess[worst] <= 1:
        return
    raise ValueError(
        f"{name}: the mean of unit {worst}'s {int(counts[worst])} rows differs from the "
        f"unit's feature by {rel[worst]:.3g} of their mean norm (tolerance {tol[worst]:.2g}): "
        "not the features the units were computed from (another backbone, or rows in "
        "another order?)"
    )
