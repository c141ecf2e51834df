"""Selection strategies: each scores every source unit; a higher score means more similar.

All strategies share one signature, ``strategy(source, target, **settings) -> Scores``, and are
looked up by name in :data:`STRATEGIES`:

- ``uot`` (the paper's): solve the unbalanced OT problem between source and target units and
  score each source unit by the mass it sends, ``P 1``; ``log_scores`` holds ``log(P 1)``,
  which stays exact where ``P 1`` underflows.
- ``greedy_ot`` (Cui et al., 2018): minus the (target-weighted) mean cost from the source unit
  to all target units. Default ``cost="l2"`` on the raw means, their setting and the paper's
  Greedy-OT baseline (Table 1); ``cost="cosine"`` (compared with l2 in its Table 4) is an option.
- ``nearest``: minus the smallest cost from the source unit to any target unit.
- ``random``: a seeded uniform draw per unit (a uniform random subset of units).
- ``label``: 1 for the source units listed in ``matching`` (e.g. the ImageNet bird classes for
  a bird target), 0 for the rest.

``eps_c`` only scales the cosine cost (``l2`` and ``sqeuclidean`` ignore it), and a ranking by
mean or smallest cost does not depend on it. ``greedy_ot`` and ``nearest`` compute the cost on
rescaled inputs and scale it back in float64: the cosine cost with ``eps_c = 1``, then divided
by ``eps_c``; ``l2``/``sqeuclidean`` on features divided by a common power of two (exact, see
:func:`uotsel.costs.pairwise`). The scores are those of the cost as defined, but neither a small
``eps_c`` nor very large or very small features overflow or underflow in float32.

Every default that follows the paper comes from :mod:`uotsel.paper`; the ``uot`` strategy's
settings are the fields of :class:`uotsel.UOT` (its defaults) and the per-problem data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from uotsel import _checks, costs, paper
from uotsel.feature_transport import transport
from uotsel.settings import UOT
from uotsel.unbalanced import SinkhornOutput

__all__ = ["STRATEGIES", "Scores", "Strategy"]


class Scores(NamedTuple):
    """Per-source-unit scores of one strategy.

    Attributes:
      scores: ``[K]`` float64, higher = more similar to the target.
      log_scores: ``[K]`` float64 ``log(P 1)`` for ``uot``, else None. Rankings use it when
        present.
      solver: the :class:`~uotsel.SinkhornOutput` for ``uot``, else None.
    """

    scores: np.ndarray
    log_scores: np.ndarray | None = None
    solver: SinkhornOutput | None = None


class Strategy(NamedTuple):
    """A named scoring rule with its settings and their defaults.

    ``check(num_units, settings)``, when given, validates the settings before anything else
    (so that a missing setting is reported before, say, a ``top_k`` larger than it allows).
    """

    name: str
    fn: Callable[..., Scores]
    defaults: dict[str, Any]
    needs_target: bool = True
    check: Callable[[int, dict[str, Any]], None] | None = None


def _uot(source, target, *, source_weights, target_weights, init, shard, **fields) -> Scores:
    out = transport(
        source,
        target,
        UOT(**fields),
        source_weights=source_weights,
        target_weights=target_weights,
        init=init,
        shard=shard,
    )
    log_scores = np.asarray(out.log_row_sums, np.float64)
    return Scores(np.exp(log_scores), log_scores, out)


def _cost64(source, target, cost, eps_c) -> np.ndarray:
    """The ``[K, M]`` cost in float64, computed on rescaled inputs (see the module docstring);
    power-of-two factors are exact, so only overflow and underflow change."""
    kind = costs.resolve(cost)
    if isinstance(kind, costs.CustomCost):
        return np.asarray(costs.cost_matrix(source, target, kind), np.float64)
    if kind.uses_eps_c:
        _checks.check_positive_scalar(eps_c, "eps_c")
        c = np.asarray(costs.cost_matrix(source, target, kind, eps_c=1.0), np.float64)
        return c / np.asarray(eps_c, np.float64)
    source, target = costs.prepare(source, target)
    one = jnp.asarray(1.0, source.dtype)
    built = costs.pairwise(kind, source, target, one, source.shape[0], rescale=False)
    costs.raise_if_flagged(built, source, target, kind)
    return np.ldexp(np.asarray(built.cost, np.float64), int(built.exponent))


def _greedy_ot(source, target, *, cost, eps_c, target_weights) -> Scores:
    c = _cost64(source, target, cost, eps_c)
    if target_weights is None:
        w = np.full(c.shape[1], 1.0 / c.shape[1])
    else:
        w = np.asarray(_checks.as_float_array(target_weights, "target_weights", 1), np.float64)
        if w.shape != (c.shape[1],):
            raise ValueError(f"target_weights: expected shape [{c.shape[1]}], got {list(w.shape)}")
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError("target_weights: must be finite and > 0")
        w = w / w.sum()
    return Scores(-(c @ w))


def _nearest(source, target, *, cost, eps_c) -> Scores:
    c = _cost64(source, target, cost, eps_c)
    return Scores(-c.min(axis=1))


def _check_seed(num_units: int, settings: dict[str, Any]) -> None:
    seed = settings["seed"]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")


def _random(source, target, *, seed) -> Scores:
    _check_seed(source.shape[0], {"seed": seed})
    return Scores(np.random.default_rng(int(seed)).random(source.shape[0]))


def _check_matching(num_units: int, settings: dict[str, Any]) -> None:
    matching = settings["matching"]
    if matching is None:
        raise ValueError(
            "matching: the label strategy needs the ids of the matching source units "
            "(e.g. matching=[3, 17, 40])"
        )
    ids = np.asarray(matching)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError("matching: expected a 1-d list of integer source unit ids")
    if ids.size == 0:
        raise ValueError("matching: is empty")
    if ids.min() < 0 or ids.max() >= num_units:
        raise ValueError(
            f"matching: ids must be in [0, {num_units}), got range [{ids.min()}, {ids.max()}]"
        )


def _label(source, target, *, matching) -> Scores:
    n = source.shape[0]
    _check_matching(n, {"matching": matching})
    scores = np.zeros(n)
    scores[np.asarray(matching)] = 1.0
    return Scores(scores)


_PAPER = UOT()
# The uot strategy's settings: the fields of uotsel.UOT and the per-problem data.
_UOT_DEFAULTS = {**_PAPER._asdict(), "source_weights": None, "target_weights": None}

STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("uot", _uot, {**_UOT_DEFAULTS, "init": None, "shard": "auto"}),
        Strategy(
            "greedy_ot",
            _greedy_ot,
            dict(cost=paper.GREEDY_OT_COST, eps_c=_PAPER.eps_c, target_weights=None),
        ),
        Strategy("nearest", _nearest, dict(cost=_PAPER.cost, eps_c=_PAPER.eps_c)),
        Strategy("random", _random, dict(seed=0), needs_target=False, check=_check_seed),
        Strategy("label", _label, dict(matching=None), needs_target=False, check=_check_matching),
    )
}
