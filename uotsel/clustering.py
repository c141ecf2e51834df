"""k-means (spherical or Euclidean) for clustering unlabelled pre-training features.

The paper clusters the self-supervised features of ImageNet (1.28M x 128) into K = 2000
clusters under cosine similarity and selects clusters instead of classes. This module does that
on one machine:

- spherical k-means: features and centroids live on the unit sphere, every sample goes to the
  centroid of largest cosine, and centroids are re-normalised after every update;
- Euclidean k-means (``spherical=False``) with the usual squared-distance objective;
- seeding by restarts on samples: greedy k-means++ (``2 + log K`` candidates per step) on a
  random sample, refined by a few Lloyd iterations on it, several times; the candidate with the
  lowest objective on a larger evaluation sample starts the Lloyd iterations on all the data
  (a cheap stand-in for several full restarts: a single k-means++ run often leaves two
  centroids in one cluster and one for two clusters, which Lloyd cannot undo);
- Lloyd iterations whose assignment step runs over fixed-size row chunks inside one compiled
  program, so the ``[chunk, K]`` score block is the only large temporary: memory stays near one
  copy of the features;
- empty clusters re-seeded, without Python branches, at the samples farthest from their
  centroids;
- several seeded restarts keeping the lowest objective; convergence reported as data;
- besides the centroids, the mean of every cluster's raw (unnormalised) member rows under the
  final assignment: the cluster feature of the paper (section 3.2), as a class mean is for a
  class.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _checks, costs, lloyd, paper, samples
from uotsel import mesh as meshes
from uotsel.centroids import ClassMeanAccumulator
from uotsel.kmeans_progress import KMeansStatus, ProgressBars, print_progress, status_line

__all__ = [
    "KMeansResult",
    "KMeansStatus",
    "ProgressBars",
    "default_chunk",
    "default_restarts",
    "kmeans",
    "print_progress",
    "seed_centroids",
    "status_line",
]

Array = jax.Array
# Seeding: candidate seedings (INIT_RESTARTS up to K = SEEDING_BUDGET / INIT_RESTARTS, then
# SEEDING_BUDGET // K, at least 1: their cost grows as K^2 log K, and with many clusters one
# seeding's objective varies little), and Lloyd iterations refining each on its sample.
INIT_RESTARTS = 8
SEEDING_BUDGET = 2048
INIT_ITERATIONS = 10
# The evaluation sample that picks among the candidates is this many times the seeding sample.
EVALUATION_FACTOR = 8
# Upper bound on n_init and init_restarts (a typo should not run for days).
MAX_RESTARTS = 1000


class KMeansResult(NamedTuple):
    """Result of :func:`kmeans`.

    Attributes:
      centroids: ``[K, D]`` float32 (unit rows when spherical).
      means: ``[K, D]`` float32 mean of the raw (unnormalised) input rows assigned to each
        cluster by ``assignment``, summed in float64: the cluster's feature in the paper, what
        :func:`~uotsel.select` takes as a unit. A cluster left without samples (``sizes`` 0,
        only possible with duplicated rows) gets its centroid.
      assignment: ``[N]`` int32 cluster of every sample; -1 for a row left out (``exclude``).
      sizes: ``[K]`` int64 samples per cluster.
      objective: spherical: ``sum_i (1 - cos(x_i, c_{a_i}))``; Euclidean:
        ``sum_i |x_i - c_{a_i}|^2`` (scikit-learn's inertia).
      n_iters: Lloyd iterations run by the kept restart.
      converged: whether it stopped on ``tol`` rather than ``max_iter``.
      spherical: which objective was minimised.
      seed: the seed of the kept restart.
      restart_objectives: ``[n_init]`` final objective of every restart.
    """

    centroids: np.ndarray
    means: np.ndarray
    assignment: np.ndarray
    sizes: np.ndarray
    objective: float
    n_iters: int
    converged: bool
    spherical: bool
    seed: int
    restart_objectives: np.ndarray


def _spherical(cost: Any, spherical: Any) -> bool:
    """Whether k-means runs on the unit sphere, from ``cost`` or the ``spherical`` switch."""
    if spherical is not None and not isinstance(spherical, (bool, np.bool_)):
        raise TypeError(f"spherical: expected True or False, got {spherical!r}")
    if cost is None:
        return costs.check_kind(paper.COST).spherical if spherical is None else bool(spherical)
    by_cost = costs.check_kind(cost).spherical
    if spherical is not None and bool(spherical) != by_cost:
        raise ValueError(f"spherical: {spherical} disagrees with cost {costs.resolve(cost).name!r}")
    return by_cost


def kmeans(
    features: Any,
    k: int,
    *,
    cost: Any = None,
    spherical: bool | None = None,
    n_init: int = 1,
    max_iter: int = 50,
    tol: float = 1e-4,
    seed: int = 0,
    init_sample: int | None = None,
    init_restarts: int | None = None,
    chunk_size: int | None = None,
    progress: Callable[[KMeansStatus], None] | None = None,
    shard: Any = "auto",
    stream_rows: int | None = None,
    exclude: Any = None,
) -> KMeansResult:
    """Cluster ``features`` into ``k`` clusters.

    Args:
      features: ``[N, D]`` array (a ``np.memmap`` is read in chunks).
      k: number of clusters, ``1 <= k <= N``.
      cost: the cost the clusters are for (:func:`uotsel.costs.resolve`; default the paper's,
        cosine): an angular cost clusters on the unit sphere (spherical k-means, the paper's
        choice), a distance cost with Euclidean k-means (the squared-distance objective).
      spherical: the same choice as a switch (True: spherical); give ``cost`` or this.
      n_init: seeded restarts of the whole run (seeds ``seed, seed + 1, ...``), at most
        ``MAX_RESTARTS``; the lowest objective is kept.
      max_iter: Lloyd iterations per restart.
      tol: stop when an iteration lowers the objective by less than ``tol`` relative.
      seed: base seed, ``seed + n_init <= 2^63``; equal seeds give equal results on the same
        machine.
      init_sample: size of the random sample the seeding runs on (default
        ``min(N, 16 k + 4096)``); candidates are compared on ``8`` times as many samples.
      init_restarts: candidate seedings (greedy k-means++ plus ``INIT_ITERATIONS`` Lloyd
        iterations on the sample); the one with the lowest objective on the evaluation sample
        starts the Lloyd iterations on all the data. Default :func:`default_restarts`.
      chunk_size: rows per assignment block (default: keep the ``[chunk, k]`` block near 32 MB).
      progress: called with a :class:`KMeansStatus` after every seeding candidate and every
        Lloyd iteration (:func:`print_progress` writes them to stderr as lines).
      shard: split the samples over devices (:mod:`uotsel.mesh`): ``"auto"`` (when there are
        several devices and the float32 features exceed :data:`uotsel.mesh.SHARD_ABOVE_BYTES`),
        ``"on"``, ``"off"``, or a :class:`jax.sharding.Mesh` with a ``"sources"`` axis. Each
        device assigns its own rows and the cluster sums are added across devices: the same
        clustering as on one device, up to the order of floating-point sums.
      stream_rows: leave the features on the host (a memory map stays on disk) and read them
        ``stream_rows`` rows at a time in every iteration, so the device holds one block of
        that many rows (plus the seeding samples, ``O(k)`` rows) whatever ``N``: the same
        clustering as with the features on the device. Rows are checked as they are read.
      exclude: indices of rows that are samples in no cluster (their ``assignment`` is -1,
        :data:`uotsel._checks.NO_UNIT`), such as the all-zero rows ``uotsel-train extract``
        writes for images it could not read (``uotsel kmeans --skip-zero-rows``). The others
        are clustered exactly as they would be alone; they are read in place.

    Returns:
      A :class:`KMeansResult`: ``centroids`` (unit rows when spherical), and ``means``, the
      mean raw feature of each cluster's members (the unit features to select from).

    Raises:
      ValueError, TypeError: for NaN/inf or (spherical) all-zero rows, ``k`` out of range, or
        bad settings, before any clustering work.

    Example:
      >>> import numpy as np
      >>> from uotsel import kmeans
      >>> x = np.concatenate([np.tile([3.0, 0.0], (5, 1)), np.tile([0.0, 1.0], (5, 1))])
      >>> res = kmeans(x + 0.01, 2, seed=0)
      >>> sorted(res.sizes.tolist()), bool(res.assignment[0] != res.assignment[-1])
      ([5, 5], True)
      >>> sorted(np.round(res.means.astype(float), 2).tolist())
      [[0.01, 1.01], [3.01, 0.01]]
    """
    if exclude is not None:
        return _without(
            features,
            exclude,
            functools.partial(
                kmeans,
                k=k,
                cost=cost,
                spherical=spherical,
                n_init=n_init,
                max_iter=max_iter,
                tol=tol,
                seed=seed,
                init_sample=init_sample,
                init_restarts=init_restarts,
                chunk_size=chunk_size,
                progress=progress,
                shard=shard,
                stream_rows=stream_rows,
            ),
        )
    features, k, settings = _checked(
        features, k, n_init, max_iter, tol, seed, init_sample, init_restarts, chunk_size
    )
    n_init, max_iter, init_restarts, chunk_size, sample = settings
    spherical = _spherical(cost, spherical)
    n = features.shape[0]

    if stream_rows is not None:
        stream_rows = _checks.check_positive_int(stream_rows, "stream_rows")
    x, steps, chunk_size = _place(features, spherical, chunk_size, shard, stream_rows)
    best = None
    objectives = []
    for restart in range(n_init):
        run_seed = int(seed) + restart
        report = _reporter(progress, restart + 1, n_init)
        centroids = seed_centroids(
            x,
            k,
            spherical=spherical,
            seed=run_seed,
            sample=sample,
            restarts=init_restarts,
            tol=tol,
            progress=report,
            n_valid=n,
        )
        result = _run(
            x, n, centroids, spherical, max_iter, tol, run_seed, chunk_size, report, steps
        )
        objectives.append(result.objective)
        if best is None or result.objective < best.objective:
            best = result
    means = _member_means(features, best.assignment, best.centroids, max(chunk_size, 65536))
    return best._replace(means=means, restart_objectives=np.asarray(objectives))


def _without(features: Any, exclude: Any, cluster: Callable[..., KMeansResult]) -> KMeansResult:
    """``cluster`` run on the rows of ``features`` not in ``exclude``, its assignment spread
    back over all rows with :data:`uotsel._checks.NO_UNIT` for the excluded ones."""
    if not hasattr(features, "shape"):
        features = _checks.as_float_array(features, "features", 2)
    n = features.shape[0]
    left_out = np.unique(_checks.whole_numbers(exclude, "exclude").ravel())
    if left_out.size and (left_out[0] < 0 or left_out[-1] >= n):
        raise ValueError(
            f"exclude: row indices must be in [0, {n}), got range [{left_out[0]}, {left_out[-1]}]"
        )
    if left_out.size == n:
        raise ValueError(f"exclude: leaves none of the {n} rows to cluster")
    if not left_out.size:
        return cluster(features)
    rows = np.setdiff1d(np.arange(n), left_out, assume_unique=True)
    result = cluster(samples.RowSubset(features, rows))
    assignment = np.full(n, _checks.NO_UNIT, result.assignment.dtype)
    assignment[rows] = result.assignment
    return result._replace(assignment=assignment)


def _checked(features, k, n_init, max_iter, tol, seed, init_sample, init_restarts, chunk_size):
    """The arguments of :func:`kmeans` checked: ``(features, k, (n_init, max_iter,
    init_restarts, chunk_size, sample))`` with the defaults filled in."""
    if not hasattr(features, "shape"):
        features = _checks.as_float_array(features, "features", 2)
    if len(features.shape) != 2:
        raise ValueError(f"features: expected a 2-d array, got shape {tuple(features.shape)}")
    _checks.as_float_array(features[:0], "features", 2)
    n, d = features.shape
    if n == 0 or d == 0:
        raise ValueError(f"features: is empty (shape {tuple(features.shape)})")
    k = _checks.check_positive_int(k, "k")
    if k > n:
        raise ValueError(f"k: {k} clusters for only {n} samples")
    n_init = _checks.check_positive_int(n_init, "n_init")
    max_iter = _checks.check_positive_int(max_iter, "max_iter")
    if init_restarts is None:
        init_restarts = default_restarts(k)
    init_restarts = _checks.check_positive_int(init_restarts, "init_restarts")
    for name, value in (("n_init", n_init), ("init_restarts", init_restarts)):
        if value > MAX_RESTARTS:
            raise ValueError(f"{name}: at most {MAX_RESTARTS} restarts, got {value}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol: must be a finite number >= 0, got {tol!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    if seed + n_init > 2**63:
        raise ValueError(f"seed: must be below 2**63 - n_init = {2**63 - n_init}, got {seed}")
    if chunk_size is None:
        chunk_size = default_chunk(n, k)
    chunk_size = min(_checks.check_positive_int(chunk_size, "chunk_size"), n)
    sample = min(n, 16 * k + 4096) if init_sample is None else init_sample
    sample = _checks.check_positive_int(sample, "init_sample")
    if sample < k:
        raise ValueError(f"init_sample: {sample} is fewer than k={k}")
    sample = min(sample, n)
    return features, k, (n_init, max_iter, init_restarts, chunk_size, sample)


def default_restarts(k: int) -> int:
    """Candidate seedings for ``k`` clusters: ``INIT_RESTARTS`` (8) up to ``k = 256``, then
    ``SEEDING_BUDGET // k`` (2048 // k), at least 1."""
    return max(1, min(INIT_RESTARTS, SEEDING_BUDGET // k))


def default_chunk(n: int, k: int) -> int:
    """Rows per assignment block: the ``[chunk, k]`` score block stays near
    :data:`uotsel.lloyd.SCORE_BLOCK` float32 entries (32 MB), and at least 256 rows (or all of
    them)."""
    return min(n, max(256, lloyd.SCORE_BLOCK // k))


def _member_means(features: Any, assignment: np.ndarray, centroids: np.ndarray, chunk: int):
    """``[K, D]`` float32 mean of the raw rows of ``features`` in each cluster, read ``chunk``
    rows at a time and summed in float64; empty clusters take their centroid."""
    k = centroids.shape[0]
    acc = ClassMeanAccumulator(k, features.shape[1])
    for lo in range(0, features.shape[0], chunk):
        hi = min(features.shape[0], lo + chunk)
        acc.update(np.asarray(features[lo:hi]), assignment[lo:hi])
    result = acc.result(allow_empty=True)
    return np.where((result.counts == 0)[:, None], centroids, result.means).astype(np.float32)


def _subset(x: Any, size: int, rng: np.random.Generator, n: int) -> Array:
    """A uniform random sample of ``size`` of the first ``n`` rows of ``x`` (all of them when
    that is all), on the device."""
    if size >= n:
        if isinstance(x, jax.Array) and x.shape[0] == n:
            return x
        return samples.take(x, np.arange(n))
    return samples.take(x, np.sort(rng.choice(n, size=size, replace=False)))


def seed_centroids(
    x: Array,
    k: int,
    *,
    spherical: bool = True,
    seed: int = 0,
    sample: int | None = None,
    restarts: int = INIT_RESTARTS,
    tol: float = 1e-4,
    progress: Callable[..., None] | None = None,
    n_valid: int | None = None,
) -> Array:
    """Initial centroids ``[k, D]`` for Lloyd iterations on ``x`` ``[N, D]`` (unit rows when
    spherical): ``restarts`` candidates, each greedy k-means++
    (:func:`uotsel.lloyd.greedy_plus_plus`) on a random sample of ``sample`` rows followed by
    ``INIT_ITERATIONS`` Lloyd iterations on it; the candidate with the lowest objective on an
    evaluation sample of ``EVALUATION_FACTOR * sample`` rows is returned (ties go to the earlier
    one). Memory: the two samples, ``O(k)`` rows each.
    ``progress``, when given, is called as ``progress("seeding", step, steps, objective)``.
    Only the first ``n_valid`` rows of ``x`` are samples (default: all).
    """
    n = x.shape[0] if n_valid is None else n_valid
    sample = min(n, 16 * k + 4096) if sample is None else min(n, sample)
    rng = np.random.default_rng(seed)  # any non-negative integer, however large
    y = _subset(x, sample, rng, n)
    z = _subset(x, EVALUATION_FACTOR * sample, rng, n)
    chunk_y, chunk_z = default_chunk(y.shape[0], k), default_chunk(z.shape[0], k)
    trials = 2 + int(math.log(k))
    keys = jax.random.split(jax.random.key(int(rng.integers(2**62))), restarts)
    best, best_objective = None, math.inf
    for r in range(restarts):
        centroids = lloyd.greedy_plus_plus(y, k, trials, spherical, keys[r])
        centroids, _, _ = _lloyd(y, centroids, spherical, INIT_ITERATIONS, tol, chunk_y)
        objective = float(lloyd.assign(z, centroids, spherical, chunk_z).objective)
        if progress is not None:
            progress("seeding", r + 1, restarts, objective)
        if objective < best_objective * (1.0 - 1e-6):
            best, best_objective = centroids, objective
    return best


class _Steps(NamedTuple):
    """The assignment and update steps for where the samples live (:mod:`uotsel.samples`)."""

    assign: Callable[..., lloyd.Assignment]
    update: Callable[..., Array]


def _place(features, spherical, chunk, shard, stream_rows):
    """``(samples, steps, chunk)``: the samples on one device, split over a mesh, or (with
    ``stream_rows``) left on the host."""
    n, d = features.shape
    if stream_rows is not None:
        if shard not in ("auto", "off"):
            raise ValueError("stream_rows: streaming runs on one device; leave shard at auto")
        rows = samples.HostRows(features, spherical, stream_rows)
        return rows, _Steps(lloyd.assign_streamed, lloyd.update_streamed), min(chunk, stream_rows)
    mesh = meshes.resolve(shard, n, d, 4)
    if mesh is None:
        steps = _Steps(lloyd.assign, lloyd.update)
        return samples.on_device(features, spherical, chunk), steps, chunk
    x = samples.on_mesh(features, spherical, mesh)
    split = functools.partial(lloyd.assign_on_mesh, mesh=mesh, n_valid=n)
    return x, _Steps(split, lloyd.update), min(chunk, x.shape[0] // mesh.size)


def _lloyd(x, centroids, spherical, max_iter, tol, chunk, progress=None, steps=None):
    """Lloyd iterations from ``centroids``; returns ``(centroids, iterations, converged)``.
    ``progress``, when given, is called as ``progress("lloyd", step, steps, objective, moved)``;
    ``steps`` replaces :func:`uotsel.lloyd.assign` and :func:`uotsel.lloyd.update` (see
    :func:`_place`)."""
    steps = _Steps(lloyd.assign, lloyd.update) if steps is None else steps
    previous, labels = math.inf, None
    for iters in range(1, max_iter + 1):
        step = steps.assign(x, centroids, spherical, chunk)
        centroids = steps.update(x, step, centroids, spherical)
        objective = float(step.objective)
        if progress is not None:
            xp = np if isinstance(step.labels, np.ndarray) else jnp
            moved = None if labels is None else float(xp.mean(step.labels != labels))
            progress("lloyd", iters, max_iter, objective, moved)
            labels = step.labels
        if previous - objective <= tol * abs(objective):
            return centroids, iters, True
        previous = objective
    return centroids, max_iter, False


def _reporter(progress, restart: int, restarts: int):
    """The ``progress`` of :func:`seed_centroids` and :func:`_lloyd` as a maker of
    :class:`KMeansStatus` for ``progress``; None stays None."""
    if progress is None:
        return None

    def report(stage, step, steps, objective, moved=None):
        progress(KMeansStatus(stage, restart, restarts, step, steps, objective, moved))

    return report


def _run(x, n, centroids, spherical, max_iter, tol, seed, chunk, progress, steps) -> KMeansResult:
    """One restart's Lloyd iterations on the first ``n`` rows of ``x`` (see :func:`_place`)."""
    lloyd = _lloyd(x, centroids, spherical, max_iter, tol, chunk, progress, steps)
    centroids, iters, converged = lloyd
    final = steps.assign(x, centroids, spherical, chunk)
    return KMeansResult(
        centroids=np.asarray(centroids),
        means=np.zeros((0, x.shape[1]), np.float32),  # filled in for the kept restart
        assignment=meshes.to_host(final.labels)[:n],
        sizes=np.asarray(final.counts).astype(np.int64),
        objective=float(final.objective),
        n_iters=iters,
        converged=converged,
        spherical=spherical,
        seed=seed,
        restart_objectives=np.zeros(0),
    )
