"""Which pre-training samples a run trains on: a ``uotsel select`` file read whole.

The file gives the selected units (``selected``), the full ranking and the 10 score groups; a
config picks one of them (:func:`units`): the selected units, the first ``top_k`` of the
ranking (Fig. 3a), or one score group (Fig. 4b). Before any sample is chosen the file is held
against the pre-training data the run was given (:func:`check_against`): the strategy the
config expects, the number of units, the unit names where both sides name them in one
vocabulary, and the checksum of the unit file when the per-sample unit ids come from the very
file the selection was made from (``uotsel kmeans`` clusters). A selection made from other
pre-training data is refused with one line.

A per-sample selection (``uotsel select --per-sample``; see
:func:`uotsel.selection_file.is_per_sample`) chooses samples one by one: its list of sample
indices (the ``--samples-out`` file) is read by :func:`samples` and held against the selection
by :func:`check_samples`; its ``selected`` (the units holding chosen samples) is never trained
on as whole units.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from uotsel import _checks, paper
from uotsel.io import read_ids, sha256_file
from uotsel.npfiles import read_array
from uotsel.selection_file import PER_SAMPLE, is_per_sample, read_selection

__all__ = ["Choice", "check_against", "check_samples", "read", "samples", "unit_ids", "units"]


class Choice(NamedTuple):
    """``units`` (unit ids trained on, best first) and ``what`` (a description for logs)."""

    units: np.ndarray
    what: str


def read(path: str) -> dict[str, Any]:
    """The selection record at ``path``, checked for the fields training reads.

    Raises:
      ValueError: starting with ``selection:``: missing, a folder, not JSON, not a selection.
    """
    return read_selection(path, "selection")


def units(
    record: dict[str, Any],
    *,
    units: str = "selected",
    top_k: int = paper.TOP_K_CLASSES,
    group: int = -1,
) -> Choice:
    """The units to train on: the file's ``selected`` (``units="selected"``), the first
    ``top_k`` of its ranking (``units="top_k"``: ``top_k`` as :func:`uotsel.select` takes it),
    or, with ``group >= 0``, its score group ``group`` (0 = most similar).

    Raises:
      ValueError: an unknown ``units``, ``top_k`` below 1 or beyond the ranking, or ``group``
        beyond the groups.
    """
    if group < 0 and units == "selected" and is_per_sample(record):
        raise ValueError(
            "selection: chose samples one by one (uotsel select --per-sample); set samples= to "
            "its --samples-out file, or units=top_k or group to train on whole units of its "
            "ranking"
        )
    if group >= 0:
        groups = record["groups"]
        if group >= len(groups):
            raise ValueError(f"group: the selection has {len(groups)} groups (0-{len(groups) - 1})")
        return Choice(np.asarray(groups[group], np.int64), f"score group {group}")
    if units == "selected":
        return Choice(np.asarray(record["selected"], np.int64), "selected units")
    if units != "top_k":
        raise ValueError(f"units: unknown {units!r}; valid: selected, top_k")
    ranking = record["ranking"]
    if not 1 <= top_k <= len(ranking):
        raise ValueError(f"top_k: {top_k} is not between 1 and the {len(ranking)} ranked units")
    return Choice(np.asarray(ranking[:top_k], np.int64), f"top {top_k} of the ranking")


def samples(path: str, num_samples: int) -> Choice:
    """The pre-training samples of a per-sample list: ``units`` holds their ascending indices
    ``[S]`` (the list's order, best first, does not matter to a shuffled stream).

    Args:
      path: ``.npy`` (or ``.npz``, or text with one index a line) of sample indices, as
        ``uotsel select --per-sample --samples-out`` writes.
      num_samples: images of the pre-training data.

    Raises:
      ValueError: starting with ``samples:`` for an unreadable file, fractional or
        non-numeric values, an empty list, an index outside the pre-training data or one
        listed twice.
    """
    ids = read_ids(path, "samples")
    if ids.size == 0:
        raise ValueError(f"samples: {path} lists no samples")
    if ids.min() < 0 or ids.max() >= num_samples:
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise ValueError(
            f"samples: {path} lists sample {bad}, outside the {num_samples} pre-training images"
        )
    ordered = np.sort(ids)
    twice = ordered[1:][ordered[1:] == ordered[:-1]]
    if twice.size:
        raise ValueError(f"samples: {path} lists sample {int(twice[0])} more than once")
    return Choice(ordered, f"per-sample list {path}")


def check_samples(record: dict[str, Any], chosen: np.ndarray, num_samples: int) -> None:
    """Refuse a per-sample list that does not belong to the selection ``record`` given with it.

    Raises:
      ValueError: one line starting with ``samples:`` (the record is not a per-sample
        selection, was made for another number of pre-training images, or chose another
        number of samples).
    """
    if not is_per_sample(record):
        raise ValueError(
            "samples: the selection file chose whole units, not samples (make it with "
            "uotsel select --per-sample), or leave selection empty"
        )
    block = record[PER_SAMPLE]
    if block["samples"] != num_samples:
        raise ValueError(
            f"samples: the selection scored {block['samples']} samples, the pre-training data "
            f"has {num_samples} images; was it made from other data?"
        )
    if block["selected_samples"] != chosen.size:
        raise ValueError(
            f"samples: the list holds {chosen.size} samples, the selection chose "
            f"{block['selected_samples']}; were both written by one uotsel select command?"
        )


def unit_ids(path: str, num_samples: int) -> np.ndarray:
    """Per-sample unit ids ``[N]`` from a ``.npy`` or a ``.npz`` with ``assignment``; -1 (a
    sample in no unit, as ``uotsel-train extract`` writes for an unreadable image) is kept:
    such a sample belongs to no selected unit and is never drawn.

    Raises:
      ValueError: starting with ``unit_ids:`` for an unreadable file, non-integer ids or ids
        below -1 (:func:`uotsel._checks.unit_ids`), or a count other than ``num_samples``.
    """
    key = "assignment" if path.endswith(".npz") else None
    ids = np.asarray(read_array(path, "unit_ids", key=key))
    if ids.dtype.kind not in "iu":
        raise ValueError(f"unit_ids: {path} must hold integer ids, got {ids.dtype}")
    if ids.shape != (num_samples,):
        raise ValueError(
            f"unit_ids: {path} holds {ids.size} ids for {num_samples} pre-training images"
        )
    return _checks.unit_ids(ids, f"unit_ids: {path}")


def check_against(
    record: dict[str, Any],
    *,
    strategy: str,
    num_units: int,
    unit_names: list[str] | None,
    unit_file: str = "",
) -> None:
    """Refuse a selection that does not belong to the pre-training data given.

    Args:
      record: from :func:`read`.
      strategy: the strategy the run expects (``""``: any).
      num_units: units of the pre-training data (classes, or clusters of the unit-id file).
      unit_names: their names (class names), or None.
      unit_file: the ``.npz`` the per-sample unit ids came from, or ``""``.

    Raises:
      ValueError: one line starting with ``selection:``.
    """
    if strategy and record.get("strategy") != strategy:
        raise ValueError(
            f"selection: made by strategy {record.get('strategy')!r}, the config expects "
            f"{strategy!r} (selection_strategy)"
        )
    source = (record.get("inputs") or {}).get("source") or {}
    made_for = source.get("units")
    if isinstance(made_for, int) and made_for != num_units:
        raise ValueError(
            f"selection: made for {made_for} pre-training units, the pre-training data has "
            f"{num_units}; was it made from other data?"
        )
    if unit_file.endswith(".npz") and source.get("sha256"):
        if sha256_file(unit_file) != source["sha256"]:
            raise ValueError(
                f"selection: was made from another unit file than {unit_file} (checksums differ)"
            )
    names = record.get("selected_names")
    if unit_names is not None and isinstance(names, list) and set(names) & set(unit_names):
        for unit, name in zip(record["selected"], names, strict=False):
            if unit >= len(unit_names) or unit_names[unit] != name:
                raise ValueError(
                    f"selection: unit {unit} is {name!r} in the selection but "
                    f"{unit_names[unit] if unit < len(unit_names) else 'absent'!r} in the "
                    "pre-training data; was it made from other data?"
                )
