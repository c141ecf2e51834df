"""Which samples go into training, and in which order: index-level logic, no images.

- :func:`selected_samples`: the pre-training samples of the units a ``uotsel`` selection file
  chose (classes via labels, or k-means clusters via per-sample unit ids).
- :func:`class_fraction` and :func:`long_tail`: the paper's reduced target sets (a per-class
  fraction of 20-80%, and a long tail with a 10x imbalance, exponential as in Cui et al. 2019
  by default), seeded.

The order in which a stream's samples are read (reshuffled at each of its epochs) is grain's
(:func:`uotsel_train.loader.stream_order`).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = [
    "LONG_TAIL_PROFILES",
    "class_fraction",
    "long_tail",
    "selected_samples",
]

# "exponential": Cui et al. 2019, as the paper says; "power": this project's earlier profile.
LONG_TAIL_PROFILES = ("exponential", "power")


def selected_samples(unit_ids: Any, selected: Any) -> np.ndarray:
    """Ascending indices of the samples whose unit (``unit_ids`` ``[N]``: class labels or
    cluster assignments) is in ``selected``.

    Raises:
      ValueError: when a selected unit does not occur among the samples (a selection made for
        other data).
    """
    unit_ids = np.asarray(unit_ids)
    selected = np.asarray(selected, np.int64)
    present = np.isin(selected, unit_ids)
    if not present.all():
        missing = selected[~present]
        raise ValueError(
            f"selection: {missing.size} selected unit(s) have no sample here (first: "
            f"{int(missing[0])}); was it made for this data set?"
        )
    return np.flatnonzero(np.isin(unit_ids, selected)).astype(np.int64)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _subsample(labels: np.ndarray, classes: np.ndarray, share: np.ndarray, rng) -> np.ndarray:
    keep = []
    for c, s in zip(classes, share, strict=True):
        members = np.flatnonzero(labels == c)
        count = max(1, round(float(s) * members.size))
        keep.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(keep)).astype(np.int64)


def class_fraction(labels: Any, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of every class of ``labels`` ``[N]`` (at least one sample each):
    ascending indices ``[M]``.

    Raises:
      ValueError: when ``fraction`` is not a number in ``(0, 1]`` or ``labels`` is empty.
    """
    if not _is_real(fraction) or not 0 < fraction <= 1:
        raise ValueError(f"fraction: must be a number in (0, 1], got {fraction!r}")
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("labels: no samples")
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    return _subsample(labels, classes, np.full(classes.size, float(fraction)), rng)


def long_tail(
    labels: Any, imbalance: float = 10.0, seed: int = 0, profile: str = "exponential"
) -> np.ndarray:
    """A seeded long-tailed subset of ``labels`` ``[N]``: ascending indices ``[M]``.

    Classes are put in a seeded random order; the class at rank ``r`` of ``C`` keeps
    ``max(1, round(share * n))`` of its ``n`` samples (drawn at random), where ``share`` falls
    from 1 (rank 0) to ``1 / imbalance`` (rank ``C - 1``) along ``profile``:

    - ``"exponential"`` (Cui et al. 2019, the paper's long-tailed targets):
      ``imbalance ** (-r / (C - 1))``;
    - ``"power"``: ``(1 + r) ** -alpha`` with ``alpha = log(imbalance) / log(C)``.

    Raises:
      ValueError: when ``imbalance`` is not a finite number >= 1, ``profile`` is not one of
        :data:`LONG_TAIL_PROFILES`, or ``labels`` is empty.

    Example:
      >>> labels = np.repeat(np.arange(3), 8)
      >>> sorted(np.bincount(labels[long_tail(labels, 4.0, seed=0)]).tolist())
      [2, 4, 8]
    """
    if not _is_real(imbalance) or not math.isfinite(imbalance) or imbalance < 1:
        raise ValueError(f"imbalance: must be a finite number >= 1, got {imbalance!r}")
    if profile not in LONG_TAIL_PROFILES:
        raise ValueError(
            f"profile: unknown long-tail profile {profile!r}; "
            f"valid: {', '.join(LONG_TAIL_PROFILES)}"
        )
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("labels: no samples")
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(classes.size)
    rank = np.empty(classes.size)
    rank[order] = np.arange(classes.size)
    last = max(classes.size - 1, 1)
    if profile == "exponential":
        share = float(imbalance) ** (-rank / last)
    else:  # a power law through (rank 0, 1) and (last rank, 1 / imbalance)
        alpha = np.log(imbalance) / np.log(1 + last)
        share = (1 + rank) ** (-alpha)
    return _subsample(labels, classes, share, rng)
