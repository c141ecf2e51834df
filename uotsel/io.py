"""uotsel's unit, feature, id and name files, read and written without ever unpickling.

Unit files (read by :func:`read_units`, written by :func:`write_units` and
:func:`write_clusters`):

- ``.npz`` with ``means`` ``[K, D]`` (optional ``counts`` ``[K]``, ``names`` ``[K]`` strings,
  ``assignment`` ``[N]`` per-sample unit ids, ``sample_names`` ``[N]``), as written by
  ``uotsel centroids`` (class means), ``uotsel-train extract`` (class means; an image it could
  not read has ``assignment`` -1, in no unit) and by ``uotsel kmeans`` (cluster means: the mean
  raw feature of each cluster's members; its ``centroids`` and other keys are not read), or
  with ``features`` ``[N, D]`` and ``labels`` ``[N]`` (the class means are computed; every
  label a class, from 0);
- ``.npy`` holding ``means`` ``[K, D]`` (memory-mapped);
- ``embedded:<backbone>/<dataset>``: the paper's class means shipped with the package.

Per-sample features split into parts (``uotsel.feature-shards/1`` JSON index, see
:mod:`uotsel.shards`): :func:`read_features`, :func:`write_shards_index`.

Text files (one name or id a line): :func:`read_names`, :func:`read_ids`, :func:`write_lines`.
Sample indices and scores: :func:`write_indices`, :func:`write_scores` (``.npy``). Selection
files: :mod:`uotsel.selection_file`.
Numpy files themselves, recognised by their first bytes and read without unpickling (each bad
file its own one-line ``ValueError`` naming the argument): :mod:`uotsel.npfiles`.

Writing them into place, all of a command's outputs together: :mod:`uotsel.outputs`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from uotsel import _checks, embedded, npfiles, shards
from uotsel.centroids import class_means
from uotsel.outputs import atomic_writer, first_line, reason

__all__ = [
    "Units",
    "input_path",
    "npz_keys",
    "parse_ids",
    "read_features",
    "read_ids",
    "read_json",
    "read_names",
    "read_units",
    "unit_wnids",
    "sha256_file",
    "write_clusters",
    "write_indices",
    "write_json",
    "write_lines",
    "write_scores",
    "write_units",
]


class Units(NamedTuple):
    """Unit features read from a file.

    Attributes:
      means: ``[K, D]`` float32 unit features.
      counts: ``[K]`` int64 samples per unit, or None.
      names: ``[K]`` str unit names, or None.
      unit_ids: ``[N]`` int64 unit id of every sample (labels or a cluster assignment; -1 for
        a sample in no unit), or None.
      sample_names: ``[N]`` str name of every sample (``sample_names`` key), or None.
      source: the path or ``embedded:`` spec it came from.
      sha256: hex digest of the file's bytes.
      clusters: whether the units are k-means clusters (a ``uotsel kmeans`` file: its
        ``centroids`` beside the ``assignment``), not classes.
    """

    means: np.ndarray
    counts: np.ndarray | None
    names: np.ndarray | None
    unit_ids: np.ndarray | None
    sample_names: np.ndarray | None
    source: str
    sha256: str
    clusters: bool = False


# ---------------------------------------------------------------------------------------------
# Inputs


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_path(spec: str) -> str | None:
    """The file behind an input ``spec`` (an ``embedded:`` name resolved), or None."""
    if not spec:
        return None
    if spec.startswith(embedded.PREFIX):
        try:
            return embedded.resolve(spec[len(embedded.PREFIX) :])[0]
        except ValueError:
            return None
    return spec


def _is_json(path: str, arg: str) -> bool:
    npfiles.check_file(path, arg)
    return npfiles.read_head(path, arg, 64).lstrip().startswith(b"{")


def npz_keys(path: str, arg: str) -> list[str] | None:
    """The array names of an ``.npz`` archive, or None for a ``.npy`` file or a shards index."""
    if _is_json(path, arg) or npfiles.sniff(path, arg) == "npy":
        return None
    with npfiles.open_npz(path, arg) as archive:
        return list(archive.files)


def read_features(path: str, arg: str, *, key: str = "features") -> np.ndarray | shards.RowShards:
    """Per-sample features ``[N, D]`` (N, D >= 1): a ``.npy`` (memory-mapped), ``key`` of an
    ``.npz``, or a ``uotsel.feature-shards/1`` index whose parts are memory-mapped and read as
    one array (:class:`uotsel.shards.RowShards`). Values are not scanned (see
    ``_checks.check_rows``).

    Raises:
      ValueError, TypeError: starting with ``arg``, as :func:`read_array`, or for a shape other
        than ``[N, D]`` or a non-numeric dtype.
    """
    if _is_json(path, arg):
        features = _read_shards(path, arg)
    else:
        kind = npfiles.sniff(path, arg)
        features = npfiles.read_array(path, arg, key=None if kind == "npy" else key)
    if features.ndim != 2:
        raise ValueError(f"{arg}: {path} must hold a 2-d array [N, D], got shape {features.shape}")
    if features.dtype.kind not in "fiub":
        raise TypeError(f"{arg}: {path} holds {features.dtype}, expected numbers")
    if features.shape[0] == 0:
        raise ValueError(f"{arg}: {path} holds no samples (shape {features.shape})")
    if features.shape[1] == 0:
        raise ValueError(f"{arg}: {path} holds features of dimension 0 (shape {features.shape})")
    return features


def _read_shards(path: str, arg: str) -> shards.RowShards:
    """The parts listed by a ``uotsel.feature-shards/1`` index, memory-mapped, as one array."""
    record = read_json(path, arg, f"a {shards.FORMAT} index")
    if not isinstance(record, dict) or record.get("format") != shards.FORMAT:
        raise ValueError(f"{arg}: {path} is JSON but not a {shards.FORMAT} index")
    parts = record.get("parts")
    if not isinstance(parts, list) or not parts:
        raise ValueError(f"{arg}: {path}: 'parts' must be a non-empty list")
    folder = os.path.dirname(os.path.abspath(path))
    arrays = []
    for i, part in enumerate(parts):
        name = part.get("file") if isinstance(part, dict) else None
        rows = part.get("rows") if isinstance(part, dict) else None
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"{arg}: {path}: part {i} needs 'file', a file name without folders")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"{arg}: {path}: part {i} needs 'rows', a whole number >= 0")
        array = npfiles.read_npy(os.path.join(folder, name), arg, mmap=True)
        if array.ndim != 2 or array.shape[0] != rows:
            raise ValueError(
                f"{arg}: {path}: part {i} ({name}) holds shape {array.shape}, the index "
                f"announces {rows} rows"
            )
        arrays.append(array)
    try:
        whole = shards.RowShards(arrays)
    except ValueError:
        raise ValueError(
            f"{arg}: {path}: the parts differ in dimension or dtype "
            f"({sorted({(a.shape[1], a.dtype.name) for a in arrays})})"
        ) from None
    expected = (record.get("rows"), record.get("dim"), record.get("dtype"))
    if expected != (whole.shape[0], whole.shape[1], whole.dtype.name):
        raise ValueError(
            f"{arg}: {path} announces rows, dim, dtype = {expected}, its parts hold "
            f"{(whole.shape[0], whole.shape[1], whole.dtype.name)}"
        )
    return whole


def _read_text_lines(path: str, arg: str) -> list[str]:
    npfiles.check_file(path, arg)
    head = npfiles.read_head(path, arg)
    if npfiles.kind_of(head):
        raise ValueError(f"{arg}: {path} is a numpy file, expected text (one entry a line)")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{arg}: {path} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ValueError(f"{arg}: cannot read {path}: {reason(err)}") from None
    return text.splitlines()


def read_names(path: str, arg: str, count: int | None = None, what: str = "entries") -> np.ndarray:
    """One name a line (blank lines skipped); ``count`` names when given.

    Raises:
      ValueError: starting with ``arg``: unreadable or non-text file, or not ``count`` names.
    """
    names = np.asarray([line for line in _read_text_lines(path, arg) if line.strip()], dtype=str)
    if count is not None and names.shape[0] != count:
        raise ValueError(f"{arg}: {path} holds {names.shape[0]} names for {count} {what}")
    return names


_INTEGER = re.compile(r"[+-]?\d+")


def parse_ids(tokens: Iterable[str], arg: str, where: str = "") -> np.ndarray:
    """Decimal integers as int64, blank tokens skipped (``where``: the file, for messages)."""
    values = []
    for number, token in enumerate(tokens, 1):
        text = token.strip()
        if not text:
            continue
        if not _INTEGER.fullmatch(text):
            place = f" (line {number} of {where})" if where else ""
            raise ValueError(f"{arg}: {text!r} is not an integer{place}")
        value = int(text)
        if abs(value) >= 2**63:
            raise ValueError(f"{arg}: {text} is too large (at most 2**63 - 1)")
        values.append(value)
    return np.asarray(values, np.int64)


def read_ids(path: str, arg: str, *, key: str | None = None) -> np.ndarray:
    """Integer ids ``[n]``: a ``.npy``/``.npz`` array (``key`` of an ``.npz``) of whole numbers,
    or text with one integer a line (blank lines skipped).

    Raises:
      ValueError, TypeError: starting with ``arg``: unreadable file, fractional or non-numeric
        values, or not a 1-d list.
    """
    npfiles.check_file(path, arg)
    if npfiles.kind_of(npfiles.read_head(path, arg)):
        values = np.asarray(npfiles.read_array(path, arg, key=key, mmap=False))
        if values.ndim != 1:
            raise ValueError(f"{arg}: expected a 1-d list of ids, got shape {values.shape}")
        return _checks.whole_numbers(values, arg)
    return parse_ids(_read_text_lines(path, arg), arg, path)


def read_units(spec: str, arg: str = "source") -> Units:
    """Read unit features from a file or an ``embedded:`` spec (see the module docstring).

    Raises:
      ValueError: naming ``arg`` for a folder, a missing, empty, truncated or non-numpy file, a
        missing key, Python objects, NaN/inf, or inconsistent shapes.
    """
    if spec.startswith(embedded.PREFIX):
        path, names = embedded.resolve(spec[len(embedded.PREFIX) :], arg)
    else:
        path, names = spec, None
    counts = unit_ids = sample_names = None
    clusters = False
    if npfiles.sniff(path, arg) == "npy":
        means = npfiles.read_array(path, arg)
    else:
        with npfiles.open_npz(path, arg) as archive:
            keys = set(archive.files)
            if "means" in keys:
                means = archive["means"]
                counts = archive["counts"] if "counts" in keys else None
                if "assignment" in keys:
                    unit_ids = _unit_ids(archive["assignment"], path, arg, no_unit=True)
                clusters = {"assignment", "centroids"} <= keys
            elif {"features", "labels"} <= keys:
                means, counts, unit_ids = _means_from_samples(
                    archive["features"], archive["labels"], path, arg
                )
            else:
                raise ValueError(
                    f"{arg}: {path} needs 'means' or 'features' + 'labels' "
                    f"(keys: {', '.join(sorted(keys)) or 'none'})"
                )
            if "names" in keys and names is None:
                names = archive["names"]
            if "sample_names" in keys:
                sample_names = archive["sample_names"]
    means = _check_means(means, path, arg)
    k = means.shape[0]
    if counts is not None:
        counts = np.asarray(counts)
        if counts.shape != (k,) or counts.dtype.kind not in "iu" or (counts < 0).any():
            raise ValueError(f"{arg}: 'counts' in {path} must be {k} non-negative integers")
    if names is not None:
        names = np.asarray(names)
        if names.shape != (k,) or names.dtype.kind not in "US":
            raise ValueError(f"{arg}: 'names' in {path} must be {k} strings")
        names = names.astype(str)
    if unit_ids is not None and unit_ids.size and unit_ids.max() >= k:
        raise ValueError(
            f"{arg}: per-sample unit ids in {path} go up to {int(unit_ids.max())}, beyond the "
            f"{k} units"
        )
    if sample_names is not None:
        sample_names = np.asarray(sample_names)
        if (
            unit_ids is None
            or sample_names.shape != unit_ids.shape
            or sample_names.dtype.kind not in "US"
        ):
            raise ValueError(
                f"{arg}: 'sample_names' in {path} must be strings matching the per-sample unit ids"
            )
        sample_names = sample_names.astype(str)
    digest = sha256_file(path)
    return Units(means, counts, names, unit_ids, sample_names, spec, digest, clusters)


def _unit_ids(values: np.ndarray, path: str, arg: str, no_unit: bool = False) -> np.ndarray:
    """``[N]`` int64 ids from a file: whole numbers from 0, or with ``no_unit`` (an
    ``assignment``) also -1, a sample in no unit (:func:`uotsel._checks.unit_ids`)."""
    name = f"{arg}: per-sample unit ids in {path}"
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got {values.shape}")
    ids = _checks.whole_numbers(values, name)
    if no_unit:
        return _checks.unit_ids(ids, name)
    if ids.size and ids.min() < 0:
        raise ValueError(f"{name} include {int(ids.min())} (< 0)")
    return ids


def _means_from_samples(features: np.ndarray, labels: np.ndarray, path: str, arg: str):
    if features.ndim != 2 or features.dtype.kind not in "fiub":
        raise ValueError(
            f"{arg}: 'features' in {path} must be a 2-d numeric array [N, D], got "
            f"{features.dtype} of shape {features.shape}"
        )
    n = features.shape[0]
    labels = _unit_ids(labels, path, arg)
    if labels.shape != (n,):
        raise ValueError(f"{arg}: {path} has {labels.size} labels for {n} feature rows")
    if n == 0:
        raise ValueError(f"{arg}: {path} has no samples")
    top = int(labels.max())
    if top >= n:
        raise ValueError(
            f"{arg}: label {top} in {path} is not below the {n} samples, so some classes would "
            "have no samples"
        )
    present = np.bincount(labels, minlength=top + 1)
    if (present == 0).any():
        empty = np.flatnonzero(present == 0)
        raise ValueError(
            f"{arg}: {empty.size} of the {top + 1} classes in {path} have no samples (first: "
            f"{int(empty[0])}); number the classes 0..K-1"
        )
    _checks.check_rows(features, f"{arg}: 'features' in {path}")
    cm = class_means(features, labels, top + 1)
    return cm.means, cm.counts, labels


def _check_means(means: np.ndarray, path: str, arg: str) -> np.ndarray:
    if means.ndim != 2:
        raise ValueError(f"{arg}: unit features in {path} must be 2-d [K, D], got {means.shape}")
    if means.dtype.kind not in "fiub":
        raise ValueError(f"{arg}: unit features in {path} are not numeric ({means.dtype})")
    if means.shape[0] == 0:
        raise ValueError(f"{arg}: unit features in {path} are empty (shape {means.shape})")
    if means.shape[1] == 0:
        raise ValueError(f"{arg}: unit features in {path} have dimension 0 (shape {means.shape})")
    _checks.check_rows(means, f"{arg}: unit features in {path}")
    return np.asarray(means, np.float32)


def read_json(path: str, arg: str, what: str = "a JSON file") -> Any:
    """The JSON value in the file at ``path``; ``what`` names the kind of file expected, for
    the error when it is not JSON text.

    Raises:
      ValueError: one line starting with ``arg``: a folder, a missing, empty or unreadable
        file, or not JSON text (``{arg}: {path} is not {what} ...``).
    """
    if os.path.isdir(path):
        raise ValueError(f"{arg}: is a folder, expected a file: {path}")
    if not os.path.exists(path):
        raise ValueError(f"{arg}: file not found: {path}")
    npfiles.check_file(path, arg)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as err:
        raise ValueError(f"{arg}: cannot read {path}: {first_line(err)}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{arg}: {path} is not {what} (not UTF-8 text)") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{arg}: {path} is not {what} (not JSON: {first_line(err)})") from None


# ---------------------------------------------------------------------------------------------
# Writers: each takes a path (written atomically) or a binary file object.


def _write_bytes(target: Any, write: Callable[[Any], None]) -> None:
    if hasattr(target, "write"):
        write(target)
    else:
        with atomic_writer(target, "wb") as fh:
            write(fh)


def write_units(
    target: Any,
    means: Any,
    *,
    counts: Any = None,
    names: Any = None,
    assignment: Any = None,
    sample_names: Any = None,
    **extra: Any,
) -> None:
    """A unit file (``.npz``) that :func:`read_units` reads: ``means`` ``[K, D]`` float32 and
    the optional ``counts`` ``[K]``, ``names`` ``[K]``, ``assignment`` ``[N]`` (int64),
    ``sample_names`` ``[N]``, plus any ``extra`` arrays (not read back)."""
    arrays = {"means": np.asarray(means, np.float32)}
    if counts is not None:
        arrays["counts"] = np.asarray(counts, np.int64)
    if names is not None:
        arrays["names"] = np.asarray(names, dtype=str)
    if assignment is not None:
        arrays["assignment"] = np.asarray(assignment, np.int64)
    if sample_names is not None:
        arrays["sample_names"] = np.asarray(sample_names, dtype=str)
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    _write_bytes(target, lambda fh: np.savez(fh, **arrays))


def write_clusters(target: Any, result: Any, sample_names: Any = None) -> None:
    """The unit file of a :class:`~uotsel.KMeansResult`: ``means`` (the units), ``centroids``,
    ``counts``, ``assignment``, ``objective``, ``spherical``, ``n_iters``, ``converged``,
    ``seed`` and, when given, ``sample_names``."""
    write_units(
        target,
        result.means,
        counts=result.sizes,
        assignment=result.assignment,
        sample_names=sample_names,
        centroids=np.asarray(result.centroids, np.float32),
        objective=np.float64(result.objective),
        spherical=np.bool_(result.spherical),
        n_iters=np.int64(result.n_iters),
        converged=np.bool_(result.converged),
        seed=np.int64(result.seed),
    )


def write_indices(target: Any, indices: Any) -> None:
    """Sample indices ``[S]`` as an int64 ``.npy``."""
    _write_bytes(target, lambda fh: np.save(fh, np.asarray(indices, np.int64)))


def write_scores(target: Any, scores: Any) -> None:
    """Scores ``[N]`` as a float ``.npy`` of their own float dtype."""
    scores = np.asarray(scores)
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    _write_bytes(target, lambda fh: np.save(fh, scores))


def write_json(target: Any, record: dict[str, Any]) -> None:
    """``record`` as indented JSON (NaN and inf refused); atomic when ``target`` is a path."""
    text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    _write_bytes(target, lambda fh: fh.write(text.encode("utf-8")))


def write_shards_index(target: Any, parts: Any, dim: int, dtype: Any) -> None:
    """The ``uotsel.feature-shards/1`` index of ``parts`` (``(path, rows)`` in row order, each
    part an ``[rows, dim]`` ``.npy`` beside the index)."""
    write_json(target, shards.index_record(parts, dim, dtype))


def write_lines(target: Any, lines: Iterable[Any]) -> None:
    """One item a line (UTF-8)."""

    def write(fh: Any) -> None:
        for line in lines:
            fh.write(f"{line}\n".encode())

    _write_bytes(target, write)


def unit_wnids(units: Units) -> np.ndarray | None:
    """The ImageNet wnids of the units when they are the embedded ImageNet classes, else None."""
    spec = units.source
    if not isinstance(spec, str) or not spec.startswith(embedded.PREFIX):
        return None
    if spec[len(embedded.PREFIX) :].partition("/")[2] != "imagenet":
        return None
    return embedded.imagenet_classes()["wnid"].astype(str)
