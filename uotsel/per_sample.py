"""Scores for every sample: the unit-level solution scores any feature by the soft c-transform
of its target potential, so that samples are ranked by the rule that ranks the units.

For a solved unit-level problem (target features ``t`` ``[M, D]``, target potential ``g``
``[M]``, entropic regularisation ``eps``, cost ``C``), a feature ``x`` ``[D]`` scores

    s(x) = LSE_j((g_j - C(x, t_j)) / eps)

over the target units the solver did not mask (the kernel carries no weights, as in
:func:`uotsel.sinkhorn`; ``C`` is the problem's own cost, ``eps_c`` included). At the solver's
output the mass a source unit ``i`` of weight ``a_i`` and mean ``x_i`` sends is

    log(P 1)_i = tau_source / (tau_source + eps) * log a_i + eps / (tau_source + eps) * s(x_i),

so with unit weights ``s`` orders the unit means exactly as ``log(P 1)`` orders the units, and
a sample equal to its unit's mean gets the ``s`` from which its unit's ``log(P 1)`` follows.

- :func:`sample_scores`: ``s`` of every row of ``[N, D]`` features, a chunk of rows at a time
  through one compiled program (:mod:`uotsel.chunk_scores`); memory-mapped ``.npy`` files and
  feature parts (:class:`uotsel.shards.RowShards`) are read chunk by chunk.
- :func:`best_samples`: the ``S`` best samples, best first.
- :func:`select_samples`: both after solving the unit-level problem, as :func:`uotsel.select`;
  with ``unit_ids`` it also checks, from sums made while the chunks are scored, that the rows
  of each unit average to that unit's feature (:mod:`uotsel.member_means`). A sample whose
  unit id is -1 (in no unit: an image ``uotsel-train extract`` could not read, whose row is
  zeros) is not scored: its score is ``-inf``, below every score, and it is never chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from uotsel import _checks, chunk_scores, costs, member_means
from uotsel import mesh as meshes
from uotsel.selection import Selection, expand_to_samples, select
from uotsel.settings import UOT

__all__ = ["DEFAULT_CHUNK", "SampleSelection", "best_samples", "sample_scores", "select_samples"]

# Rows scored at a time: 4096 x 2048 float32 features are 32 MiB. On a 2-core CPU larger
# chunks are slower (per_sample in docs/benchmarks.md).
DEFAULT_CHUNK = 4096

Array = jax.Array


class SampleSelection(NamedTuple):
    """Result of :func:`select_samples`.

    Attributes:
      samples: ``[S]`` int64 indices of the chosen samples, best first (decreasing score,
        equal scores by increasing index).
      scores: ``[N]`` the score ``s(x)`` of every sample (the features' float dtype, float32
        for float32 features); ``-inf`` for a sample in no unit (unit id -1), never chosen.
      budget_images: ``S``, the number of samples asked for (each sample is one image).
      units: the unit-level ``uot`` :class:`~uotsel.Selection` whose solution scored the
        samples: its ``ranking``, ``scores``, ``log_scores``, ``groups`` and ``solver``; no
        unit is taken whole, so its ``selected`` is its whole ranking.
      unit_counts: ``[K]`` int64 chosen samples of each unit, when ``unit_ids`` were given,
        else None.
    """

    samples: np.ndarray
    scores: np.ndarray
    budget_images: int
    units: Selection
    unit_counts: np.ndarray | None = None

    @property
    def units_holding(self) -> np.ndarray | None:
        """``[U]`` int64 ids of the units holding chosen samples, in the units' ranking order
        (best first); None without ``unit_ids``."""
        if self.unit_counts is None:
            return None
        ranking = self.units.ranking
        return ranking[self.unit_counts[ranking] > 0]

    @property
    def score_range(self) -> tuple[float, float]:
        """``(lowest, highest)`` score of all samples in a unit (those scored ``-inf``, in
        no unit, left out)."""
        scored = self.scores[self.scores > -np.inf]
        return float(np.min(scored)), float(np.max(scored))

    @property
    def selected_range(self) -> tuple[float, float]:
        """``(lowest, highest)`` score of the chosen samples: the lowest is the cut."""
        chosen = self.scores[self.samples]
        return float(chosen[-1]), float(chosen[0])


class _Problem(NamedTuple):
    """What scoring needs from a solution, checked: the cost, the target potential, the
    unmasked targets and ``eps``, in the dtype of the computation."""

    kind: Any
    eps_c: float
    eps: float
    g: np.ndarray
    keep: np.ndarray


def _solution_parts(solution: Any, settings: UOT | None) -> tuple[Any, UOT]:
    """The solver output and the settings (cost, ``eps_c``, ``eps``) of a ``solution``: a
    :class:`~uotsel.SinkhornOutput` or a ``uot`` :class:`~uotsel.Selection`."""
    if settings is not None and not isinstance(settings, UOT):
        raise TypeError(f"settings: expected a uotsel.UOT, got {type(settings).__name__}")
    if isinstance(solution, Selection):
        if solution.strategy != "uot" or solution.solver is None:
            raise ValueError(
                f"solution: scores need a 'uot' selection (its solver output), got "
                f"{solution.strategy!r}"
            )
        out = solution.solver
        if settings is None:
            used = solution.settings
            cost = used.get("cost", UOT().cost)
            if not isinstance(cost, str) or cost not in costs.COSTS:
                raise ValueError(
                    f"settings: the selection's cost {cost!r} is a function; pass "
                    "settings=uotsel.UOT(cost=fn, ...) with the function it was solved with"
                )
            settings = UOT(cost=cost, eps_c=used.get("eps_c", UOT().eps_c), eps=used["eps"])
        return out, settings
    if not all(hasattr(solution, k) for k in ("g", "log_col_sums", "eps")):
        raise TypeError(
            "solution: expected a uotsel.SinkhornOutput or a 'uot' uotsel.Selection, got "
            f"{type(solution).__name__}"
        )
    if settings is None:
        settings = UOT(eps=float(np.asarray(solution.eps)))
    return solution, settings


def _problem(solution: Any, settings: UOT | None, num_targets: int, dtype: Any) -> _Problem:
    out, settings = _solution_parts(solution, settings)
    g = np.asarray(out.g, np.float64)
    log_col = np.asarray(out.log_col_sums, np.float64)
    if g.shape != (num_targets,) or log_col.shape != (num_targets,):
        raise ValueError(
            f"solution: its target potential has shape {g.shape}, expected ({num_targets},) "
            "for the target units given (one problem, not a batch)"
        )
    eps = float(np.asarray(out.eps))
    asked = float(np.asarray(settings.eps, np.float64))
    if not abs(asked - eps) <= 1e-6 * abs(eps):  # the solution holds eps in its dtype
        raise ValueError(f"settings: eps {asked:g} differs from the solution's eps {eps:g}")
    kind = costs.resolve(settings.cost)
    if not isinstance(kind, costs.CustomCost) and kind.uses_eps_c:
        costs.check_eps_c(settings.eps_c, dtype)
    keep = np.isfinite(log_col)
    if not keep.any() or not np.isfinite(g[keep]).all():
        raise ValueError("solution: has no unmasked target unit with a finite potential")
    return _Problem(kind, float(settings.eps_c), eps, g, keep)


def _check_features(features: Any, name: str = "features") -> tuple[int, int]:
    """``(N, D)`` of ``[N, D]`` numeric features, any array-like with ``shape`` and ``dtype``
    (memory maps and :class:`~uotsel.shards.RowShards` are not read)."""
    if not hasattr(features, "shape") or not hasattr(features, "dtype"):
        raise TypeError(f"{name}: expected an [N, D] array, got {type(features).__name__}")
    if len(features.shape) != 2:
        raise ValueError(f"{name}: expected a 2-d array [N, D], got shape {tuple(features.shape)}")
    if np.dtype(features.dtype).kind not in "fiub":
        raise TypeError(f"{name}: expected a numeric array, got dtype {features.dtype}")
    n, d = (int(x) for x in features.shape)
    if n == 0 or d == 0:
        raise ValueError(f"{name}: is empty (shape {tuple(features.shape)})")
    return n, d


def _dtype(features: Any, target: Any) -> Any:
    """The float dtype of the computation (float32 unless both are float64 and x64 is on)."""
    kinds = [np.dtype(x.dtype) for x in (features, target)]
    wide = [k if k.kind == "f" else np.dtype(np.float32) for k in kinds]
    return jax.dtypes.canonicalize_dtype(np.result_type(*wide))


def sample_scores(
    features: Any,
    target: Any,
    solution: Any,
    settings: UOT | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    shard: Any = "auto",
    progress: Callable[[int], Any] | None = None,
) -> np.ndarray:
    """The score ``s(x) = LSE_j((g_j - C(x, t_j)) / eps)`` of every row of ``features``.

    Args:
      features: ``[N, D]`` per-sample features: a numpy array, a memory-mapped ``.npy``, a
        :class:`uotsel.shards.RowShards`, or any array-like indexable by row slices; read
        ``chunk_size`` rows at a time.
      target: ``[M, D]`` the target unit features the solution was computed for.
      solution: a ``uot`` :class:`~uotsel.Selection` (its solver output and cost settings),
        or a :class:`~uotsel.SinkhornOutput` of one problem with ``M`` targets; targets it
        masked (``-inf`` in ``log_col_sums``) are left out.
      settings: the :class:`uotsel.UOT` whose ``cost`` and ``eps_c`` the solution was solved
        with; default: those the selection records, or ``UOT()`` (the paper's) for a
        ``SinkhornOutput``. ``eps`` comes from the solution (a ``settings`` given must have
        the same).
      chunk_size: rows scored at a time, the shape the program is compiled for (the last
        chunk is padded to it); the scores depend on it only through float rounding of the
        cost.
      shard: split each chunk's rows over devices (:func:`uotsel.mesh.resolve` on the
        ``[N, D]`` features: ``"auto"`` splits when there are several devices and they take
        more than 1 GiB).
      progress: called with the number of rows scored after every chunk.

    Returns:
      ``[N]`` numpy scores, higher = closer to the target, in the computation's dtype
      (float32 unless features and target are float64 with ``jax_enable_x64``).

    Raises:
      ValueError, TypeError: starting with ``features``, ``target``, ``solution``,
        ``settings``, ``chunk_size`` or ``shard``; a row that is not finite, beyond
        float32's range, or all zeros under the cosine cost is named (``features: row 7
        ...``) once its chunk is scored.

    Example:
      >>> import numpy as np, uotsel
      >>> from uotsel.per_sample import sample_scores
      >>> target = np.eye(3)[:2]
      >>> sel = uotsel.select(np.eye(3), target, top_k=1, n_groups=1)
      >>> s = sample_scores(np.array([[1.0, 0.1, 0.0], [0.0, 0.0, 1.0]]), target, sel)
      >>> bool(s[0] > s[1])
      True
    """
    return _scores(features, target, solution, settings, chunk_size, shard, progress)


def _scores(
    features: Any,
    target: Any,
    solution: Any,
    settings: UOT | None,
    chunk_size: int,
    shard: Any,
    progress: Callable[[int], Any] | None,
    sums: member_means.MemberSums | None = None,
    skip: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`sample_scores`, each chunk also added to ``sums`` when given; the rows ``skip``
    (``[N]`` bool, when given) are not read into the cost and score ``-inf``."""
    n, d = _check_features(features)
    target = _checks.as_float_array(target, "target", 2)
    _checks.check_nonempty(target, "target", 0, "units")
    if target.shape[1] != d:
        raise ValueError(
            f"target: feature dimension {target.shape[1]} does not match the features' {d}"
        )
    chunk_size = _checks.check_positive_int(chunk_size, "chunk_size")
    dtype = _dtype(features, target)
    problem = _problem(solution, settings, target.shape[0], dtype)
    mesh = meshes.resolve(shard, n, d, np.dtype(dtype).itemsize)
    if isinstance(problem.kind, costs.Cost) and problem.kind.angular:
        _checks.check_nonzero_rows(np.asarray(target), "target")
    _checks.check_finite(target, "target")
    target = np.asarray(target, dtype)
    scorer = chunk_scores.Scorer(problem, target, dtype, min(chunk_size, n), mesh)
    return scorer.run(features, progress, sums, skip)


