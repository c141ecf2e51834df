"""Class means (centroids of labelled units) from per-sample features, in one pass or streamed.

The paper represents every class by the unnormalised mean of its samples' backbone features.
For ImageNet that is 1.28M x 512 features: :class:`ClassMeanAccumulator` reduces them chunk by
chunk (features never need to be in memory at once), summing in float64 on the host so that the
result does not depend on the chunking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from uotsel import _checks

__all__ = ["ClassMeanAccumulator", "ClassMeans", "class_means"]


class ClassMeans(NamedTuple):
    """Per-class means and sample counts.

    Attributes:
      means: ``[K, D]`` float32 mean feature of each class (zeros for an empty class when
        empty classes are allowed).
      counts: ``[K]`` int64 number of samples averaged for each class.
    """

    means: np.ndarray
    counts: np.ndarray


def _check_labels(labels: Any, n: int, num_classes: int | None, name: str = "labels"):
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array, got shape {labels.shape}")
    if labels.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected integer class ids, got dtype {labels.dtype}")
    labels = _checks.whole_numbers(labels, name)
    if labels.shape[0] != n:
        raise ValueError(f"{name}: has {labels.shape[0]} entries but features has {n} rows")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name}: contains a negative class id ({int(labels.min())})")
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        raise ValueError(
            f"{name}: class id {int(labels.max())} is out of range for num_classes={num_classes}"
        )
    return labels


def _zeros(shape: tuple[int, ...], dtype: Any, name: str) -> np.ndarray:
    try:
        return np.zeros(shape, dtype)
    except (MemoryError, ValueError, OverflowError):
        raise ValueError(
            f"{name}: {shape[0]} classes of dimension {shape[1]} do not fit in memory"
        ) from None


class ClassMeanAccumulator:
    """Streaming class-mean reducer.

    Example:
      >>> import numpy as np
      >>> from uotsel import ClassMeanAccumulator
      >>> acc = ClassMeanAccumulator(num_classes=2)
      >>> acc.update(np.array([[1.0, 0.0], [3.0, 0.0]]), np.array([0, 0]))
      >>> acc.update(np.array([[0.0, 2.0]]), np.array([1]))
      >>> acc.result().means.tolist(), acc.result().counts.tolist()
      ([[2.0, 0.0], [0.0, 2.0]], [2, 1])
    """

    def __init__(self, num_classes: int, dim: int | None = None):
        self.num_classes = _checks.check_positive_int(num_classes, "num_classes")
        if dim is not None:
            dim = _checks.check_positive_int(dim, "dim")
        self._sums = None if dim is None else _zeros((num_classes, dim), np.float64, "num_classes")
        self._counts = _zeros((num_classes,), np.int64, "num_classes")

    def _init(self, dim: int) -> None:
        if self._sums is None:
            self._sums = _zeros((self.num_classes, dim), np.float64, "num_classes")
        elif self._sums.shape[1] != dim:
            raise ValueError(
                f"features: dimension {dim} does not match earlier chunks' {self._sums.shape[1]}"
            )

    def update(self, features: Any, labels: Any) -> None:
        """Add a chunk: ``features`` ``[n, D]`` with integer ``labels`` ``[n]``."""
        features = _checks.as_float_array(np.asarray(features), "features", 2)
        labels = _check_labels(labels, features.shape[0], self.num_classes)
        _checks.check_finite(features, "features")
        self._init(features.shape[1])
        if labels.size == 0:
            return
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
        present = sorted_labels[starts]
        block = np.add.reduceat(np.asarray(features, np.float64)[order], starts, axis=0)
        self._sums[present] += block
        self._counts[present] += np.diff(np.r_[starts, labels.size])

    def update_means(self, means: Any, counts: Any) -> None:
        """Merge already-reduced means ``[K, D]`` with their ``counts`` ``[K]`` (e.g. shards)."""
        means = _checks.as_float_array(np.asarray(means), "means", 2)
        counts = np.asarray(counts)
        if means.shape[0] != self.num_classes or counts.shape != (self.num_classes,):
            raise ValueError(
                f"means, counts: expected {self.num_classes} classes, got "
                f"{means.shape[0]} means and counts of shape {counts.shape}"
            )
        if counts.dtype.kind not in "iu" or (counts < 0).any():
            raise ValueError("counts: must be non-negative integers")
        _checks.check_finite(means, "means")
        self._init(means.shape[1])
        self._sums += np.asarray(means, np.float64) * counts[:, None]
        self._counts += counts.astype(np.int64)

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sums [K, D] float64, counts [K] int64)`` so far (copies): the state another
        accumulator (another process's, say) takes with :meth:`add_totals`."""
        if self._sums is None:
            raise ValueError("features: no samples were added")
        return self._sums.copy(), self._counts.copy()

    def add_totals(self, sums: Any, counts: Any) -> None:
        """Add sums ``[K, D]`` and counts ``[K]`` from :meth:`totals` of another accumulator."""
        sums, counts = np.asarray(sums, np.float64), np.asarray(counts, np.int64)
        if (
            sums.ndim != 2
            or sums.shape[0] != self.num_classes
            or counts.shape != (self.num_classes,)
        ):
            raise ValueError(
                f"sums, counts: expected {self.num_classes} classes, got shapes {sums.shape} "
                f"and {counts.shape}"
            )
        self._init(sums.shape[1])
        self._sums += sums
        self._counts += counts

    def result(self, *, allow_empty: bool = False) -> ClassMeans:
        """The means so far. Raises if a class has no sample, unless ``allow_empty``."""
        if self._sums is None:
            raise ValueError("features: no samples were added")
        empty = np.flatnonzero(self._counts == 0)
        if empty.size and not allow_empty:
            raise ValueError(
                f"labels: {empty.size} of {self.num_classes} classes have no samples "
                f"(first: {int(empty[0])}); pass allow_empty=True to keep them as zero rows"
            )
        safe = np.maximum(self._counts, 1)[:, None]
        return ClassMeans((self._sums / safe).astype(np.float32), self._counts.copy())


