"""Paired differences between the arms of an experiment, with their spread and a verdict.

The demo runs every arm once per world (data seed) and fine-tuning seed, so two arms are
compared pair by pair: the difference of their test top-1 in the same world with the same seed.
:func:`compare` summarises those differences (mean, min and max, how many are positive, an exact
two-sided sign test, a bootstrap interval of the mean that resamples seeds within each world, the
mean per world) and gives a verdict at a ``level`` (0.05, or less where several comparisons
are made at once: :data:`ALPHA` divided by their number, Bonferroni's correction):

- ``holds``: the 95% interval lies above 0 and the sign test gives p < ``level``;
- ``reversed``: the interval lies below 0 and p < ``level``;
- ``not shown``: anything else; the difference is within what the seeds move.

The verdict pools the pairs of every world; how many worlds' means are ahead is reported
beside it. The seeds of one world share its images and its pre-trained backbone, so the pairs
speak for the worlds drawn, not for worlds in general.

    >>> d = compare("a", [[0.02, 0.04, 0.03], [0.01, 0.05, 0.02]])
    >>> d.positive, d.n, round(d.mean, 3), d.verdict
    (6, 6, 0.028, 'holds')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["ALPHA", "Paired", "claim", "compare", "sign_test"]

ALPHA = 0.05  # the sign test's level and 1 - the interval's coverage
BOOTSTRAP = 2000  # resamples for the interval


class Paired(NamedTuple):
    """The paired differences ``arm - other`` (``differences`` ``[worlds, seeds]``)."""

    other: str
    differences: np.ndarray
    mean: float
    low: float  # the smallest difference
    high: float  # the largest
    positive: int
    negative: int
    n: int
    sign_p: float
    interval: tuple[float, float]  # bootstrap 95% interval of the mean
    world_means: list[float]
    level: float  # the sign test's level for the verdict
    verdict: str


def sign_test(positive: int, negative: int) -> float:
    """Exact two-sided sign test of ``positive`` against ``negative`` pairs (ties dropped):
    the chance of a split at least this uneven if either sign were equally likely."""
    n = positive + negative
    if n == 0:
        return 1.0
    k = max(positive, negative)
    tail = sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n
    return min(1.0, 2 * tail)


def _interval(diff: np.ndarray, seed: int) -> tuple[float, float]:
    """Bootstrap interval of the mean of ``diff`` ``[worlds, seeds]``: seeds resampled with
    replacement within each world, the worlds kept."""
    rng = np.random.default_rng(seed)
    worlds, seeds = diff.shape
    picks = rng.integers(0, seeds, size=(BOOTSTRAP, worlds, seeds))
    means = np.take_along_axis(diff[None], picks, axis=2).mean(axis=(1, 2))
    low, high = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return float(low), float(high)


def _verdict(interval: tuple[float, float], p: float, level: float) -> str:
    if p >= level:
        return "not shown"
    if interval[0] > 0:
        return "holds"
    if interval[1] < 0:
        return "reversed"
    return "not shown"


def compare(
    other: str, differences: Sequence[Sequence[float]], *, level: float = ALPHA, seed: int = 0
) -> Paired:
    """Summarise ``differences`` ``[worlds, seeds]`` of an arm minus ``other``; ``level`` is
    the sign test's level for the verdict, ``seed`` the bootstrap's.

    Raises:
      ValueError: when ``differences`` is not a non-empty 2-d table.
    """
    diff = np.asarray(differences, np.float64)
    if diff.ndim != 2 or diff.size == 0:
        raise ValueError(f"differences: expected [worlds, seeds], got shape {diff.shape}")
    positive, negative = int(np.sum(diff > 0)), int(np.sum(diff < 0))
    p = sign_test(positive, negative)
    interval = _interval(diff, seed)
    world_means = diff.mean(axis=1)
    return Paired(
        other=other,
        differences=diff,
        mean=float(diff.mean()),
        low=float(diff.min()),
        high=float(diff.max()),
        positive=positive,
        negative=negative,
        n=int(diff.size),
        sign_p=p,
        interval=interval,
        world_means=world_means.tolist(),
        level=level,
        verdict=_verdict(interval, p, level),
    )


def claim(arm: str, d: Paired) -> str:
    """One sentence stating what the pairs of ``arm`` and ``d.other`` show."""
    ahead = sum(m > 0 for m in d.world_means)
    spread = (
        f"mean {d.mean:+.3f}, 95% interval {d.interval[0]:+.3f} to {d.interval[1]:+.3f}, "
        f"{d.positive} of {d.n} pairs positive, sign test p = {d.sign_p:.2g} against "
        f"{d.level:.2g}; ahead in {ahead} of {len(d.world_means)} worlds"
    )
    if d.verdict == "holds":
        return f"{arm} beat {d.other} ({spread})"
    if d.verdict == "reversed":
        return f"{arm} did worse than {d.other} ({spread})"
    return f"{arm} against {d.other}: not shown at this size ({spread})"
