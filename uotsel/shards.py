"""Per-sample features kept as several ``.npy`` parts, read as one ``[N, D]`` array.

Written by ``uotsel-train extract --features-out NAME.json`` (one part per process, each
written by the process that computed its rows, so no two processes ever write one file), read
by ``uotsel kmeans`` and ``uotsel centroids`` wherever they take ``--features``
(:func:`uotsel.io.read_features`). The index is a ``uotsel.feature-shards/1`` JSON file::

    {"format": "uotsel.feature-shards/1", "rows": N, "dim": D, "dtype": "float32",
     "parts": [{"file": "NAME-00000-of-00002.npy", "rows": n0}, ...]}

Parts lie in the index's folder (plain file names, no paths), hold ``[n_i, D]`` of one dtype,
and are concatenated in the listed order. :class:`RowShards` is that concatenation without a
copy: each part stays memory-mapped and only the rows asked for are read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["FORMAT", "RowShards", "index_record", "part_name"]

FORMAT = "uotsel.feature-shards/1"


def part_name(index_path: str, i: int, count: int) -> str:
    """The file of part ``i`` of ``count`` beside the index at ``index_path``."""
    stem = os.path.splitext(index_path)[0]
    return f"{stem}-{i:05d}-of-{count:05d}.npy"


def index_record(parts: Sequence[tuple[str, int]], dim: int, dtype: Any) -> dict[str, Any]:
    """The index for ``parts`` (``(path, rows)`` in row order; only the file names are kept)."""
    return {
        "format": FORMAT,
        "rows": int(sum(rows for _, rows in parts)),
        "dim": int(dim),
        "dtype": np.dtype(dtype).name,
        "parts": [{"file": os.path.basename(path), "rows": int(rows)} for path, rows in parts],
    }


class RowShards:
    """``[N, D]`` rows held by ``parts`` (arrays ``[n_i, D]`` of one dtype, memory maps say),
    concatenated in order. Indexing by rows (a slice, an integer, an integer or boolean array,
    each optionally followed by a column index) returns a new numpy array."""

    def __init__(self, parts: Sequence[Any]):
        if not parts:
            raise ValueError("parts: no parts")
        self.parts = list(parts)
        dims = {p.shape[1:] for p in self.parts}
        dtypes = {np.dtype(p.dtype) for p in self.parts}
        if len(dims) != 1 or len(dtypes) != 1 or any(p.ndim != 2 for p in self.parts):
            raise ValueError("parts: every part must be [rows, D] with one D and one dtype")
        self.starts = np.concatenate([[0], np.cumsum([p.shape[0] for p in self.parts])])
        self.shape = (int(self.starts[-1]), int(self.parts[0].shape[1]))
        self.dtype = dtypes.pop()
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            if len(key) > 2:
                raise IndexError(f"too many indices for a 2-d array: {len(key)}")
            rows = self._rows(key[0] if key else slice(None))
            return rows[(Ellipsis, key[1])] if len(key) == 2 else rows
        return self._rows(key)

    def _rows(self, key: Any) -> np.ndarray:
        n = self.shape[0]
        if isinstance(key, slice):
            lo, hi, step = key.indices(n)
            if step == 1:
                return self._range(lo, max(lo, hi))
            return self._take(np.arange(lo, hi, step))
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if not -n <= key < n:
                raise IndexError(f"row {key} is out of range for {n} rows")
            return self._range(key % n, key % n + 1)[0]
        index = np.asarray(key)
        if index.dtype == bool:
            if index.shape != (n,):
                raise IndexError(f"a boolean row index needs shape ({n},), got {index.shape}")
            index = np.flatnonzero(index)
        if index.dtype.kind not in "iu":
            raise IndexError(f"rows are indexed by integers, slices or booleans, got {index.dtype}")
        if index.size and not (-n <= index.min() and index.max() < n):
            raise IndexError(f"row index out of range for {n} rows")
        return self._take(np.where(index < 0, index + n, index))

    def _range(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` (``0 <= lo <= hi <= N``)."""
        blocks = []
        for part, start in zip(self.parts, self.starts[:-1], strict=True):
            a, b = max(lo - start, 0), min(hi - start, part.shape[0])
            if a < b:
                blocks.append(np.asarray(part[a:b]))
        if not blocks:
            return np.empty((0, self.shape[1]), self.dtype)
        return blocks[0].copy() if len(blocks) == 1 else np.concatenate(blocks)

    def _take(self, index: np.ndarray) -> np.ndarray:
        """Rows at non-negative ``index`` (any shape, any order)."""
        flat = index.reshape(-1)
        out = np.empty((flat.size, self.shape[1]), self.dtype)
        which = np.searchsorted(self.starts, flat, side="right") - 1
        for j in np.unique(which):
            here = which == j
            out[here] = self.parts[j][flat[here] - self.starts[j]]
        return out.reshape(index.shape + (self.shape[1],))
