"""Reading unit features from files and writing selection files, without ever unpickling.

Accepted inputs (``read_units``):

- ``.npz`` with ``means`` ``[K, D]`` (optional ``counts`` ``[K]``, ``names`` ``[K]`` strings,
  ``assignment`` ``[N]`` per-sample unit ids), as written by ``uotsel centroids`` (class means)
  and by ``uotsel kmeans`` (cluster means: the mean raw feature of each cluster's members; its
  ``centroids`` and other keys are not read), or with ``features`` ``[N, D]`` and ``labels``
  ``[N]`` (the class means are computed);
- ``.npy`` holding ``means`` ``[K, D]`` (memory-mapped);
- ``embedded:<backbone>/<dataset>``: the paper's class means shipped with the package.

Outputs are written to a temporary file beside the destination and renamed into place, so a
failed run never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from uotsel import _checks, embedded
from uotsel.centroids import class_means

__all__ = [
    "Units",
    "atomic_writer",
    "read_array",
    "read_units",
    "selection_record",
    "sha256_file",
    "write_json",
    "write_lines",
]

SELECTION_FORMAT = "uotsel.selection/1"


class Units(NamedTuple):
    """Unit features read from a file.

    Attributes:
      means: ``[K, D]`` float32 unit features.
      counts: ``[K]`` int64 samples per unit, or None.
      names: ``[K]`` str unit names, or None.
      unit_ids: ``[N]`` int64 unit id of every sample (labels or a cluster assignment), or None.
      sample_names: ``[N]`` str name of every sample (``sample_names`` key), or None.
      source: the path or ``embedded:`` spec it came from.
      sha256: hex digest of the file's bytes.
    """

    means: np.ndarray
    counts: np.ndarray | None
    names: np.ndarray | None
    unit_ids: np.ndarray | None
    sample_names: np.ndarray | None
    source: str
    sha256: str


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_npz(path: str, arg: str):
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{arg}: file not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{arg}: is a directory, not a file: {path}") from None
    except Exception as err:
        raise ValueError(f"{arg}: cannot read {path}: {_first_line(err)}") from None


def _get(archive, key: str, path: str, arg: str) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except ValueError as err:  # object arrays need pickle, which we never allow
        raise ValueError(
            f"{arg}: key {key!r} in {path} is not a plain array ({_first_line(err)})"
        ) from None


def read_array(path: str, arg: str, *, key: str | None = None, mmap: bool = True) -> np.ndarray:
    """One array from ``.npy`` (memory-mapped) or from ``key`` of an ``.npz``."""
    if not os.path.exists(path):
        raise ValueError(f"{arg}: file not found: {path}")
    if path.endswith(".npy"):
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except Exception as err:
            raise ValueError(f"{arg}: cannot read {path}: {_first_line(err)}") from None
    archive = _open_npz(path, arg)
    with archive:
        if key is None:
            if len(archive.files) != 1:
                raise ValueError(f"{arg}: {path} holds {archive.files}; expected a single array")
            key = archive.files[0]
        if key not in archive.files:
            raise ValueError(f"{arg}: {path} has no key {key!r} (keys: {', '.join(archive.files)})")
        return _get(archive, key, path, arg)


def read_units(spec: str, arg: str = "source") -> Units:
    """Read unit features from a file or an ``embedded:`` spec (see the module docstring).

    Raises:
      ValueError: naming ``arg`` for a missing file or key, unreadable data, NaN/inf, or
        inconsistent shapes.
    """
    if spec.startswith(embedded.PREFIX):
        path, names = embedded.resolve(spec[len(embedded.PREFIX) :], arg)
    else:
        path, names = spec, None
    if not os.path.exists(path):
        raise ValueError(f"{arg}: file not found: {path}")
    counts = unit_ids = sample_names = None
    if path.endswith(".npy"):
        means = read_array(path, arg)
    else:
        with _open_npz(path, arg) as archive:
            keys = set(archive.files)
            if "means" in keys:
                means = _get(archive, "means", path, arg)
                counts = _get(archive, "counts", path, arg) if "counts" in keys else None
                unit_ids = _get(archive, "assignment", path, arg) if "assignment" in keys else None
            elif {"features", "labels"} <= keys:
                labels = _get(archive, "labels", path, arg)
                try:
                    cm = class_means(_get(archive, "features", path, arg), labels)
                except (ValueError, TypeError) as err:
                    raise ValueError(f"{arg}: {path}: {err}") from None
                means, counts, unit_ids = cm.means, cm.counts, labels
            else:
                raise ValueError(
                    f"{arg}: {path} needs 'means' or 'features' + 'labels' "
                    f"(keys: {', '.join(sorted(keys)) or 'none'})"
                )
            if "names" in keys and names is None:
                names = _get(archive, "names", path, arg)
            if "sample_names" in keys:
                sample_names = _get(archive, "sample_names", path, arg).astype(str)
    means = _check_means(means, path, arg)
    k = means.shape[0]
    if counts is not None:
        counts = np.asarray(counts)
        if counts.shape != (k,) or counts.dtype.kind not in "iu":
            raise ValueError(f"{arg}: 'counts' in {path} must be {k} integers")
    if names is not None:
        names = np.asarray(names)
        if names.shape != (k,) or names.dtype.kind not in "US":
            raise ValueError(f"{arg}: 'names' in {path} must be {k} strings")
        names = names.astype(str)
    if unit_ids is not None:
        unit_ids = np.asarray(unit_ids)
        if unit_ids.ndim != 1 or unit_ids.dtype.kind not in "iu":
            raise ValueError(f"{arg}: per-sample unit ids in {path} must be 1-d integers")
        if unit_ids.size and (unit_ids.min() < 0 or unit_ids.max() >= k):
            raise ValueError(f"{arg}: per-sample unit ids in {path} are out of range [0, {k})")
        unit_ids = unit_ids.astype(np.int64)
    if sample_names is not None and (unit_ids is None or sample_names.shape != unit_ids.shape):
        raise ValueError(f"{arg}: 'sample_names' in {path} must match the per-sample unit ids")
    return Units(means, counts, names, unit_ids, sample_names, spec, sha256_file(path))


def _check_means(means: np.ndarray, path: str, arg: str) -> np.ndarray:
    if means.ndim != 2:
        raise ValueError(f"{arg}: unit features in {path} must be 2-d [K, D], got {means.shape}")
    if means.dtype.kind not in "fiu":
        raise ValueError(f"{arg}: unit features in {path} are not numeric ({means.dtype})")
    if means.shape[0] == 0 or means.shape[1] == 0:
        raise ValueError(f"{arg}: unit features in {path} are empty (shape {means.shape})")
    means = np.asarray(means, np.float32)
    try:
        _checks.check_finite(means, arg)
    except ValueError as err:
        raise ValueError(f"{err} in {path}") from None
    return means


@contextlib.contextmanager
def atomic_writer(path: str, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".uotsel-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str, record: dict[str, Any]) -> None:
    with atomic_writer(path) as fh:
        json.dump(record, fh, indent=1, allow_nan=False)
        fh.write("\n")


def write_lines(path: str, lines: Any) -> None:
    with atomic_writer(path) as fh:
        for line in lines:
            fh.write(f"{line}\n")


def selection_record(selection: Any, source: Units, target: Units | None, version: str) -> dict:
    """The JSON-ready record of a :class:`~uotsel.Selection` (see ``docs/cli.md``)."""

    def ids(a: np.ndarray) -> list[int]:
        return [int(x) for x in a]

    def floats(a: np.ndarray | None) -> list[float] | None:
        return None if a is None else [float(x) for x in a]

    def describe(units: Units) -> dict[str, Any]:
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
        "selected": ids(selection.selected),
    }
    if source.names is not None:
        record["selected_names"] = [str(source.names[i]) for i in selection.selected]
    record.update(
        ranking=ids(selection.ranking),
        scores=floats(selection.scores),
        log_scores=floats(selection.log_scores),
        groups=[ids(g) for g in selection.groups],
        settings=selection.settings,
        solver=selection.diagnostics or None,
        inputs={"source": describe(source), "target": None if target is None else describe(target)},
    )
    if selection.sample_indices is not None:
        record["num_selected_samples"] = int(selection.sample_indices.size)
    return record


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
