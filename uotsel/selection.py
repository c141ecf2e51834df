"""Rank source units by a strategy's scores, take the top K (or the units a budget in images
holds, :mod:`uotsel.budget`), and expand units to samples.

Ordering rule (deterministic, documented): units are sorted by decreasing score (by
``log_scores`` when the strategy has them, so that units whose ``P 1`` underflows are still
ordered), and units with exactly equal scores are ordered by increasing unit id.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from uotsel import _checks, budget, costs, ott_convert, paper
from uotsel.settings import UOT, resolve
from uotsel.strategies import STRATEGIES, Scores

__all__ = ["Selection", "expand_to_samples", "rank", "select", "split_groups"]


class Selection(NamedTuple):
    """Result of :func:`select`. Unit ids index the rows of ``source``.

    Attributes:
      strategy: the strategy's name.
      selected: ``[top_k]`` int64 ids of the selected units, best first.
      ranking: ``[K]`` int64 all unit ids, best first.
      scores: ``[K]`` float64 score of each unit (indexed by unit id; higher = more similar).
      log_scores: ``[K]`` float64 ``log(P 1)`` for ``uot``, else None.
      groups: ``n_groups`` arrays of unit ids, best first, splitting ``ranking`` into groups of
        equal size (sizes differ by at most one; the earlier groups take the extra units).
      sample_indices: ``[S]`` int64 ascending indices of the samples whose unit is selected,
        when per-sample ``unit_ids`` were given, else None.
      settings: the strategy's settings as used (defaults filled in; arrays omitted).
      diagnostics: solver figures for ``uot`` (``n_iters``, ``error``, ``rounding``,
        ``converged``), else {}.
      solver: the :class:`~uotsel.SinkhornOutput` for ``uot`` (its potentials rebuild the plan,
        see :func:`uotsel.plan.selection_mass`), else None.
      budget_images: the budget in images the units were taken by, else None.
      images_used: with a budget, the images of the selected units (at most the budget), else
        None.
    """

    strategy: str
    selected: np.ndarray
    ranking: np.ndarray
    scores: np.ndarray
    log_scores: np.ndarray | None
    groups: tuple[np.ndarray, ...]
    sample_indices: np.ndarray | None
    settings: dict[str, Any]
    diagnostics: dict[str, Any]
    solver: Any = None
    budget_images: int | None = None
    images_used: int | None = None


class _PaperTopK(int):
    """The default ``top_k`` of :func:`select`, the paper's number of classes: an ``int`` that
    :func:`select` tells apart from a ``top_k`` given with ``budget_images``."""

    def __repr__(self) -> str:
        return repr(int(self))


_DEFAULT_TOP_K = _PaperTopK(paper.TOP_K_CLASSES)


def rank(scores: Any) -> np.ndarray:
    """Unit ids ``[K]`` by decreasing ``scores`` ``[K]``, equal scores by increasing id."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores: expected a 1-d array, got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores: contains NaN")
    return np.lexsort((np.arange(scores.size), -scores)).astype(np.int64)


def split_groups(ranking: Any, n_groups: int) -> tuple[np.ndarray, ...]:
    """Split a ranking ``[K]`` into ``n_groups`` consecutive groups of (near) equal size."""
    n_groups = _checks.check_positive_int(n_groups, "n_groups")
    ranking = np.asarray(ranking)
    if n_groups > ranking.size:
        raise ValueError(f"n_groups: {n_groups} is more than the {ranking.size} units")
    return tuple(np.array_split(ranking, n_groups))


def expand_to_samples(selected: Any, unit_ids: Any, num_units: int | None = None) -> np.ndarray:
    """Ascending indices of the samples whose unit id (``unit_ids`` ``[N]``, each in ``[0, K)``
    with ``K`` = ``num_units`` when given, or -1 for a sample in no unit, never expanded) is in
    ``selected``."""
    unit_ids = _checks.unit_ids(unit_ids, "unit_ids", num_units)
    return np.flatnonzero(np.isin(unit_ids, np.asarray(selected))).astype(np.int64)