def best_samples(scores: Any, budget_images: int) -> np.ndarray:
    """The ``budget_images`` best samples: ``[S]`` int64 indices into ``scores``, best first
    (decreasing score, equal scores by increasing index, as :func:`uotsel.rank` orders units).

    Args:
      scores: ``[N]`` scores (:func:`sample_scores`), no NaN; ``-inf`` (a sample in no unit,
        as :func:`select_samples` scores it) is never chosen.
      budget_images: ``S``, from 1 to ``N`` (every sample is one image) less the samples
        scored ``-inf``.

    Raises:
      TypeError: ``budget_images`` is not an integer.
      ValueError: starting with ``budget_images`` (below 1 or above ``N``) or ``scores``.

    Example:
      >>> best_samples([0.5, 2.0, 0.5, 1.0], 3).tolist()
      [1, 3, 0]
    """
    scores = np.asarray(scores)
    if scores.ndim != 1 or scores.size == 0 or scores.dtype.kind not in "fiu":
        raise ValueError(
            f"scores: expected a non-empty 1-d array of numbers, got {scores.dtype} {scores.shape}"
        )
    if np.isnan(scores).any():
        raise ValueError("scores: contains NaN")
    budget = _check_budget(budget_images, scores.size, int(np.isneginf(scores).sum()))
    if budget == scores.size:
        chosen = np.arange(scores.size)
    else:
        cut = np.partition(scores, scores.size - budget)[scores.size - budget]
        above = np.flatnonzero(scores > cut)
        chosen = np.concatenate([above, np.flatnonzero(scores == cut)[: budget - above.size]])
    return chosen[np.lexsort((chosen, -scores[chosen]))].astype(np.int64)


