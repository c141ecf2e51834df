"""The panels of ``uotsel plot`` for a selection taken by a budget: where a budget in images
cuts the ranking of whole units (``uotsel.selection/1`` with ``unit_images``), and, for a
per-sample selection (``uotsel.selection/2``), the scores of the samples of each unit holding
chosen samples with the cut (the lowest chosen score), or without the scores the chosen
samples of each unit.

:func:`check_unit_images` and :func:`check_samples` check the record's fields;
:func:`read_sample_scores` reads the scores (``--scores``) and the per-sample unit ids
(``--unit-ids``, by default the selection's source file) and checks them against the record;
:func:`draw_budget` and :func:`draw_samples` draw on matplotlib axes they are given (this module
does not import matplotlib).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from uotsel import _checks, io, npfiles
from uotsel.per_sample import best_samples

__all__ = [
    "SHOWN_UNITS",
    "SampleScores",
    "Samples",
    "check_samples",
    "check_unit_images",
    "draw_budget",
    "draw_samples",
    "read_sample_scores",
]

SHOWN_UNITS = 20  # units whose samples are drawn
_SCORES_OUT = "the .npy that 'uotsel select --per-sample --scores-out' writes"
_JITTER = 0.32  # half the height of a unit's strip of samples, in rows


class Samples(NamedTuple):
    """What a per-sample record says of its chosen samples: ``counts`` ``[U]`` chosen samples
    of each unit of ``selected``, their number ``chosen``, the number of samples scored and
    the ``cut`` (the lowest chosen score)."""

    counts: np.ndarray
    chosen: int
    samples: int
    cut: float


class SampleScores(NamedTuple):
    """The score ``[N]`` and unit id ``[N]`` of every sample, and ``[N]`` whether it was
    chosen (the ``chosen`` best, as ``uotsel select --per-sample`` took them)."""

    scores: np.ndarray
    unit_ids: np.ndarray
    chosen: np.ndarray


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_unit_images(
    record: dict[str, Any], selected: np.ndarray, k: int, path: str, arg: str
) -> np.ndarray | None:
    """``[K]`` int64 images of every unit (``unit_images``, by unit id) of a record taken by a
    budget in images; None when the record has none.

    Raises:
      ValueError: one line starting with ``arg``: not ``K`` whole numbers, or the selected
        units do not hold ``images_used`` by them.
    """
    images = record.get("unit_images")
    if images is None or not isinstance(record.get("budget_images"), int):
        return None
    if not isinstance(images, list) or len(images) != k or not all(map(_whole, images)):
        raise ValueError(f"{arg}: {path} has a 'unit_images' that is not {k} image counts")
    sizes = np.asarray(images, np.int64)
    if int(sizes[selected].sum()) != record.get("images_used"):
        raise ValueError(
            f"{arg}: {path} has 'unit_images' by which the selected units do not hold 'images_used'"
        )
    return sizes


def check_samples(record: dict[str, Any], selected: np.ndarray, path: str, arg: str) -> Samples:
    """The chosen samples a per-sample record (``uotsel.selection/2``) describes.

    Raises:
      ValueError: one line starting with ``arg``: ``samples_per_unit`` is not a positive count
        for every unit of ``selected`` adding up to ``selected_samples``, or
        ``selected_score_range`` is not two finite numbers.
    """
    block = record["per_sample"]
    counts = block.get("samples_per_unit")
    if (
        not isinstance(counts, list)
        or len(counts) != selected.size
        or not all(_whole(c) and c > 0 for c in counts)
        or sum(counts) != block["selected_samples"]
    ):
        raise ValueError(
            f"{arg}: {path} has a 'samples_per_unit' that does not give the chosen samples of "
            "each unit of 'selected'"
        )
    bounds = block.get("selected_score_range")
    if not (
        isinstance(bounds, list)
        and len(bounds) == 2
        and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        and np.isfinite(bounds).all()
    ):
        raise ValueError(f"{arg}: {path} has no finite 'selected_score_range' (the cut)")
    return Samples(
        np.asarray(counts, np.int64),
        int(block["selected_samples"]),
        int(block["samples"]),
        float(bounds[0]),
    )


# ---------------------------------------------------------------------------------------------
# Reading --scores and --unit-ids


def read_sample_scores(
    record: dict[str, Any],
    data: dict[str, Any],
    scores_path: str,
    unit_ids_path: str | None,
    selection_path: str,
) -> SampleScores:
    """The scores of ``--scores`` and the unit ids of ``--unit-ids`` (default: the per-sample
    unit ids of the source file the selection names), checked against the per-sample record
    (``data`` from :func:`uotsel.plot.check_record`): one score per sample, the same cut and
    the same chosen samples in each unit.

    Raises:
      ValueError: one line naming ``--scores`` or ``--unit-ids``.
    """
    told: Samples = data["per_sample"]
    scores = _read_scores(scores_path, told.samples)
    chosen = best_samples(scores, told.chosen)
    low = float(scores[chosen[-1]])
    if abs(low - told.cut) > 1e-6 * max(1.0, abs(told.cut)):
        raise ValueError(
            f"--scores: {scores_path} is not the scores of this selection: its {told.chosen} "
            f"best samples are cut at {low:.7g}, the selection at {told.cut:.7g}"
        )
    path = unit_ids_path or _recorded_source(record, selection_path)
    ids = _read_unit_ids(path, told.samples, data["ranking"].size)
    flag = "--unit-ids" if unit_ids_path else "--scores"
    _check_unscored(scores, ids, path, flag)
    _check_counts(ids[chosen], data, path, flag)
    mask = np.zeros(scores.size, bool)
    mask[chosen] = True
    return SampleScores(scores, ids, mask)


def _read_scores(path: str, n: int) -> np.ndarray:
    """``[n]`` float scores from the ``.npy`` (or one-array ``.npz``) at ``path``: finite, or
    ``-inf`` for a sample in no unit."""
    values = np.asarray(npfiles.read_array(path, "--scores", mmap=False))
    if values.dtype.kind != "f":
        raise ValueError(
            f"--scores: {path} holds {values.dtype}, expected float scores ({_SCORES_OUT})"
        )
    if values.shape != (n,):
        raise ValueError(
            f"--scores: {path} holds {values.size} values (shape {values.shape}); the selection "
            f"scored {n} samples"
        )
    bad = np.flatnonzero(~np.isfinite(values) & ~np.isneginf(values))
    if bad.size:
        raise ValueError(f"--scores: {path} has NaN or inf (first at sample {int(bad[0])})")
    return values


def _recorded_source(record: dict[str, Any], selection_path: str) -> str:
    """The source file the selection names: as recorded, else beside the selection file."""
    inputs = record.get("inputs")
    source = inputs.get("source") if isinstance(inputs, dict) else None
    path = source.get("path") if isinstance(source, dict) else None
    if not isinstance(path, str):
        raise ValueError("--unit-ids: required: the selection does not name its source file")
    beside = os.path.join(os.path.dirname(selection_path), path)
    for candidate in (path, beside):
        if os.path.isfile(candidate):
            return candidate
    raise ValueError(
        f"--unit-ids: required: the selection's source file {path} is not found (give the "
        "per-sample unit ids: a unit file with 'assignment' or 'labels', or one id a sample)"
    )


def _read_unit_ids(path: str, n: int, k: int) -> np.ndarray:
    """``[n]`` unit ids in ``[0, k)`` or -1 (no unit): ``assignment`` or ``labels`` of an
    ``.npz``, a ``.npy``, or text with one id a line."""
    key = None
    if npfiles.kind_of(npfiles.read_head(path, "--unit-ids")) == "npz":
        keys = io.npz_keys(path, "--unit-ids") or []
        key = next((name for name in ("assignment", "labels") if name in keys), None)
        if key is None:
            raise ValueError(
                f"--unit-ids: {path} has no per-sample unit ids ('assignment' or 'labels')"
            )
    ids = io.read_ids(path, "--unit-ids", key=key)
    if ids.size != n:
        raise ValueError(
            f"--unit-ids: {path} holds {ids.size} unit ids for the {n} scores of --scores"
        )
    return _checks.unit_ids(ids, f"--unit-ids: {path}", k)


def _check_unscored(scores: np.ndarray, ids: np.ndarray, path: str, flag: str) -> None:
    """A score is ``-inf`` exactly where the unit id is -1 (a sample in no unit, never
    scored), for ``scores`` ``[n]`` and ``ids`` ``[n]``; ``flag`` is named otherwise."""
    odd = np.flatnonzero(np.isneginf(scores) != (ids == _checks.NO_UNIT))
    if odd.size:
        i = int(odd[0])
        raise ValueError(
            f"{flag}: sample {i} has score {float(scores[i]):.6g} and unit id {int(ids[i])} in "
            f"{path}; a sample scores -inf exactly when its unit id is -1 (in no unit)"
        )


def _check_counts(chosen_ids: np.ndarray, data: dict[str, Any], path: str, flag: str) -> None:
    """The chosen samples fall in the units of ``selected``, as many in each as the record
    says; ``flag`` (``--unit-ids`` when given, else ``--scores``) is named otherwise."""
    k = data["ranking"].size
    found = np.bincount(chosen_ids, minlength=k)
    told = np.zeros(k, np.int64)
    told[data["selected"]] = data["per_sample"].counts
    if not np.array_equal(found, told):
        unit = int(np.flatnonzero(found != told)[0])
        raise ValueError(
            f"{flag}: the samples chosen by --scores and the unit ids of {path} do not fit the "
            f"selection: unit {unit} holds {int(found[unit])} of them, by the selection "
            f"{int(told[unit])}"
        )


# ---------------------------------------------------------------------------------------------
# Drawing


def _legend_outside(ax: Any, markerscale: float = 1.0) -> None:
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0,
        fontsize=9,
        markerscale=markerscale,
    )


def draw_budget(ax: Any, data: dict[str, Any]) -> None:
    """The images of the ranked units added up, best first, against the budget: the taken
    units, the first unit that did not fit (the cut) and the budget line."""
    ranking, sizes = data["ranking"], data["unit_images"]
    taken, budget = data["selected"].size, int(data["about"]["budget_images"])
    total = np.cumsum(sizes[ranking])
    shown = min(ranking.size, max(2 * taken + 1, SHOWN_UNITS))
    ranks = np.arange(1, shown + 1)
    ax.plot(
        ranks[:taken],
        total[:taken],
        "o-",
        color="tab:blue",
        ms=3,
        lw=1.4,
        label=f"taken: {taken} units, {int(total[taken - 1])} images",
    )
    if shown > taken:
        ax.plot(
            ranks[taken:], total[taken:shown], "o-", color="0.6", ms=3, lw=1.2, label="not taken"
        )
    ax.axhline(budget, color="tab:green", lw=1.4, ls="--", label=f"budget: {budget} images")
    if taken < ranking.size:
        cut = int(ranking[taken])
        ax.axvline(taken + 0.5, color="tab:red", lw=1.4, ls=":", label="the cut")
        ax.plot(
            [taken + 1],
            [total[taken]],
            "D",
            color="tab:red",
            ms=8,
            label=f"first unit that did not fit:\nunit {cut}, {int(sizes[cut])} images",
        )
        what = (
            f"{taken} units ({int(total[taken - 1])} images) fit; the unit at rank {taken + 1} "
            f"({int(sizes[cut])} images) would bring them to {int(total[taken])}"
        )
    else:
        what = f"every unit fits ({int(total[-1])} images)"
    ax.set(xlim=(0.5, shown + 0.5), ylim=(0, max(budget, int(total[shown - 1])) * 1.08))
    ax.set_xlabel(f"rank of the source unit, best first (the first {shown} of {ranking.size})")
    ax.set_ylabel("images of the units up to this rank\n(linear scale: a budget is a sum)")
    ax.grid(color="0.92")
    ax.set_axisbelow(True)
    ax.set_title(f"Where the budget of {budget} images cuts the ranking: {what}", fontsize=11)
    _legend_outside(ax)


def _row_label(name: str, chosen: int, size: int | None) -> str:
    return f"{name} ({chosen} of {size})" if size is not None else f"{name} ({chosen})"


def draw_samples(ax: Any, data: dict[str, Any], scale_rule: Any) -> None:
    """The samples of the best-ranked units holding chosen samples: with the scores, each
    unit's samples as a strip of points (chosen in colour) with a box of their quartiles and
    the cut as a line; without them, the chosen samples of each unit as bars."""
    if data["sample_scores"] is None:
        _draw_chosen_counts(ax, data)
    else:
        _draw_score_strips(ax, data, scale_rule)


def _draw_score_strips(ax: Any, data: dict[str, Any], scale_rule: Any) -> None:
    told, drawn = data["per_sample"], data["sample_scores"]
    units = data["selected"][:SHOWN_UNITS]
    rows = np.arange(units.size)
    members = [np.flatnonzero(drawn.unit_ids == u) for u in units]
    rng = np.random.default_rng(0)
    ys = [
        np.full(m.size, r) + rng.uniform(-_JITTER, _JITTER, m.size)
        for r, m in zip(rows, members, strict=True)
    ]
    index, y = np.concatenate(members), np.concatenate(ys)
    scores, chosen = drawn.scores[index], drawn.chosen[index]
    ax.scatter(
        scores[~chosen], y[~chosen], s=5, color="0.62", alpha=0.6, lw=0, label="samples not chosen"
    )
    ax.scatter(
        scores[chosen], y[chosen], s=5, color="tab:blue", alpha=0.7, lw=0, label="chosen samples"
    )
    ax.boxplot(
        [drawn.scores[m] for m in members],
        positions=rows,
        orientation="horizontal",
        widths=0.7,
        showfliers=False,
        manage_ticks=False,
        medianprops={"color": "black", "lw": 1.2},
        boxprops={"lw": 0.9},
        whiskerprops={"lw": 0.9},
        capprops={"lw": 0.9},
    )
    ax.axvline(
        told.cut,
        color="tab:red",
        lw=1.6,
        ls="--",
        label=f"the cut: lowest chosen\nscore, {told.cut:.4g}",
    )
    log, rule = scale_rule(np.append(scores, told.cut))
    ax.set_xscale("log" if log else "linear")
    labels = [
        _row_label(data["names"][r], int(told.counts[r]), m.size)
        for r, m in zip(rows, members, strict=True)
    ]
    ax.set_yticks(rows, labels, fontsize=8.5)
    ax.set_ylim(units.size - 0.5, -0.5)
    ax.grid(axis="x", color="0.92")
    ax.set_axisbelow(True)
    ax.set_xlabel(
        "sample score s(x) = LSE_j((g_j - C(x, t_j)) / eps), higher = closer to the "
        f"target\n({rule})"
    )
    ax.set_ylabel("unit (chosen of its samples)")
    ax.set_title(
        f"Scores of the samples of the {units.size} best-ranked of the {data['selected'].size} "
        f"units holding chosen samples; the {told.chosen} best of all {told.samples} samples "
        "are chosen\nboxes: quartiles and median, whiskers to 1.5 interquartile ranges",
        fontsize=11,
    )
    _legend_outside(ax, markerscale=2.5)


def _draw_chosen_counts(ax: Any, data: dict[str, Any]) -> None:
    told = data["per_sample"]
    counts = told.counts[:SHOWN_UNITS]
    rows = np.arange(counts.size)
    ax.barh(rows, counts, height=0.7, color="tab:blue", label="chosen samples")
    for row, count in zip(rows, counts, strict=True):
        ax.annotate(
            str(int(count)),
            (count, row),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color="0.25",
        )
    ax.set_yticks(rows, data["names"][: counts.size], fontsize=8.5)
    ax.set_ylim(counts.size - 0.5, -0.5)
    ax.set_xlim(0, counts.max() * 1.12)
    ax.grid(axis="x", color="0.92")
    ax.set_axisbelow(True)
    ax.set_xlabel("chosen samples of the unit (linear scale, from 0)")
    ax.set_ylabel("unit")
    ax.set_title(
        f"Chosen samples of the {counts.size} best-ranked of the {data['selected'].size} units "
        f"holding any; the {told.chosen} best of {told.samples} samples, cut at s(x) = "
        f"{told.cut:.4g}\n--scores (the scores 'uotsel select --per-sample --scores-out' "
        "writes) draws each unit's score distribution and the cut",
        fontsize=11,
    )
    _legend_outside(ax)
