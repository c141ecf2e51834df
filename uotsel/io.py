"""Every file format of uotsel, read and written in one place, without ever unpickling.

Unit files (read by :func:`read_units`, written by :func:`write_units` and
:func:`write_clusters`):

- ``.npz`` with ``means`` ``[K, D]`` (optional ``counts`` ``[K]``, ``names`` ``[K]`` strings,
  ``assignment`` ``[N]`` per-sample unit ids, ``sample_names`` ``[N]``), as written by
  ``uotsel centroids`` (class means) and by ``uotsel kmeans`` (cluster means: the mean raw
  feature of each cluster's members; its ``centroids`` and other keys are not read), or with
  ``features`` ``[N, D]`` and ``labels`` ``[N]`` (the class means are computed);
- ``.npy`` holding ``means`` ``[K, D]`` (memory-mapped);
- ``embedded:<backbone>/<dataset>``: the paper's class means shipped with the package.

Per-sample features split into parts (``uotsel.feature-shards/1`` JSON index, see
:mod:`uotsel.shards`): :func:`read_features`, :func:`write_shards_index`.

Selection files (``uotsel.selection/1`` JSON): :func:`selection_record`, :func:`write_selection`,
:func:`read_selection`. Text files (one name or id a line): :func:`read_names`,
:func:`read_ids`, :func:`write_lines`. Sample indices: :func:`write_indices` (``.npy``).

Numpy files are recognised by their first bytes; a folder, an empty, truncated or corrupt file,
a file that is not numpy at all and an array of Python objects each get their own one-line
``ValueError`` naming the argument.

Writing them into place, all of a command's outputs together: :mod:`uotsel.outputs`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from uotsel import _checks, embedded, shards
from uotsel.centroids import class_means
from uotsel.outputs import atomic_writer, first_line, reason

__all__ = [
    "SELECTION_FORMAT",
    "Units",
    "input_path",
    "npz_keys",
    "parse_ids",
    "read_array",
    "read_features",
    "read_ids",
    "read_names",
    "read_selection",
    "read_units",
    "selection_record",
    "unit_wnids",
    "sha256_file",
    "write_clusters",
    "write_indices",
    "write_json",
    "write_lines",
    "write_selection",
    "write_units",
]

SELECTION_FORMAT = "uotsel.selection/1"

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


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


def _check_file(path: str, arg: str) -> int:
    """The size of the regular, non-empty file at ``path``, or a one-line error."""
    if not path:
        raise ValueError(f"{arg}: no file name given")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"{arg}: file not found: {path}") from None
    except OSError as err:
        raise ValueError(f"{arg}: cannot read {path}: {reason(err)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{arg}: is a folder, expected a file: {path}")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{arg}: is not a regular file: {path}")
    if info.st_size == 0:
        raise ValueError(f"{arg}: {path} is empty (0 bytes)")
    return info.st_size


def _read_head(path: str, arg: str, size: int = 8) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError as err:
        raise ValueError(f"{arg}: cannot read {path}: {reason(err)}") from None


def _kind(head: bytes) -> str:
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGICS):
        return "npz"
    return ""


def _sniff(path: str, arg: str) -> str:
    """``"npy"`` or ``"npz"`` from the file's first bytes, after the file checks."""
    _check_file(path, arg)
    kind = _kind(_read_head(path, arg))
    if not kind:
        raise ValueError(f"{arg}: {path} is not a numpy file (neither .npy nor .npz)")
    return kind


def _npy_header(fh: Any, where: str, arg: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data bytes) of the ``.npy`` stream at ``fh``."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fh)
        else:
            shape, fortran, dtype = _npy_header_3_0(fh)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(
            f"{arg}: {where} is truncated or corrupt (unreadable .npy header: {first_line(err)})"
        ) from None
    if dtype.hasobject:
        raise ValueError(
            f"{arg}: {where} holds Python objects ({dtype}), not plain numbers or strings"
        )
    return shape, fortran, dtype, math.prod(shape) * dtype.itemsize