def class_means(
    features: Any,
    labels: Any,
    num_classes: int | None = None,
    *,
    chunk_size: int = 65536,
    allow_empty: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ClassMeans:
    """Mean feature and sample count of every class.

    Args:
      features: ``[N, D]`` per-sample features (a ``np.memmap`` is read ``chunk_size`` rows at
        a time, so it never has to fit in memory).
      labels: ``[N]`` integer class ids in ``[0, num_classes)``.
      num_classes: ``K``; default ``max(labels) + 1``.
      chunk_size: rows reduced per step.
      allow_empty: keep classes without samples as zero rows (count 0) instead of raising.
      progress: called with the number of rows reduced after every chunk (e.g. a
        :class:`uotsel.progress.Progress`'s ``update``).

    Returns:
      :class:`ClassMeans` with ``means`` ``[K, D]`` float32 and ``counts`` ``[K]`` int64.

    Raises:
      ValueError, TypeError: on mismatched lengths, non-integer or out-of-range labels,
        NaN/inf features, or empty classes.

    Example:
      >>> import numpy as np, uotsel
      >>> cm = uotsel.class_means(np.array([[0.0, 1], [2, 3], [6, 7]]), np.array([1, 0, 1]))
      >>> cm.means.tolist(), cm.counts.tolist()
      ([[2.0, 3.0], [3.0, 4.0]], [1, 2])
    """
    if not hasattr(features, "shape") or not hasattr(features, "dtype"):
        try:
            features = np.asarray(features)
        except Exception:
            raise TypeError(f"features: expected an array, got {type(features).__name__}") from None
    if features.ndim != 2:
        raise ValueError(f"features: expected a 2-d array [N, D], got shape {features.shape}")
    _checks.as_float_array(features[:0], "features", 2)
    n, dim = features.shape
    if n == 0:
        raise ValueError("features: is empty (0 rows)")
    if dim == 0:
        raise ValueError(f"features: has dimension 0 (shape {features.shape})")
    if num_classes is not None:
        num_classes = _checks.check_positive_int(num_classes, "num_classes")
    chunk_size = _checks.check_positive_int(chunk_size, "chunk_size")
    labels = _check_labels(labels, n, num_classes)
    given = num_classes is not None
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=num_classes) if num_classes <= n else None
    if not allow_empty and (counts is None or not counts.all()):
        missing = num_classes - n if counts is None else int(np.count_nonzero(counts == 0))
        first = "" if counts is None else f" (first: {int(np.flatnonzero(counts == 0)[0])})"
        raise ValueError(
            f"labels: {'at least ' if counts is None else ''}{missing} of {num_classes} classes "
            f"have no samples{first}; pass allow_empty=True to keep them as zero rows"
        )
    try:
        acc = ClassMeanAccumulator(num_classes, dim)
    except ValueError:
        if given:
            raise
        raise ValueError(
            f"labels: class id {num_classes - 1} implies {num_classes} classes of dimension "
            f"{dim}, which do not fit in memory"
        ) from None
    for lo, hi in _chunks(n, chunk_size):
        acc.update(np.asarray(features[lo:hi]), labels[lo:hi])
        if progress is not None:
            progress(hi - lo)
    return acc.result(allow_empty=allow_empty)


def _chunks(n: int, size: int) -> Iterable[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(lo + size, n)
