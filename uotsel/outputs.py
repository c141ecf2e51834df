"""Writing the output files of a command: all together or not at all (:class:`Outputs`), or one
file atomically (:func:`atomic_writer`).

Every output goes to a temporary file beside its destination and is renamed into place only
when complete; failures are one-line ``ValueError`` naming the output's argument, and leave
existing files byte-identical. A temporary is named after its host and process
(``.uotsel-HOST-PID-*.tmp``): what a process killed while writing (``SIGKILL``, out of memory)
left behind is deleted by the next write into that folder on that host (:func:`sweep`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

__all__ = ["FORMATS", "Outputs", "atomic_writer", "first_line", "reason", "sweep"]

# File name extension -> format written.
FORMATS = {".npy": "npy", ".npz": "npz", ".json": "json", ".txt": "txt", ".png": "png"}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode() -> int:
    """The permissions ``open`` gives a new file under the process umask."""
    return 0o666 & ~_umask()


def _owner() -> str:
    """``HOST-PID`` of this process, as its temporaries are named (``.uotsel-HOST-PID-*``)."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"
    return f"{host}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or a PID out of range
        return True
    return True


def sweep(folder: str) -> list[str]:
    """Delete the temporaries and backups (``.uotsel-HOST-PID-*.tmp``, ``.old``) that this
    host's processes no longer running (killed while writing) left in ``folder``; returns the
    names deleted. Files of other hosts (a shared folder) and of running processes stay."""
    host = _owner().rsplit("-", 1)[0]
    pattern = re.compile(rf"\.uotsel-{re.escape(host)}-(\d+)-[^/]*\.(tmp|old)")
    gone = []
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            found = pattern.fullmatch(name)
            if found and not _alive(int(found[1])):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    gone.append(name)
    return gone


def _create_temp(folder: str) -> tuple[int, str]:
    sweep(folder)
    return tempfile.mkstemp(prefix=f".uotsel-{_owner()}-", suffix=".tmp", dir=folder)


