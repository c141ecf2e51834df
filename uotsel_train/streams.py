"""Which samples go into training, and in which order: index-level logic, no images.

- :func:`selected_samples`: the pre-training samples of the units a ``uotsel`` selection file
  chose (classes via labels, or k-means clusters via per-sample unit ids).
- :func:`class_fraction` and :func:`long_tail`: the paper's reduced target sets (a per-class
  fraction of 20-80%, and a Pareto long tail with a 10x imbalance), seeded.
- :class:`EpochOrder`: a seeded order that is reshuffled every epoch and can be resumed at any
  position; the target and the pre-training streams each have their own.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

__all__ = [
    "EpochOrder",
    "class_fraction",
    "long_tail",
    "read_selection",
    "selected_samples",
]


def read_selection(path: str) -> dict[str, Any]:
    """A ``uotsel select`` JSON file (``uotsel.selection/1``), checked."""
    if not os.path.exists(path):
        raise ValueError(f"selection: file not found: {path}")
    try:
        with open(path) as fh:
            record = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"selection: cannot read {path}: {err}") from None
    if not isinstance(record, dict) or record.get("format") != "uotsel.selection/1":
        raise ValueError(f"selection: {path} is not a uotsel selection file")
    selected = record.get("selected")
    if not isinstance(selected, list) or not all(isinstance(u, int) for u in selected):
        raise ValueError(f"selection: {path} has no list of selected unit ids")
    return record


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


def class_fraction(labels: Any, fraction: float, seed: int) -> np.ndarray:
    """A seeded ``fraction`` of every class (at least one sample each), ascending indices."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        count = max(1, round(fraction * members.size))
        keep.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(keep)).astype(np.int64)


def long_tail(labels: Any, imbalance: float = 10.0, seed: int = 0) -> np.ndarray:
    """A seeded long-tailed subset: classes, in a seeded random order, keep a share of their
    samples that decays along a Pareto (power-law) profile from 1 to ``1 / imbalance``."""
    if imbalance < 1:
        raise ValueError(f"imbalance: must be >= 1, got {imbalance}")
    labels = np.asarray(labels)
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    order = rng.permutation(classes.size)
    rank = np.empty(classes.size)
    rank[order] = np.arange(classes.size)
    # Power law through (rank 0, 1) and (last rank, 1 / imbalance).
    last = max(classes.size - 1, 1)
    alpha = np.log(imbalance) / np.log(1 + last)
    share = (1 + rank) ** (-alpha)
    keep = []
    for c, s in zip(classes, share, strict=True):
        members = np.flatnonzero(labels == c)
        count = max(1, round(s * members.size))
        keep.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(keep)).astype(np.int64)


class EpochOrder:
    """An endless, seeded stream of sample indices, reshuffled every epoch.

    ``position`` (samples consumed so far) is all that is needed to resume exactly.
    """

    def __init__(self, indices: Any, seed: int, position: int = 0):
        self.indices = np.asarray(indices, np.int64)
        if self.indices.size == 0:
            raise ValueError("indices: the stream has no samples")
        self.seed = int(seed)
        self.position = int(position)

    def epoch(self, number: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, number])
        return self.indices[rng.permutation(self.indices.size)]

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` indices (crossing epoch boundaries as needed)."""
        out = []
        while count > 0:
            epoch, offset = divmod(self.position, self.indices.size)
            chunk = self.epoch(epoch)[offset : offset + count]
            out.append(chunk)
            self.position += chunk.size
            count -= chunk.size
        return np.concatenate(out) if out else np.zeros(0, np.int64)
