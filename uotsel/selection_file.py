"""Selection files (JSON): the record of a :class:`uotsel.Selection` with its inputs and solver
figures (:func:`selection_record`), written by ``uotsel select`` (:func:`write_selection`) and
read by training and plotting (:func:`read_selection`). ``docs/cli.md`` describes the fields.

Two formats, one home:

- ``uotsel.selection/1``: units selected whole (``--top-k``, ``--budget-images``);
- ``uotsel.selection/2``: ``/1`` plus ``"mode": "per_sample"`` and a ``per_sample`` block, for
  samples chosen one by one (:func:`sample_selection_record`). Its ``selected`` lists the units
  holding chosen samples, not units taken whole, so a reader that knows only ``/1`` refuses
  the file instead of training on whole units.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from uotsel import budget, io

__all__ = [
    "PER_SAMPLE",
    "PER_SAMPLE_FORMAT",
    "SAMPLE_ORDER",
    "SAMPLE_SCORE",
    "SELECTION_FORMAT",
    "SELECTION_FORMATS",
    "is_per_sample",
    "read_selection",
    "sample_selection_record",
    "selection_record",
    "write_selection",
]


SELECTION_FORMAT = "uotsel.selection/1"
PER_SAMPLE_FORMAT = "uotsel.selection/2"
SELECTION_FORMATS = (SELECTION_FORMAT, PER_SAMPLE_FORMAT)
PER_SAMPLE = "per_sample"  # the "mode" of a per-sample record
# How the samples of a per-sample record (and its --samples-out) are ordered.
SAMPLE_ORDER = "best_first"
SAMPLE_SCORE = "s(x) = LSE_j((g_j - C(x, t_j)) / eps)"


def read_selection(path: str, arg: str = "selection") -> dict[str, Any]:
    """The selection record (either format) at ``path``, checked for the fields training
    reads: ``selected`` and ``ranking`` lists of non-negative integers (booleans refused),
    ``groups`` a list of such lists, and for a per-sample record its ``per_sample`` counts.

    Raises:
      ValueError: one line starting with ``arg``: a folder, a missing, empty or unreadable
        file, not JSON, or not a selection.
    """
    record = io.read_json(path, arg, "a uotsel selection file")
    if not isinstance(record, dict) or record.get("format") not in SELECTION_FORMATS:
        raise ValueError(f"{arg}: {path} is not a uotsel selection file")
    if record["format"] == PER_SAMPLE_FORMAT:
        block = record.get(PER_SAMPLE)
        if (
            record.get("mode") != PER_SAMPLE
            or not isinstance(block, dict)
            or not all(_count(block.get(k)) for k in ("samples", "selected_samples"))
        ):
            raise ValueError(f"{arg}: {path} is a per-sample selection without its sample counts")
    for key in ("selected", "ranking"):
        if not _id_list(record.get(key)):
            raise ValueError(f"{arg}: {path} has no valid list {key!r} of unit ids")
    groups = record.get("groups")
    if not isinstance(groups, list) or not all(_id_list(g) for g in groups):
        raise ValueError(f"{arg}: {path} has no list of score groups")
    return record


def is_per_sample(record: dict[str, Any]) -> bool:
    """Whether a record from :func:`read_selection` chose samples one by one."""
    return record.get("mode") == PER_SAMPLE


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _id_list(ids: Any) -> bool:
    return isinstance(ids, list) and all(
        isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in ids
    )


def write_selection(target: Any, record: dict[str, Any]) -> None:
    """A selection file (see :func:`selection_record`, :func:`sample_selection_record`)."""
    if record.get("format") not in SELECTION_FORMATS:
        raise ValueError(f"record: not a {' or '.join(SELECTION_FORMATS)} record")
    io.write_json(target, record)


def selection_record(
    selection: Any,
    source: io.Units,
    target: io.Units | None,
    version: str,
    target_mass: Any = None,
) -> dict:
    """The JSON-ready record of a :class:`~uotsel.Selection` (see ``docs/cli.md``).

    ``selected_wnids`` is added for the embedded ImageNet classes, ``target_mass`` /
    ``target_mass_total`` when ``target_mass`` (a :class:`uotsel.plan.TargetMass`) is given,
    and ``budget_images`` / ``images_used`` / ``unit_images`` (the images of every unit, by
    id, from the source's ``counts`` or per-sample unit ids) for a selection taken by a budget
    in images.
    """

    def ids(a: np.ndarray) -> list[int]:
        return [int(x) for x in a]

    def floats(a: np.ndarray | None) -> list[float | str | None] | None:
        return None if a is None else [_json_number(x) for x in a]

    def describe(units: io.Units) -> dict[str, Any]:
        return {
            "path": units.source,
            "sha256": units.sha256,
            "units": int(units.means.shape[0]),
            "dim": int(units.means.shape[1]),
        }

    record: dict[str, Any] = {
        "format": SELECTION_FORMAT,
        "uotsel_version": version,
        "strategy": selection.strategy,
        "top_k": int(selection.selected.size),
    }
    if selection.budget_images is not None:
        record["budget_images"] = int(selection.budget_images)
        record["images_used"] = int(selection.images_used)
        if source.counts is not None or source.unit_ids is not None:
            record["unit_images"] = ids(_unit_images(source))
    record["selected"] = ids(selection.selected)
    if source.names is not None:
        record["selected_names"] = [str(source.names[i]) for i in selection.selected]
    wnids = io.unit_wnids(source)
    if wnids is not None:
        record["selected_wnids"] = [str(wnids[i]) for i in selection.selected]
    record.update(
        ranking=ids(selection.ranking),
        scores=floats(selection.scores),
        log_scores=floats(selection.log_scores),
        groups=[ids(g) for g in selection.groups],
        settings={k: _json_number(v) for k, v in selection.settings.items()},
        solver={k: _json_number(v) for k, v in selection.diagnostics.items()} or None,
        inputs={"source": describe(source), "target": None if target is None else describe(target)},
    )
    if target_mass is not None:
        record["target_mass"] = floats(np.asarray(target_mass.selected, np.float64))
        record["target_mass_total"] = floats(np.asarray(target_mass.total, np.float64))
    if selection.sample_indices is not None:
        record["num_selected_samples"] = int(selection.sample_indices.size)
    return record


def _unit_images(source: io.Units) -> np.ndarray:
    """``[K]`` images of every unit of ``source``, as a budget counted them."""
    return budget.unit_sizes(source.means.shape[0], counts=source.counts, unit_ids=source.unit_ids)


def _json_number(value: Any) -> Any:
    """A number as JSON holds it: infinities as the strings ``"inf"``/``"-inf"``, NaN as null;
    anything else unchanged."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    elif isinstance(value, np.integer):
        return int(value)
    return value


def sample_selection_record(
    picked: Any,
    source: io.Units,
    target: io.Units,
    version: str,
    target_mass_total: Any = None,
    features: dict[str, Any] | None = None,
) -> dict:
    """The ``uotsel.selection/2`` record of a :class:`uotsel.per_sample.SampleSelection` made
    with per-sample unit ids (see ``docs/cli.md``).

    The unit-level fields are those of :func:`selection_record` for its ``units``, except
    ``selected`` (and ``top_k``, ``selected_names``): the units holding chosen samples, in the
    units' ranking order. ``budget_images`` and ``images_used`` count samples;
    ``num_selected_samples`` is the number chosen. The ``per_sample`` block gives the score,
    the order of the chosen samples, their number among all samples, the score range of all
    samples and of the chosen ones (its low end is the cut), the chosen samples of each
    selected unit and the ``features`` they came from (``path``, ``rows``, ``dim``).
    ``target_mass_total`` (``[M]``, ``P^T 1``) is recorded when given.
    """
    held = picked.units_holding
    if held is None:
        raise ValueError("picked: a per-sample record needs the per-sample unit ids")
    units = picked.units._replace(selected=held, sample_indices=None)
    base = selection_record(units, source, target, version)
    block = {
        "score": SAMPLE_SCORE,
        "order": SAMPLE_ORDER,
        "samples": int(picked.scores.size),
        "selected_samples": int(picked.samples.size),
        "score_range": [_json_number(x) for x in picked.score_range],
        "selected_score_range": [_json_number(x) for x in picked.selected_range],
        "samples_per_unit": [int(picked.unit_counts[u]) for u in held],
        "features": features,
    }
    head = {
        "format": PER_SAMPLE_FORMAT,
        "uotsel_version": version,
        "mode": PER_SAMPLE,
        "strategy": base["strategy"],
        "top_k": base["top_k"],
        "budget_images": int(picked.budget_images),
        "images_used": int(picked.samples.size),
    }
    record = {**head, **{k: v for k, v in base.items() if k not in head}}
    record["num_selected_samples"] = int(picked.samples.size)
    if target_mass_total is not None:
        record["target_mass_total"] = [_json_number(x) for x in np.asarray(target_mass_total)]
    record[PER_SAMPLE] = block
    return record
