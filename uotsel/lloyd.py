"""The compiled steps of k-means (:func:`uotsel.kmeans` runs them): greedy k-means++ seeding,
the Lloyd assignment over fixed-size row chunks (on one device, split over a mesh, or streamed
from the host), and the centroid update that re-seeds empty clusters at the samples farthest
from their centroids without Python branches.

``spherical``: features and centroids on the unit sphere, scores are cosines; otherwise squared
Euclidean distances.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from uotsel import mesh as meshes
from uotsel import samples

__all__ = [
    "RESEED_POOL",
    "SCORE_BLOCK",
    "Assignment",
    "assign",
    "assign_on_mesh",
    "assign_streamed",
    "greedy_plus_plus",
    "refit",
    "update",
    "update_streamed",
]

Array = jax.Array
# Candidates kept per pass for re-seeding empty clusters.
RESEED_POOL = 256
# Budget for the [chunk, K] score block of the assignment step, in float32 entries.
SCORE_BLOCK = 1 << 23


class Assignment(NamedTuple):
    """Result of :func:`assign`, one Lloyd assignment step.

    Attributes:
      labels: ``[N]`` int32 cluster of every sample.
      sums: ``[K, D]`` per-cluster sums of the (unit, when spherical) rows.
      counts: ``[K]`` int32 samples per cluster.
      objective: scalar, the objective of ``labels`` under the given centroids.
      far: ``(distances, indices)`` ``[RESEED_POOL]`` of the samples farthest from their
        centroids (candidates for re-seeding empty clusters).
    """

    labels: Array
    sums: Array
    counts: Array
    objective: Array
    far: tuple[Array, Array]


def _distances(x: Array, centroids: Array, spherical: bool) -> Array:
    """``[r, K]`` dissimilarity: ``1 - cos`` (unit rows) or squared Euclidean distance."""
    dots = jnp.matmul(x, centroids.T, precision=jax.lax.Precision.HIGHEST)
    if spherical:
        return 1.0 - dots
    sq = jnp.sum(x * x, axis=1)[:, None] + jnp.sum(centroids * centroids, axis=1)[None, :]
    return jnp.maximum(sq - 2.0 * dots, 0.0)


@functools.partial(jax.jit, static_argnames=("k", "trials", "spherical"))
def greedy_plus_plus(y: Array, k: int, trials: int, spherical: bool, key: Array) -> Array:
    """Greedy k-means++ on the rows of ``y`` ``[S, D]``: every step draws ``trials`` candidates
    with probability proportional to the current dissimilarity and keeps the one that lowers
    the total the most. Returns ``[k, D]`` rows of ``y``."""
    s = y.shape[0]
    key, first = jax.random.split(key)
    idx0 = jax.random.randint(first, (), 0, s)
    centroids = jnp.zeros((k, y.shape[1]), y.dtype).at[0].set(y[idx0])
    closest = _distances(y, y[idx0][None], spherical)[:, 0]

    def step(t, state):
        centroids, closest, key = state
        key, draw = jax.random.split(key)
        total = jnp.sum(closest)
        logits = jnp.where(total > 0, jnp.log(jnp.maximum(closest, 0.0)), 0.0)
        cand = jax.random.categorical(draw, logits, shape=(trials,))
        new = jnp.minimum(closest[None, :], _distances(y, y[cand], spherical).T)  # [trials, S]
        pick = jnp.argmin(jnp.sum(new, axis=1))
        return centroids.at[t].set(y[cand[pick]]), new[pick], key

    centroids, _, _ = jax.lax.fori_loop(1, k, step, (centroids, closest, key))
    return centroids


@functools.partial(jax.jit, static_argnames=("spherical", "chunk"))
def assign(x: Array, centroids: Array, spherical: bool, chunk: int) -> Assignment:
    """Assignment step over row chunks of ``x`` ``[N, D]`` (unit rows when spherical) for
    ``centroids`` ``[K, D]``; ``chunk`` rows per ``[chunk, K]`` score block (see
    :func:`default_chunk`)."""
    return _assign_rows(x, centroids, spherical, chunk, 0, None)


def _assign_rows(x, centroids, spherical, chunk, offset, n_valid) -> Assignment:
    """:func:`assign` on rows ``offset ...`` of a larger set of which the first ``n_valid``
    count (``None``: all of them); sample indices in ``far`` are global."""
    n, d = x.shape
    k = centroids.shape[0]
    pool = min(RESEED_POOL, n)

    c_sq = jnp.sum(centroids * centroids, axis=1)
    ids = jnp.arange(k, dtype=jnp.int32)

    def block(rows, start, state):
        labels, sums, counts, objective, far_d, far_i = state
        # Scores to maximise: the cosine, or 2 x.c - |c|^2 (= |x|^2 - squared distance). The
        # arg-max is taken as the smallest index attaining the max: two plain reductions,
        # much faster on CPU than a variadic arg-max reduction.
        dots = jnp.matmul(rows, centroids.T, precision=jax.lax.Precision.HIGHEST)
        scores = dots if spherical else 2.0 * dots - c_sq[None, :]
        top = jnp.max(scores, axis=1)
        lab = jnp.min(jnp.where(scores >= top[:, None], ids[None, :], k), axis=1)
        if spherical:
            best = jnp.maximum(1.0 - top, 0.0)  # rounding can push a cosine past 1
        else:
            best = jnp.maximum(jnp.sum(rows * rows, axis=1) - top, 0.0)
        one = jnp.ones_like(lab)
        if n_valid is not None:  # rows past n_valid pad the last device's block
            keep = offset + start + jnp.arange(rows.shape[0]) < n_valid
            rows, one = jnp.where(keep[:, None], rows, 0.0), jnp.where(keep, one, 0)
            best = jnp.where(keep, best, 0.0)
        sums = sums + jax.ops.segment_sum(rows, lab, num_segments=k)
        counts = counts + jax.ops.segment_sum(one, lab, num_segments=k)
        pooled = best if n_valid is None else jnp.where(keep, best, -jnp.inf)
        top_d, top_i = jax.lax.top_k(pooled, min(pool, rows.shape[0]))
        all_d = jnp.concatenate([far_d, top_d])
        all_i = jnp.concatenate([far_i, top_i.astype(jnp.int32) + start + offset])
        keep_d, kept = jax.lax.top_k(all_d, pool)
        labels = jax.lax.dynamic_update_slice(labels, lab, (start,))
        return labels, sums, counts, objective + jnp.sum(best), keep_d, all_i[kept]

    state = (
        jnp.zeros(n, jnp.int32),
        jnp.zeros((k, d), x.dtype),
        jnp.zeros(k, jnp.int32),
        jnp.zeros((), x.dtype),
        jnp.full(pool, -jnp.inf, x.dtype),
        jnp.zeros(pool, jnp.int32),
    )
    full = n // chunk

    def body(i, state):
        start = i * chunk
        return block(jax.lax.dynamic_slice(x, (start, 0), (chunk, d)), start, state)

    state = jax.lax.fori_loop(0, full, body, state)
    if n % chunk:
        state = block(x[full * chunk :], full * chunk, state)
    labels, sums, counts, objective, far_d, far_i = state
    return Assignment(labels, sums, counts, objective, (far_d, far_i))


@functools.partial(jax.jit, static_argnames=("spherical", "chunk", "mesh", "n_valid"))
def assign_on_mesh(
    x: Array, centroids: Array, spherical: bool, chunk: int, mesh: Any, n_valid: int
) -> Assignment:
    """:func:`assign` with ``x`` ``[N, D]`` split by rows over ``mesh`` (``N`` a multiple of
    its devices, the first ``n_valid`` rows real): each device assigns its own rows; the
    cluster sums, counts and objective are summed across devices and the farthest samples
    pooled. ``labels`` stay split like ``x``."""
    pool = min(RESEED_POOL, n_valid)

    def local(xs, c):
        offset = jax.lax.axis_index(meshes.AXIS) * xs.shape[0]
        a = _assign_rows(xs, c, spherical, chunk, offset, n_valid)
        far_d, far_i = (jax.lax.all_gather(v, meshes.AXIS, tiled=True) for v in a.far)
        keep_d, kept = jax.lax.top_k(far_d, pool)
        sums, counts, objective = jax.lax.psum((a.sums, a.counts, a.objective), meshes.AXIS)
        return Assignment(a.labels, sums, counts, objective, (keep_d, far_i[kept]))

    specs = Assignment(P(meshes.AXIS), P(), P(), P(), (P(), P()))
    split = P(meshes.AXIS, None)
    run = jax.shard_map(local, mesh=mesh, in_specs=(split, P()), out_specs=specs, check_vma=False)
    return run(x, centroids)


_assign_block = jax.jit(_assign_rows, static_argnames=("spherical", "chunk", "n_valid"))


def assign_streamed(x: samples.HostRows, centroids: Array, spherical: bool, chunk: int):
    """:func:`assign` over samples left on the host, one block at a time: sums, counts and
    objective added up, farthest samples pooled; ``labels`` is a host array."""
    n = x.shape[0]
    pool = min(RESEED_POOL, n)
    labels = np.empty(n, np.int32)
    total = None
    for lo, block in x.blocks():
        part = _assign_block(block, centroids, spherical, min(chunk, block.shape[0]), lo, None)
        labels[lo : lo + block.shape[0]] = np.asarray(part.labels)
        total = part if total is None else _merge(total, part, pool)
    return total._replace(labels=labels)


@functools.partial(jax.jit, static_argnums=2)
def _merge(a: Assignment, b: Assignment, pool: int) -> Assignment:
    far_d = jnp.concatenate([a.far[0], b.far[0]])
    far_i = jnp.concatenate([a.far[1], b.far[1]])
    keep_d, kept = jax.lax.top_k(far_d, min(pool, far_d.shape[0]))
    return Assignment(
        a.labels,
        a.sums + b.sums,
        a.counts + b.counts,
        a.objective + b.objective,
        (keep_d, far_i[kept]),
    )


def update_streamed(x: samples.HostRows, step: Assignment, previous: Array, spherical: bool):
    """:func:`update` for samples left on the host: the pooled farthest rows are read back."""
    return refit(x.rows(np.asarray(step.far[1])), step, previous, spherical)


@functools.partial(jax.jit, static_argnames=("spherical",))
def update(x: Array, step: Assignment, previous: Array, spherical: bool) -> Array:
    """New centroids ``[K, D]`` from an :func:`assign` step (re-normalised when spherical);
    empty clusters take the farthest samples (the e-th empty cluster the e-th farthest, cycling
    if there are more empty clusters than pooled samples), without Python branches."""
    return refit(x[step.far[1]], step, previous, spherical)


@functools.partial(jax.jit, static_argnames=("spherical",))
def refit(farthest: Array, step: Assignment, previous: Array, spherical: bool) -> Array:
    """:func:`update` given the rows ``farthest`` ``[pool, D]`` of the pooled farthest samples
    (``step.far`` order), wherever the samples live."""
    sums, counts = step.sums, step.counts
    empty = counts == 0
    rank = jnp.cumsum(empty) - 1
    reseed = farthest[rank % farthest.shape[0]]
    means = sums / jnp.maximum(counts, 1)[:, None]
    if spherical:
        norms = jnp.linalg.norm(sums, axis=1, keepdims=True)
        means = jnp.where(norms > 0, sums / jnp.where(norms > 0, norms, 1.0), previous)
    return jnp.where(empty[:, None], reseed, means)
