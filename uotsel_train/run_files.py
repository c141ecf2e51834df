"""Files of a run folder, each written whole or not at all; a failed write is one line
naming ``out_dir``."""

from __future__ import annotations

import numpy as np

from uotsel.io import write_json
from uotsel.outputs import atomic_writer

__all__ = ["save_array", "write_record"]


def write_record(path: str, record: dict) -> None:
    """``record`` as JSON at ``path``.

    Raises:
      ValueError: starting with ``out_dir:`` when it cannot be written.
    """
    try:
        write_json(path, record)
    except OSError as err:
        raise ValueError(f"out_dir: cannot write {path}: {err.strerror or err}") from None


def save_array(path: str, array: np.ndarray) -> None:
    """``array`` as an ``.npy`` at ``path``, written atomically (whole or absent).

    Raises:
      ValueError: starting with ``out_dir:`` when it cannot be written.
    """
    try:
        with atomic_writer(path, "wb") as fh:
            np.save(fh, array)
    except OSError as err:
        raise ValueError(f"out_dir: cannot write {path}: {err.strerror or err}") from None
