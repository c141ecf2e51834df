"""Numpy files read without ever unpickling: ``.npy`` and ``.npz`` recognised by their first
bytes, their headers read (versions 1.0 to 3.0) and checked before any data, and the data
memory-mapped where it can be. A folder, an empty, truncated or corrupt file, a file that is not
numpy at all and an array of Python objects each get their own one-line ``ValueError`` naming
the argument. The project's own formats built on them: :mod:`uotsel.io`.
"""

from __future__ import annotations

import ast
import math
import os
import stat
import zipfile
import zlib
from typing import Any

import numpy as np

from uotsel.outputs import first_line, reason

__all__ = [
    "check_file",
    "kind_of",
    "open_npz",
    "read_array",
    "read_head",
    "read_npy",
    "sniff",
]


_NPY_MAGIC = b"\x93NUMPY"


_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")


def check_file(path: str, arg: str) -> int:
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


def read_head(path: str, arg: str, size: int = 8) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError as err:
        raise ValueError(f"{arg}: cannot read {path}: {reason(err)}") from None


def kind_of(head: bytes) -> str:
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGICS):
        return "npz"
    return ""


def sniff(path: str, arg: str) -> str:
    """``"npy"`` or ``"npz"`` from the file's first bytes, after the file checks."""
    check_file(path, arg)
    kind = kind_of(read_head(path, arg))
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


def read_npy(path: str, arg: str, mmap: bool) -> np.ndarray:
    size = check_file(path, arg)
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


def open_npz(path: str, arg: str) -> _Npz:
    return _Npz(path, arg)


def read_array(path: str, arg: str, *, key: str | None = None, mmap: bool = True) -> np.ndarray:
    """One array from a ``.npy`` file (memory-mapped unless ``mmap=False``) or from ``key`` of
    an ``.npz`` archive (``key=None``: its only array). The content decides which it is.

    Raises:
      ValueError: starting with ``arg``: a folder, a missing, empty, truncated, corrupt or
        non-numpy file, a missing key, or an array of Python objects.
    """
    kind = sniff(path, arg)
    if kind == "npy":
        if key is not None:
            raise ValueError(f"{arg}: {path} is a single .npy array; expected an .npz with {key!r}")
        return read_npy(path, arg, mmap)
    with open_npz(path, arg) as archive:
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
