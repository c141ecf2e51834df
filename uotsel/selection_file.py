"""Selection files (``uotsel.selection/1`` JSON): the record of a :class:`uotsel.Selection`
with its inputs and solver figures (:func:`selection_record`), written by ``uotsel select``
(:func:`write_selection`) and read by training and plotting (:func:`read_selection`).
``docs/cli.md`` describes the fields.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from uotsel import io

__all__ = ["SELECTION_FORMAT", "read_selection", "selection_record", "write_selection"]


SELECTION_FORMAT = "uotsel.selection/1"


def read_selection(path: str, arg: str = "selection") -> dict[str, Any]:
    """The ``uotsel.selection/1`` record at ``path``, checked for the fields training reads:
    ``selected`` and ``ranking`` lists of non-negative integers (booleans refused) and
    ``groups`` a list of such lists.

    Raises:
      ValueError: one line starting with ``arg``: a folder, a missing, empty or unreadable
        file, not JSON, or not a selection.
    """
    record = io.read_json(path, arg, "a uotsel selection file")
    if not isinstance(record, dict) or record.get("format") != SELECTION_FORMAT:
        raise ValueError(f"{arg}: {path} is not a uotsel selection file")
    for key in ("selected", "ranking"):
        if not _id_list(record.get(key)):
            raise ValueError(f"{arg}: {path} has no valid list {key!r} of unit ids")
    groups = record.get("groups")
    if not isinstance(groups, list) or not all(_id_list(g) for g in groups):
        raise ValueError(f"{arg}: {path} has no list of score groups")
    return record


def _id_list(ids: Any) -> bool:
    return isinstance(ids, list) and all(
        isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in ids
    )


def write_selection(target: Any, record: dict[str, Any]) -> None:
    """A selection file (``uotsel.selection/1``, see :func:`selection_record`)."""
    if record.get("format") != SELECTION_FORMAT:
        raise ValueError(f"record: not a {SELECTION_FORMAT} record")
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
    and ``budget_images`` / ``images_used`` for a selection taken by a budget in images.
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