def _check_budget(budget_images: Any, num_samples: int, unscored: int = 0) -> int:
    """``budget_images`` as an int, at most the ``num_samples`` samples less the ``unscored``
    ones (in no unit)."""
    budget = _checks.check_positive_int(budget_images, "budget_images")
    if budget > num_samples - unscored:
        without = f" in a unit ({unscored} of {num_samples} are in none)" if unscored else ""
        raise ValueError(
            f"budget_images: {budget} is more than the {num_samples - unscored} samples{without}"
        )
    return budget


def select_samples(
    features: Any,
    source: Any,
    target: Any,
    settings: UOT | None = None,
    *,
    budget_images: int,
    unit_ids: Any = None,
    n_groups: int | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Callable[[int], Any] | None = None,
    check_means: bool = True,
    **options: Any,
) -> SampleSelection:
    """Solve the ``uot`` problem between the source and target units, score every sample by
    its solution (:func:`sample_scores`) and take the ``budget_images`` best samples.

    Args:
      features: ``[N, D]`` per-sample features (see :func:`sample_scores`), the samples whose
        units ``source`` holds.
      source: ``[K, D]`` source unit features (class or cluster means of ``features``).
      target: ``[M, D]`` target unit features.
      settings: a :class:`uotsel.UOT` (default ``UOT()``, the paper's), as :func:`uotsel.select`.
      budget_images: how many samples to take, from 1 to ``N`` (each sample is one image),
        less the samples in no unit.
      unit_ids: optional ``[N]`` unit id of every sample, in ``[0, K)``, or -1 for a sample in
        no unit (an image that could not be read: its row is not scored, its score is
        ``-inf``, it is never chosen and is left out of the means check); fills
        ``unit_counts``, and the mean of each unit's rows must be its ``source`` row.
      n_groups: equal groups of the unit ranking, as :func:`uotsel.select`.
      chunk_size: rows scored at a time (:func:`sample_scores`).
      progress: called with the number of rows scored after every chunk.
      check_means: with ``unit_ids``, refuse ``features`` whose rows of a unit do not
        average to its ``source`` row (:mod:`uotsel.member_means`: features of another
        backbone or in another order); False for units that are not the plain means of
        ``features`` (means of normalised rows, medoids, units of a larger sample).
      **options: the ``uot`` settings of :func:`uotsel.select` (``cost``, ``eps_c``,
        ``eps``, ``tau_source``, ``tau_target``, ``source_weights``, ``target_weights``,
        ``shard``, ...); ``shard`` also splits the scoring.

    Returns:
      A :class:`SampleSelection`.

    Raises:
      ValueError, TypeError: naming the argument, before anything is solved (a bad row of
        ``features`` once its chunk is scored; features that are not those of ``source``,
        ``features: the mean of unit 3's 40 rows differs from the unit's feature by ...``,
        once every chunk is scored).

    Example:
      >>> import numpy as np, uotsel
      >>> from uotsel.per_sample import select_samples
      >>> rng = np.random.default_rng(0)
      >>> features = rng.normal(size=(40, 5))
      >>> ids = np.arange(40) % 4
      >>> means = uotsel.class_means(features, ids, 4).means
      >>> picked = select_samples(features, means, means[:1], budget_images=6, unit_ids=ids)
      >>> picked.samples.shape, int(picked.unit_counts.sum())
      ((6,), 6)
    """
    n, d = _check_features(features)
    source = _checks.as_float_array(source, "source", 2)
    _checks.check_nonempty(source, "source", 0, "units")
    if source.shape[1] != d:
        raise ValueError(
            f"features: dimension {d} does not match the source units' {source.shape[1]}"
        )
    skip = None
    if unit_ids is not None:
        unit_ids = np.asarray(unit_ids)
        if unit_ids.shape != (n,):
            raise ValueError(
                f"unit_ids: {unit_ids.size} ids for the {n} rows of features (shape "
                f"{unit_ids.shape})"
            )
        expand_to_samples(np.zeros(0, np.int64), unit_ids, source.shape[0])  # validates
        skip = unit_ids == _checks.NO_UNIT
    budget = _check_budget(budget_images, n, 0 if skip is None else int(skip.sum()))
    chunk_size = _checks.check_positive_int(chunk_size, "chunk_size")
    if not isinstance(check_means, (bool, np.bool_)):
        raise TypeError(f"check_means: expected True or False, got {check_means!r}")
    units = select(source, target, settings, top_k=None, n_groups=n_groups, **options)
    sums = None
    if unit_ids is not None and check_means:
        sums = member_means.MemberSums(unit_ids, source.shape[0])
    scores = _scores(
        features,
        target,
        units,
        _used_settings(settings, options),
        chunk_size,
        options.get("shard", "auto"),
        progress,
        sums,
        skip,
    )
    if sums is not None:
        sums.check(source)
    samples = best_samples(scores, budget)
    counts = None
    if unit_ids is not None:
        counts = np.bincount(unit_ids[samples], minlength=source.shape[0]).astype(np.int64)
    return SampleSelection(samples, scores, budget, units, counts)


def _used_settings(settings: UOT | None, options: dict[str, Any]) -> UOT:
    """The cost and ``eps_c`` the unit problem was solved with (a function cost included)."""
    base = UOT() if settings is None else settings
    picked = {k: options[k] for k in ("cost", "eps_c", "eps") if options.get(k) is not None}
    return base._replace(**picked)
