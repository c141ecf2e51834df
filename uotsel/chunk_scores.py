"""The compiled program that scores a chunk of samples, and the loop that feeds it: one
program for ``chunk`` rows (the last chunk padded, so it compiles once), the next chunk read on
the host while the device scores the one before, and the first bad row named on the host when
a chunk raises a flag (:mod:`uotsel.per_sample` holds the scores' meaning and the API).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import costs, member_means
from uotsel import mesh as meshes

Array = jax.Array

__all__ = ["Scorer", "explain", "padded", "score_chunk", "stand_in"]


class Scorer:
    """One compiled program for ``chunk`` rows, fed chunk by chunk: the next chunk is read on
    the host while the device scores the one before. ``problem`` has the solution's ``kind``
    (the cost), ``g`` ``[M]``, ``keep`` ``[M]`` (bool), ``eps`` and ``eps_c``."""

    def __init__(self, problem: Any, target: np.ndarray, dtype: Any, chunk: int, mesh):
        self.problem, self.dtype, self.mesh = problem, dtype, mesh
        self.stand_in = target[0]  # scored in place of a skipped row: finite, not zero
        self.chunk = chunk if mesh is None else meshes.padded_size(chunk, mesh)
        put = (lambda x: meshes.replicate(x, mesh)) if mesh is not None else jax.device_put
        self.args = [
            put(target),
            put(problem.g.astype(dtype)),
            put(problem.keep),
            put(np.asarray(problem.eps, dtype)),
            put(np.asarray(problem.eps_c, dtype)),
        ]

    def _place(self, rows: np.ndarray) -> Array:
        if self.mesh is None:
            return jax.device_put(rows)
        return meshes.place_rows(rows, self.mesh)

    def run(
        self,
        features: Any,
        progress: Callable[[int], Any] | None,
        sums: member_means.MemberSums | None = None,
        skip: np.ndarray | None = None,
    ) -> np.ndarray:
        n = features.shape[0]
        skip = np.zeros(n, bool) if skip is None else skip
        scores = np.empty(n, self.dtype)
        pending = None
        for lo in range(0, n, self.chunk):
            hi = min(n, lo + self.chunk)
            block = stand_in(np.asarray(features[lo:hi]), skip[lo:hi], self.stand_in)
            rows = self._place(padded(block, self.chunk, self.dtype))
            result = score_chunk(self.problem.kind, rows, *self.args)
            if sums is not None:
                sums.add(rows, self._place(sums.ids(lo, hi, self.chunk)))
            if pending is not None:
                self._collect(features, scores, skip, *pending, progress)
            pending = (lo, hi, result)
        self._collect(features, scores, skip, *pending, progress)
        scores[skip] = -np.inf
        return scores

    def _collect(self, features, scores, skip, lo, hi, result, progress) -> None:
        values, valid = (meshes.to_host(x) for x in result)
        if not (valid[0] and valid[2]):  # the target's flag: checked once, on the host
            explain(features, lo, hi, self.problem.kind, valid, skip[lo:hi])
        scores[lo:hi] = values[: hi - lo]
        if progress is not None:
            progress(hi - lo)


def stand_in(rows: np.ndarray, skip: np.ndarray, row: np.ndarray) -> np.ndarray:
    """``rows`` ``[r, D]`` with the rows ``skip`` ``[r]`` (bool) replaced by ``row`` ``[D]``
    (a copy; ``rows`` itself, often a memory map, is never written)."""
    if not skip.any():
        return rows
    return np.where(skip[:, None], row, rows)


def padded(rows: np.ndarray, size: int, dtype: Any) -> np.ndarray:
    """``rows`` ``[r, D]`` in ``dtype``, padded to ``size`` rows with copies of its first."""
    if rows.dtype.kind == "b":
        rows = rows.astype(np.uint8)
    with np.errstate(over="ignore"):  # a value beyond the range is named by explain
        rows = np.asarray(rows, dtype)
    if rows.shape[0] == size:
        return rows
    return np.concatenate([rows, np.repeat(rows[:1], size - rows.shape[0], axis=0)])


@functools.partial(jax.jit, static_argnames=("kind",))
def score_chunk(kind, rows, target, g, keep, eps, eps_c) -> tuple[Array, Array]:
    """``[c]`` scores of ``rows`` ``[c, D]`` and ``[3]`` validity flags (those of
    :class:`uotsel.costs.PairwiseCost`; a function cost: finite rows, finite costs)."""
    if isinstance(kind, costs.CustomCost):
        cost = jnp.asarray(kind.fn(rows, target), rows.dtype)
        finite = jnp.all(jnp.isfinite(rows))
        valid = jnp.stack([finite, jnp.bool_(True), jnp.all(jnp.isfinite(cost))])
    else:
        built = costs.pairwise(kind, rows, target, eps_c, rows.shape[0], wide=None)
        cost, valid = built.cost, built.valid
    z = jnp.where(keep[None, :], (g[None, :] - cost) / eps, -jnp.inf)
    top = jnp.max(z, axis=1)
    return top + jnp.log(jnp.sum(jnp.exp(z - top[:, None]), axis=1)), valid


def explain(
    features: Any, lo: int, hi: int, kind: Any, valid: np.ndarray, skip: np.ndarray
) -> None:
    """Raise naming the first bad row of ``features[lo:hi]`` (the rows ``skip`` ``[hi - lo]``
    left out), whose chunk raised a flag; a flag with no bad row behind it (rows of subnormal
    numbers, which the program's cosine handles) passes."""
    block = np.asarray(features[lo:hi])
    if block.dtype.kind == "b":
        block = block.astype(np.uint8)
    finite = np.isfinite(block).all(axis=1) | skip
    if not finite.all():
        raise ValueError(
            f"features: row {lo + int(np.flatnonzero(~finite)[0])} contains NaN or inf"
        )
    top = np.where(skip, 1, np.abs(block).max(axis=1))
    limit = float(np.finfo(np.float32).max)
    if block.dtype.kind == "f" and block.dtype.itemsize > 4 and (top > limit).any():
        row = lo + int(np.flatnonzero(top > limit)[0])
        raise ValueError(f"features: row {row} holds a value beyond float32's range")
    angular = isinstance(kind, costs.Cost) and kind.angular
    if angular and (top == 0).any():
        row = lo + int(np.flatnonzero(top == 0)[0])
        raise ValueError(
            f"features: row {row} is all zeros; the cosine cost needs a direction for every sample"
        )
    if not valid[2]:
        name = getattr(kind, "name", "custom")
        raise ValueError(
            f"features: {name} costs of rows {lo}-{hi - 1} to the target exceed the float "
            "range (or are not finite); divide features and target by a common factor"
        )