def _finish(fh: Any, mode: int) -> None:
    fh.flush()
    os.fchmod(fh.fileno(), mode)
    os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_writer(path: str, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; rename it onto ``path`` only on success.

    The file gets the permissions of a new file under the process umask. Raises ``OSError``
    when the file cannot be written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(directory)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            _finish(fh, _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _identity(path: str) -> tuple[Any, ...]:
    """What makes two names the same file: device and inode when it exists, else its real
    path."""
    try:
        info = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("inode", info.st_dev, info.st_ino)


class _Pending:
    def __init__(self, arg: str, path: str, final: str, fmt: str, fd: int, tmp: str):
        self.arg, self.path, self.final, self.fmt = arg, path, final, fmt
        self.fd: int | None = fd
        self.tmp = tmp
        self.written = False
        self.existed = False
        self.backup: str | None = None
        self.array: np.memmap | None = None


class Outputs:
    """The output files of one command, written together or not at all.

    :meth:`add` checks an output before any work: its extension gives its format (one of
    ``formats``), it is neither a folder nor a special file, its folder exists, it is not an
    input (same device and inode, which catches symbolic and hard links, or the same real path
    when it does not exist yet) nor another output, and a temporary file can be created beside
    it. :meth:`write` fills that temporary (or :meth:`array` maps it as an ``.npy`` the caller
    fills piece by piece); :meth:`commit` renames all of them into place once
    every one is complete, and puts back what it replaced if a rename fails. Leaving the
    ``with`` block without :meth:`commit` deletes the temporaries: existing files stay
    byte-identical. Files get the permissions of a new file under the process umask (0666 less
    the umask), a replaced file too.

    Every error is a one-line ``ValueError`` starting with the output's ``arg``.

    With ``writes=False`` (every process of a multi-process run but the one that writes) the
    outputs are checked as far as the file names go, and nothing is created or written.

    Example:
      >>> import os, tempfile
      >>> from uotsel import io, outputs
      >>> folder = tempfile.mkdtemp()
      >>> with outputs.Outputs() as out:
      ...     out.add("--out", os.path.join(folder, "a.txt"), ("txt",))
      ...     out.write("--out", io.write_lines, ["x", "y"])
      ...     out.commit()
      'txt'
      >>> open(os.path.join(folder, "a.txt")).read()
      'x\\ny\\n'
    """

    def __init__(self, inputs: Iterable[tuple[str, str | None]] = (), writes: bool = True):
        self._writes = writes
        self._inputs = [(arg, path, _identity(path)) for arg, path in inputs if path]
        self._items: dict[str, _Pending] = {}
        self._mode = _new_file_mode()

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.discard()

    def add(self, arg: str, path: str, formats: tuple[str, ...]) -> str:
        """Check the output ``path`` of ``arg`` and create its temporary; returns its format."""
        if not path:
            raise ValueError(f"{arg}: no file name given")
        if path.endswith(("/", os.sep)):
            raise ValueError(f"{arg}: {path} names a folder, expected a file name")
        fmt = FORMATS.get(os.path.splitext(path)[1].lower())
        if fmt not in formats:
            want = " or ".join(sorted(e for e, f in FORMATS.items() if f in formats))
            raise ValueError(f"{arg}: {path} must end in {want} (the extension sets the format)")
        final = os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)
        folder = os.path.dirname(final)
        if not os.path.exists(folder):
            raise ValueError(f"{arg}: folder does not exist: {folder}")
        if not os.path.isdir(folder):
            raise ValueError(f"{arg}: {folder} is not a folder")
        existed = os.path.lexists(final)
        if existed:
            info = os.stat(final)
            if stat.S_ISDIR(info.st_mode):
                raise ValueError(f"{arg}: {path} is a folder, expected a file name")
            if not stat.S_ISREG(info.st_mode):
                raise ValueError(f"{arg}: {path} exists and is not a regular file")
        ident = _identity(final)
        for other, other_path, other_ident in self._inputs:
            if ident == other_ident:
                raise ValueError(f"{arg}: {path} is the input file of {other} ({other_path})")
        for item in self._items.values():
            if _identity(item.final) == ident:
                raise ValueError(f"{arg}: {path} is also the output of {item.arg}")
        if not self._writes:
            self._items[arg] = _Pending(arg, path, final, fmt, None, "")
            return fmt
        try:
            fd, tmp = _create_temp(folder)
        except OSError as err:
            raise ValueError(f"{arg}: cannot create a file in {folder}: {reason(err)}") from None
        item = _Pending(arg, path, final, fmt, fd, tmp)
        item.existed = existed
        self._items[arg] = item
        return fmt

    def format(self, arg: str) -> str:
        """The format (``npy``, ``npz``, ``json``, ``txt``) of the output ``arg``."""
        return self._items[arg].fmt

    def write(self, arg: str, writer: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Fill the temporary of ``arg`` with ``writer(binary_file, *args, **kwargs)``."""
        if not self._writes:
            return
        item = self._items[arg]
        if item.fd is None:
            raise RuntimeError(f"{arg}: written twice")
        fd, item.fd = item.fd, None
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh, *args, **kwargs)
                _finish(fh, self._mode)
        except OSError as err:
            self.discard()
            raise ValueError(f"{arg}: cannot write {item.path}: {reason(err)}") from None
        except BaseException:
            self.discard()
            raise
        item.written = True

    def array(self, arg: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """The temporary of ``arg`` as a writable ``.npy`` memory map of ``shape`` (zeros), for
        outputs too large to hold in memory; :meth:`commit` flushes it. Its disk space is
        reserved here, so a full disk fails now, with a one-line ``ValueError``, not while
        filling. With ``writes=False``: an array in memory, never written."""
        if not self._writes:
            return np.zeros(shape, dtype)
        header = _npy_header(shape, dtype)
        self.write(arg, _reserved, header, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        item = self._items[arg]
        try:
            item.array = np.memmap(item.tmp, dtype, "r+", len(header), shape)
        except OSError as err:
            self.discard()
            raise ValueError(f"{arg}: cannot write {item.path}: {reason(err)}") from None
        return item.array

    def commit(self) -> None:
        """Rename every temporary onto its output; all of them or none."""
        if not self._writes:
            self._items.clear()
            return
        items = list(self._items.values())
        unwritten = [item.arg for item in items if not item.written]
        if unwritten:
            self.discard()
            raise RuntimeError(f"{unwritten[0]}: never written")
        for item in items:
            if item.array is not None:
                try:
                    item.array.flush()
                except OSError as err:
                    self.discard()
                    raise ValueError(
                        f"{item.arg}: cannot write {item.path}: {reason(err)}"
                    ) from None
                item.array = None
        for item in items:
            if item.existed:
                try:
                    item.backup = _keep(item)
                except OSError as err:
                    self.discard()
                    raise ValueError(
                        f"{item.arg}: cannot replace {item.path}: {reason(err)}"
                    ) from None
        done: list[_Pending] = []
        for item in items:
            try:
                os.replace(item.tmp, item.final)
            except OSError as err:
                self._roll_back(done)
                self.discard()
                raise ValueError(f"{item.arg}: cannot write {item.path}: {reason(err)}") from None
            done.append(item)
        for item in items:
            if item.backup:
                with contextlib.suppress(OSError):
                    os.unlink(item.backup)
            item.backup = None
        for folder in {os.path.dirname(item.final) for item in items}:
            _sync_folder(folder)
        self._items.clear()

    def _roll_back(self, done: list[_Pending]) -> None:
        for item in reversed(done):
            with contextlib.suppress(OSError):
                if item.backup:
                    os.replace(item.backup, item.final)
                    item.backup = None
                else:
                    os.unlink(item.final)

    def drop(self, arg: str) -> None:
        """Forget the output ``arg`` (its temporary is deleted): another process writes it."""
        item = self._items.pop(arg)
        item.array = None
        if item.fd is not None:
            with contextlib.suppress(OSError):
                os.close(item.fd)
        if item.tmp:
            with contextlib.suppress(OSError):
                os.unlink(item.tmp)

    def discard(self) -> None:
        """Delete every temporary (and backup); no output is touched."""
        for item in self._items.values():
            item.array = None
            if item.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(item.fd)
                item.fd = None
            for name in (item.tmp, item.backup):
                if name:
                    with contextlib.suppress(OSError):
                        os.unlink(name)
            item.backup = None
        self._items.clear()


def _npy_header(shape: tuple[int, ...], dtype: Any) -> bytes:
    """The ``.npy`` header of a C-ordered array of ``shape`` and ``dtype``."""
    buffer = io.BytesIO()
    info = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False}
    np.lib.format.write_array_header_1_0(buffer, {**info, "shape": tuple(shape)})
    return buffer.getvalue()


def _reserved(fh: Any, header: bytes, data_bytes: int) -> None:
    """Write ``header`` and make the file long enough for ``data_bytes`` more (zeros), its
    blocks allocated where the system can."""
    fh.write(header)
    fh.flush()
    size = len(header) + data_bytes
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is not None:
        try:
            allocate(fh.fileno(), 0, size)
            return
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
    os.ftruncate(fh.fileno(), size)


def _keep(item: _Pending) -> str:
    """A second name for the file about to be replaced, so that it can be put back."""
    backup = item.tmp[: -len(".tmp")] + ".old"
    try:
        os.link(item.final, backup)
    except OSError:
        shutil.copy2(item.final, backup)
    return backup


def _sync_folder(folder: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def reason(err: OSError) -> str:
    """The system's words for an ``OSError`` (``No space left on device``)."""
    return err.strerror or first_line(err)


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type's name."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