def _npy_header_3_0(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The header of a version 3.0 ``.npy`` file after its magic: version 2.0's layout (a
    4-byte little-endian length, then a Python literal dict) in UTF-8, for which numpy has no
    public reader."""
    size = fh.read(4)
    if len(size) != 4:
        raise EOFError("the header length is cut short")
    text = fh.read(int.from_bytes(size, "little"))
    try:
        header = ast.literal_eval(text.decode("utf-8"))
    except (SyntaxError, UnicodeDecodeError, MemoryError, RecursionError) as err:
        raise ValueError(f"the header is not a Python literal ({type(err).__name__})") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ValueError("the header does not hold exactly descr, fortran_order and shape")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in shape
    ):
        raise ValueError(f"the header's shape is not a tuple of sizes: {shape!r}")
    if not isinstance(fortran, bool):
        raise ValueError(f"the header's fortran_order is not a bool: {fortran!r}")
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"the header's descr is not a dtype ({first_line(err)})") from None
    return shape, fortran, dtype


def _read_npy(path: str, arg: str, mmap: bool) -> np.ndarray:
    size = _check_file(path, arg)
    try:
        with open(path, "rb") as fh:
            shape, _, _, nbytes = _npy_header(fh, path, arg)
            offset = fh.tell()
    except OSError as err:
        raise ValueError(f"{arg}: cannot read {path}: {reason(err)}") from None
    if size - offset < nbytes:
        raise ValueError(
            f"{arg}: {path} is truncated: its header announces {nbytes} bytes of data "
            f"(shape {shape}), the file holds {size - offset}"
        )
    try:
        return np.load(path, mmap_mode="r" if mmap and nbytes else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{arg}: {path} is truncated or corrupt ({first_line(err)})") from None


class _Npz:
    """The arrays of an ``.npz`` archive, read one by one with their headers checked."""

    def __init__(self, path: str, arg: str):
        self.path, self.arg = path, arg
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, EOFError, ValueError) as err:
            raise ValueError(
                f"{arg}: {path} is truncated or corrupt (not a readable .npz archive: "
                f"{first_line(err)})"
            ) from None
        except OSError as err:
            raise ValueError(f"{arg}: cannot read {path}: {reason(err)}") from None
        self._members = {}
        for info in self._zip.infolist():
            name = info.filename
            self._members[name[:-4] if name.endswith(".npy") else name] = info
        self.files = list(self._members)

    def __enter__(self) -> _Npz:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._zip.close()

    def __contains__(self, key: str) -> bool:
        return key in self._members

    def __getitem__(self, key: str) -> np.ndarray:
        info = self._members[key]
        where = f"key {key!r} in {self.path}"
        try:
            with self._zip.open(info) as fh:
                _, _, _, nbytes = _npy_header(fh, where, self.arg)
                if info.file_size - fh.tell() < nbytes:
                    raise ValueError(
                        f"{self.arg}: {where} is truncated: its header announces {nbytes} bytes, "
                        f"the archive holds {info.file_size - fh.tell()}"
                    )
                fh.seek(0)
                return np.lib.format.read_array(fh, allow_pickle=False)
        except ValueError as err:
            if str(err).startswith(f"{self.arg}: "):
                raise
            raise ValueError(f"{self.arg}: {where} is corrupt ({first_line(err)})") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            raise ValueError(
                f"{self.arg}: {where} is truncated or corrupt ({first_line(err)})"
            ) from None


def _open_npz(path: str, arg: str) -> _Npz:
    return _Npz(path, arg)


def read_array(path: str, arg: str, *, key: str | None = None, mmap: bool = True) -> np.ndarray:
    """One array from a ``.npy`` file (memory-mapped unless ``mmap=False``) or from ``key`` of
    an ``.npz`` archive (``key=None``: its only array). The content decides which it is.

    Raises:
      ValueError: starting with ``arg``: a folder, a missing, empty, truncated, corrupt or
        non-numpy file, a missing key, or an array of Python objects.
    """
    kind = _sniff(path, arg)
    if kind == "npy":
        if key is not None:
            raise ValueError(f"{arg}: {path} is a single .npy array; expected an .npz with {key!r}")
        return _read_npy(path, arg, mmap)
    with _open_npz(path, arg) as archive:
        if key is None:
            if len(archive.files) != 1:
                raise ValueError(
                    f"{arg}: {path} holds {len(archive.files)} arrays "
                    f"({', '.join(archive.files) or 'none'}); expected a single array"
                )
            key = archive.files[0]
        if key not in archive:
            raise ValueError(
                f"{arg}: {path} has no key {key!r} (keys: {', '.join(archive.files) or 'none'})"
            )
        return archive[key]


def npz_keys(path: str, arg: str) -> list[str] | None:
    """The array names of an ``.npz`` archive, or None for a ``.npy`` file or a shards index."""
    if _is_json(path, arg) or _sniff(path, arg) == "npy":
        return None
    with _open_npz(path, arg) as archive:
        return list(archive.files)


def _is_json(path: str, arg: str) -> bool:
    _check_file(path, arg)
    return _read_head(path, arg, 64).lstrip().startswith(b"{")


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
        kind = _sniff(path, arg)
        features = read_array(path, arg, key=None if kind == "npy" else key)
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
    record = _read_json(path, arg)
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
        array = _read_npy(os.path.join(folder, name), arg, mmap=True)
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
    _check_file(path, arg)
    head = _read_head(path, arg)
    if _kind(head):
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
    _check_file(path, arg)
    if _kind(_read_head(path, arg)):
        values = np.asarray(read_array(path, arg, key=key, mmap=False))
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
    if _sniff(path, arg) == "npy":
        means = read_array(path, arg)
    else:
        with _open_npz(path, arg) as archive:
            keys = set(archive.files)
            if "means" in keys:
                means = archive["means"]
                counts = archive["counts"] if "counts" in keys else None
                if "assignment" in keys:
                    unit_ids = _unit_ids(archive["assignment"], path, arg)
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
    return Units(means, counts, names, unit_ids, sample_names, spec, sha256_file(path))


def _unit_ids(values: np.ndarray, path: str, arg: str) -> np.ndarray:
    if values.ndim != 1:
        raise ValueError(f"{arg}: per-sample unit ids in {path} must be 1-d, got {values.shape}")
    ids = _checks.whole_numbers(values, f"{arg}: per-sample unit ids in {path}")
    if ids.size and ids.min() < 0:
        raise ValueError(f"{arg}: per-sample unit ids in {path} include {int(ids.min())} (< 0)")
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


def _read_json(path: str, arg: str) -> Any:
    if os.path.isdir(path):
        raise ValueError(f"{arg}: is a folder, expected a file: {path}")
    if not os.path.exists(path):
        raise ValueError(f"{arg}: file not found: {path}")
    _check_file(path, arg)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{arg}: cannot read {path}: {first_line(err)}") from None


def read_selection(path: str, arg: str = "selection") -> dict[str, Any]:
    """The ``uotsel.selection/1`` record at ``path``, checked for the fields training reads:
    ``selected`` and ``ranking`` lists of non-negative integers (booleans refused) and
    ``groups`` a list of such lists.

    Raises:
      ValueError: one line starting with ``arg``: a folder, a missing, empty or unreadable
        file, not JSON, or not a selection.
    """
    record = _read_json(path, arg)
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


def write_json(target: Any, record: dict[str, Any]) -> None:
    """``record`` as indented JSON (NaN and inf refused); atomic when ``target`` is a path."""
    text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    _write_bytes(target, lambda fh: fh.write(text.encode("utf-8")))


def write_shards_index(target: Any, parts: Any, dim: int, dtype: Any) -> None:
    """The ``uotsel.feature-shards/1`` index of ``parts`` (``(path, rows)`` in row order, each
    part an ``[rows, dim]`` ``.npy`` beside the index)."""
    write_json(target, shards.index_record(parts, dim, dtype))


def write_selection(target: Any, record: dict[str, Any]) -> None:
    """A selection file (``uotsel.selection/1``, see :func:`selection_record`)."""
    if record.get("format") != SELECTION_FORMAT:
        raise ValueError(f"record: not a {SELECTION_FORMAT} record")
    write_json(target, record)


def write_lines(target: Any, lines: Iterable[Any]) -> None:
    """One item a line (UTF-8)."""

    def write(fh: Any) -> None:
        for line in lines:
            fh.write(f"{line}\n".encode())

    _write_bytes(target, write)


def selection_record(
    selection: Any,
    source: Units,
    target: Units | None,
    version: str,
    target_mass: Any = None,
) -> dict:
    """The JSON-ready record of a :class:`~uotsel.Selection` (see ``docs/cli.md``).

    ``selected_wnids`` is added for the embedded ImageNet classes, and ``target_mass`` /
    ``target_mass_total`` when ``target_mass`` (a :class:`uotsel.plan.TargetMass`) is given.
    """

    def ids(a: np.ndarray) -> list[int]:
        return [int(x) for x in a]

    def floats(a: np.ndarray | None) -> list[float | str | None] | None:
        return None if a is None else [_json_number(x) for x in a]

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
    wnids = unit_wnids(source)
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


def unit_wnids(units: Units) -> np.ndarray | None:
    """The ImageNet wnids of the units when they are the embedded ImageNet classes, else None."""
    spec = units.source
    if not isinstance(spec, str) or not spec.startswith(embedded.PREFIX):
        return None
    if spec[len(embedded.PREFIX) :].partition("/")[2] != "imagenet":
        return None
    return embedded.imagenet_classes()["wnid"].astype(str)


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
