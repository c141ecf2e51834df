"""A budget in images: whole units taken best first while they fit.

A unit's size is its number of images (samples): the ``counts`` of a unit file, or the number
of samples whose unit id (``labels``, a k-means ``assignment``) names it (:func:`unit_sizes`).
A budget of ``B`` images takes the units of a ranking in order and stops at the first one that
does not fit, so the units taken are always a prefix of the ranking (:func:`fit_budget`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from uotsel import _checks

__all__ = ["MAX_TOTAL_IMAGES", "check_budget", "fit_budget", "unit_sizes"]

# The most images all units together may hold: their running sums stay exact in int64.
MAX_TOTAL_IMAGES = 2**62


def unit_sizes(num_units: int, *, counts: Any = None, unit_ids: Any = None) -> np.ndarray:
    """Images per unit, ``[K]`` int64: ``counts`` as given, else counted from ``unit_ids``.

    Args:
      num_units: ``K``, the number of units.
      counts: optional ``[K]`` non-negative whole numbers, the images of each unit.
      unit_ids: optional ``[N]`` unit id of every sample, in ``[0, K)``, or -1 for a sample in
        no unit (an unreadable image), which counts in none.

    Returns:
      ``[K]`` int64 sizes. With both arguments, they must agree.

    Raises:
      ValueError: starting with ``unit_sizes`` (neither given, a bad shape or value, sizes
        that disagree with ``unit_ids``, or more than :data:`MAX_TOTAL_IMAGES` in all) or
        ``unit_ids`` (ids outside ``[0, K)`` other than -1).

    Example:
      >>> unit_sizes(3, unit_ids=[0, 2, 2, 0, -1, 2]).tolist()
      [2, 0, 3]
    """
    if counts is None and unit_ids is None:
        raise ValueError("unit_sizes: needs the counts of the units or the unit id of every sample")
    counted = None if unit_ids is None else _count(num_units, unit_ids)
    if counts is None:
        return _check_sizes(counted, "unit_sizes")
    sizes = _checks.whole_numbers(counts, "unit_sizes")
    if sizes.shape != (num_units,):
        raise ValueError(f"unit_sizes: expected {num_units} counts, got shape {sizes.shape}")
    sizes = _check_sizes(sizes, "unit_sizes")
    if counted is not None and not np.array_equal(sizes, counted):
        unit = int(np.flatnonzero(sizes != counted)[0])
        raise ValueError(
            f"unit_sizes: unit {unit} has {int(sizes[unit])} images by its count but "
            f"{int(counted[unit])} samples by the per-sample unit ids"
        )
    return sizes


def _count(num_units: int, unit_ids: Any) -> np.ndarray:
    """``[K]`` int64 samples of every unit; a sample in no unit (id -1) counts in none."""
    ids = _checks.unit_ids(unit_ids, "unit_ids", num_units)
    return np.bincount(ids[ids != _checks.NO_UNIT], minlength=num_units).astype(np.int64)


def _check_sizes(sizes: Any, name: str) -> np.ndarray:
    """``sizes`` as ``[K]`` int64: integers ``>= 0``, at most :data:`MAX_TOTAL_IMAGES` in all."""
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or (sizes.size and sizes.dtype.kind not in "iu"):
        raise ValueError(f"{name}: expected a 1-d array of integer image counts, got {sizes.dtype}")
    if sizes.size and sizes.min() < 0:
        raise ValueError(f"{name}: counts must be >= 0, got {int(sizes.min())}")
    if float(sizes.sum(dtype=np.float64)) > MAX_TOTAL_IMAGES:
        raise ValueError(f"{name}: more than 2**62 images in all ({sizes.sum(dtype=float):.3g})")
    return sizes.astype(np.int64)


def fit_budget(ranking: Any, sizes: Any, budget_images: int) -> int:
    """How many units of ``ranking`` a budget of ``budget_images`` images takes: whole units,
    best first, stopping at the first unit that does not fit.

    Args:
      ranking: ``[R]`` unit ids, best first (all ``K`` units, or the candidates among them).
      sizes: ``[K]`` non-negative images per unit, indexed by unit id (:func:`unit_sizes`).
      budget_images: the most images to take, an integer from the size of the best unit
        (``sizes[ranking[0]]``) to the images of all ``R`` units.

    Returns:
      ``n``: ``ranking[:n]`` are taken. Their sizes sum to at most ``budget_images`` and, when
      ``n < R``, adding ``sizes[ranking[n]]`` would exceed it; units of size 0 always fit.

    Raises:
      TypeError: ``budget_images`` is not an integer.
      ValueError: starting with ``budget_images``: below 1, more than the images of the ranked
        units, or less than the size of the best unit (the message gives it); with ``ranking``
        or ``sizes`` for an empty ranking, ids beyond ``sizes``, or sizes that are not
        integers ``>= 0`` (at most :data:`MAX_TOTAL_IMAGES` in all).

    Example:
      >>> fit_budget([1, 3, 2, 0], [1, 4, 3, 6], 11)  # 4 + 6 = 10; + 3 would exceed 11
      2
    """
    sizes = _check_sizes(sizes, "sizes")
    ranking = np.asarray(ranking)
    if ranking.ndim != 1 or ranking.size == 0 or ranking.dtype.kind not in "iu":
        raise ValueError(
            f"ranking: expected a non-empty 1-d array of integer unit ids, got {ranking.dtype} "
            f"{ranking.shape}"
        )
    ranking = ranking.astype(np.int64)
    if ranking.min() < 0 or ranking.max() >= sizes.size:
        raise ValueError(f"ranking: unit ids must be in [0, {sizes.size}), the units of sizes")
    taken = np.cumsum(sizes[ranking])
    budget = check_budget(budget_images, int(taken[-1]), f"{ranking.size} ranked units")
    best = int(ranking[0])
    if taken[0] > budget:
        raise ValueError(
            f"budget_images: the best unit ({best}) alone holds {int(taken[0])} images, more "
            f"than the budget of {budget}"
        )
    return int(np.searchsorted(taken, budget, side="right"))


def check_budget(budget_images: Any, total: int, of: str) -> int:
    """``budget_images`` as an int, checked against the ``total`` images of ``of`` (the units
    it is taken from, for the message: ``"12 source units"``).

    Raises:
      TypeError: not an integer.
      ValueError: starting with ``budget_images``: below 1 or more than ``total``.
    """
    budget = _checks.check_positive_int(budget_images, "budget_images")
    if budget > total:
        raise ValueError(f"budget_images: {budget} is more than the {total} images of the {of}")
    return budget
