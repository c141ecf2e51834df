"""Where the samples of :func:`uotsel.kmeans` live while it runs: one device, split by rows over
a mesh of devices, or left on the host and read block by block (out of core).

Every placement checks the rows it reads (finite; not all zeros for spherical k-means, whose
rows are scaled to unit length) and names the first bad one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from uotsel import mesh as meshes

__all__ = ["HostRows", "RowSubset", "checked_rows", "on_device", "on_mesh", "take"]

Array = jax.Array


def checked_rows(features: Any, lo: int, hi: int, spherical: bool) -> np.ndarray:
    """Rows ``lo:hi`` of ``features`` as float32 (unit rows when spherical), or raise naming
    the first row that is not finite (or, spherical, all zeros)."""
    return _checked(np.asarray(features[lo:hi], np.float32), lo, spherical)


def _checked(block: np.ndarray, lo: int | np.ndarray, spherical: bool) -> np.ndarray:
    """``block`` checked and (spherical) scaled to unit rows; ``lo``: the index of its first
    row, or the index of every row."""

    def where(i: int) -> int:
        return int(lo[i]) if isinstance(lo, np.ndarray) else lo + i

    finite = np.isfinite(block).all(axis=1)
    if not finite.all():
        raise ValueError(
            f"features: row {where(int(np.flatnonzero(~finite)[0]))} contains NaN or inf"
        )
    if spherical:
        top = np.max(np.abs(block), axis=1, keepdims=True)
        zero = np.flatnonzero(top[:, 0] == 0)
        if zero.size:
            raise ValueError(
                f"features: row {where(int(zero[0]))} is all zeros; spherical k-means needs "
                "a direction for every sample (exclude= leaves rows in no cluster)"
            )
        block = block / top
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return block


def on_device(features: Any, spherical: bool, chunk: int) -> Array:
    """Features as one float32 device array, filled chunk by chunk in place, so that at most
    one copy plus a chunk is ever allocated."""
    n, d = features.shape
    step = max(chunk, 65536)
    out = jax.numpy.zeros((n, d), jax.numpy.float32)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        out = _put_rows(out, jax.device_put(checked_rows(features, lo, hi, spherical)), lo)
    return out


@functools.partial(jax.jit, donate_argnums=0)
def _put_rows(buffer: Array, rows: Array, start: int) -> Array:
    return jax.lax.dynamic_update_slice(buffer, rows, (start, 0))


def on_mesh(features: Any, spherical: bool, mesh: Any) -> Array:
    """Features as one float32 array split by rows over ``mesh``, padded to a multiple of its
    devices with copies of row 0; each device's block is read (and checked) on its own."""
    n, d = features.shape
    size = meshes.padded_size(n, mesh)

    def block(index):
        lo, hi = index[0].indices(size)[:2]
        parts = [checked_rows(features, lo, min(hi, n), spherical)] if lo < n else []
        pad = hi - max(lo, n)
        if pad > 0:
            parts.append(checked_rows(features, 0, 1, spherical).repeat(pad, 0))
        return np.concatenate(parts)

    sharding = NamedSharding(mesh, PartitionSpec(meshes.AXIS, None))
    return jax.make_array_from_callback((size, d), sharding, block)


class HostRows:
    """Features left where they are (a memory map, say), read ``block_rows`` rows at a time:
    the device holds one block, never the whole set."""

    def __init__(self, features: Any, spherical: bool, block_rows: int):
        self.features, self.spherical, self.block_rows = features, spherical, block_rows
        self.shape = tuple(features.shape)

    def blocks(self) -> Iterator[tuple[int, Array]]:
        """``(first row, checked block on the device)`` over all rows, in order."""
        n = self.shape[0]
        for lo in range(0, n, self.block_rows):
            hi = min(n, lo + self.block_rows)
            yield lo, jax.device_put(checked_rows(self.features, lo, hi, self.spherical))

    def rows(self, indices: np.ndarray) -> Array:
        """The checked rows at ``indices`` (any order), on the device."""
        indices = np.asarray(indices)
        order = np.argsort(indices, kind="stable")
        block = np.empty((indices.size, self.shape[1]), np.float32)
        block[order] = np.asarray(self.features[indices[order]], np.float32)
        return jax.device_put(_checked(block, indices, self.spherical))


class RowSubset:
    """Rows ``rows`` (``[M]`` ascending indices) of ``features`` ``[N, D]`` as an ``[M, D]``
    array that reads them on demand (a memory map stays on disk): what the placements above
    read when some samples are left out."""

    def __init__(self, features: Any, rows: np.ndarray):
        self.features, self.rows = features, rows
        self.shape = (rows.size, features.shape[1])
        self.dtype = features.dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        """Rows ``key`` (a slice or an index array) of the subset."""
        return np.asarray(self.features[self.rows[key]])


def take(x: Any, indices: np.ndarray) -> Array:
    """Rows ``indices`` of samples placed by any of the above."""
    if isinstance(x, HostRows):
        return x.rows(indices)
    return x[jax.numpy.asarray(indices)]