def select(
    source: Any,
    target: Any = None,
    settings: UOT | None = None,
    *,
    strategy: str = "uot",
    top_k: int | None = _DEFAULT_TOP_K,
    budget_images: int | None = None,
    unit_sizes: Any = None,
    n_groups: int | None = None,
    unit_ids: Any = None,
    **options: Any,
) -> Selection:
    """Choose the ``top_k`` source units most similar to the target units, or as many of the
    most similar as a budget in images holds.

    Args:
      source: ``[K, D]`` source unit features (class means or cluster centroids of the
        pre-training data); or an ott-jax ``Geometry``/``PointCloud`` with ``target`` None
        (:func:`uotsel.ott_convert.features_of`).
      target: ``[M, D]`` target unit features (class means of the fine-tuning data).
      settings: a :class:`uotsel.UOT` (default ``UOT()``, the paper's): its fields fill the
        strategy's settings of the same names (all of them for ``uot``; ``cost`` and ``eps_c``
        for ``greedy_ot`` and ``nearest``); the keyword ``**options`` override them.
      strategy: one of ``uot`` (default, the paper's), ``greedy_ot``, ``nearest``, ``random``,
        ``label`` (see :mod:`uotsel.strategies`).
      top_k: how many units to select; ``None`` selects every unit ``label`` matches (for the
        other strategies ``None`` means all units). Left out (or None) with ``budget_images``.
      budget_images: instead of ``top_k``, the most images to select: whole units are taken
        best first and the first unit that does not fit ends the selection, so ``selected`` is
        a prefix of ``ranking`` (``label``: of the matching units) holding at most this many
        images (:func:`uotsel.budget.fit_budget`). From the size of the best unit to the
        images of all units (``label``: of the matching units).
      unit_sizes: with ``budget_images``, ``[K]`` images of each unit (a unit file's
        ``counts``); by default counted from ``unit_ids``; both given must agree.
      n_groups: number of equal groups the ranking is split into; default
        ``min(paper.N_GROUPS, K)`` (the paper's domain-gap study uses 10).
      unit_ids: optional ``[N]`` unit id of every pre-training sample, or -1 for a sample in
        no unit (an unreadable image: never in ``sample_indices``, counted in no unit); fills
        ``sample_indices``.
      **options: the strategy's settings, the paper's by default. ``uot``: the fields of
        :class:`uotsel.UOT` (``cost``, ``eps_c``, ``eps``, ``tau_source``, ``tau_target``,
        ``threshold``, ``max_iter``, ``method``), ``source_weights``, ``target_weights``
        (ones), ``init``, ``shard`` (``"auto"``: split the source axis over devices for large
        problems, see :func:`uotsel.transport`). ``greedy_ot``: ``cost`` (``"l2"`` on the raw
        means, as Cui et al. 2018 and the paper's Table 1), ``eps_c`` (scales the cosine cost
        only), ``target_weights``. ``nearest``: ``cost`` (``"cosine"``), ``eps_c``.
        ``random``: ``seed`` (0). ``label``: ``matching``.

    Returns:
      A :class:`Selection`.

    Raises:
      ValueError, TypeError: for an unknown strategy or setting (the message lists the valid
        ones) or any bad argument, before any computation; ``budget_images`` below the size of
        the best unit, once the ranking is known (the message gives that size).

    Example:
      >>> import numpy as np, uotsel
      >>> rng = np.random.default_rng(0)
      >>> target = rng.normal(size=(3, 8))
      >>> source = np.concatenate([target + 0.01 * rng.normal(size=(3, 8)),
      ...                          rng.normal(size=(5, 8))])
      >>> sel = uotsel.select(source, target, top_k=3, n_groups=2)
      >>> sorted(sel.selected.tolist())
      [0, 1, 2]
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    spec = STRATEGIES[strategy]
    if _checks.is_ott_object(source):
        source, target, options = _from_ott(source, target, spec.defaults, settings, options)
    unknown = sorted(set(options) - set(spec.defaults))
    if unknown:
        raise TypeError(
            f"{unknown[0]}: not a setting of strategy {strategy!r}; valid: "
            f"{', '.join(spec.defaults) or 'none'}"
        )
    from_value = {} if settings is None else resolve(settings)._asdict()
    used = {**spec.defaults, **{k: v for k, v in from_value.items() if k in spec.defaults}}
    used.update(options)
    if "cost" in used:
        used["cost"] = costs.resolve(used["cost"])

    source = _checks.as_float_array(source, "source", 2)
    _checks.check_nonempty(source, "source", 0, "units")
    num_units = source.shape[0]
    if spec.check is not None:
        spec.check(num_units, used)
    if spec.needs_target:
        target = _checks.as_float_array(target, "target", 2)
        _checks.check_nonempty(target, "target", 0, "units")
    sizes = None
    if budget_images is not None:
        top_k, sizes = None, _budget_sizes(top_k, budget_images, num_units, unit_sizes, unit_ids)
    elif unit_sizes is not None:
        raise ValueError("unit_sizes: only read with budget_images")
    if top_k is not None:
        top_k = _checks.check_positive_int(top_k, "top_k")
        if top_k > num_units:
            raise ValueError(f"top_k: {top_k} is more than the {num_units} source units")
    n_groups = min(paper.N_GROUPS, num_units) if n_groups is None else n_groups
    n_groups = _checks.check_positive_int(n_groups, "n_groups")
    if n_groups > num_units:
        raise ValueError(f"n_groups: {n_groups} is more than the {num_units} source units")
    if unit_ids is not None:
        unit_ids = np.asarray(unit_ids)
        expand_to_samples(np.zeros(0, np.int64), unit_ids, num_units)  # validates only

    result: Scores = spec.fn(source, target, **used)
    order_by = result.log_scores if result.log_scores is not None else result.scores
    ranking = rank(order_by)
    if top_k is None:
        top_k = int(np.count_nonzero(result.scores > 0)) if strategy == "label" else num_units
    elif strategy == "label" and top_k > np.count_nonzero(result.scores > 0):
        raise ValueError(
            f"top_k: {top_k} is more than the {int(np.count_nonzero(result.scores > 0))} "
            "units listed in matching (use top_k=None to take them all)"
        )
    if sizes is not None:
        top_k = _fit_budget(ranking[:top_k], sizes, budget_images, strategy)
    selected = ranking[:top_k]

    diagnostics: dict[str, Any] = {}
    if result.solver is not None:
        diagnostics = {
            "n_iters": int(result.solver.n_iters),
            "error": float(result.solver.error),
            "rounding": float(result.solver.rounding),
            "converged": bool(result.solver.converged),
        }
    return Selection(
        strategy=strategy,
        selected=selected,
        ranking=ranking,
        scores=np.asarray(result.scores, np.float64),
        log_scores=result.log_scores,
        groups=split_groups(ranking, n_groups),
        sample_indices=None if unit_ids is None else expand_to_samples(selected, unit_ids),
        settings={k: p for k, p in ((k, _plain(v)) for k, v in used.items()) if p is not _OMIT},
        diagnostics=diagnostics,
        solver=result.solver,
        budget_images=None if sizes is None else int(budget_images),
        images_used=None if sizes is None else int(sizes[selected].sum()),
    )


def _budget_sizes(
    top_k: Any, budget_images: Any, num_units: int, unit_sizes: Any, unit_ids: Any
) -> np.ndarray:
    """The ``[K]`` unit sizes a budget is taken by, once ``top_k`` is known to be left out and
    the budget to be at most the images of all units."""
    if top_k is not None and top_k is not _DEFAULT_TOP_K:
        raise ValueError("top_k: cannot be combined with budget_images (give one)")
    if unit_sizes is None and unit_ids is None:
        raise ValueError(
            "budget_images: needs unit_sizes or unit_ids to count the images of each unit"
        )
    sizes = budget.unit_sizes(num_units, counts=unit_sizes, unit_ids=unit_ids)
    budget.check_budget(budget_images, int(sizes.sum()), f"{num_units} source units")
    return sizes


def _fit_budget(
    candidates: np.ndarray, sizes: np.ndarray, budget_images: Any, strategy: str
) -> int:
    """How many of the ``candidates`` (the ranking; ``label``: its matching units) the budget
    takes."""
    if strategy == "label":
        total = int(sizes[candidates].sum())
        budget.check_budget(budget_images, total, f"{candidates.size} units listed in matching")
    return budget.fit_budget(candidates, sizes, budget_images)


def _from_ott(geom, target, defaults, settings, options):
    """An ott-jax geometry given as ``source``: its points (or cost matrix) and the settings it
    implies, below the caller's (:func:`uotsel.ott_convert.features_of`)."""
    if target is not None:
        raise TypeError("target: must be None when source is an ott-jax geometry (it holds both)")
    source, target, given = ott_convert.features_of(geom)
    if settings is not None:
        given.pop("eps", None)  # the settings' eps is the caller's
    given = {k: v for k, v in given.items() if k in defaults}
    return source, target, {**given, **options}


_OMIT = object()


def _plain(value: Any) -> Any:
    """Settings as JSON-friendly scalars; arrays (weights, matching, init) are left out."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (costs.Cost, costs.CustomCost)):
        return value.name
    if isinstance(value, np.generic) or (hasattr(value, "ndim") and value.ndim == 0):
        return np.asarray(value).item()
    return _OMIT
