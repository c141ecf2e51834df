"""Where a run's numbers go: ``metrics.jsonl``, TensorBoard event files, and the log.

Two kinds of record, both keyed by the global ``step`` and the (fractional) ``epoch``:

- ``train``, every ``log_every_steps`` steps and at the end of every epoch: the means since the
  last record of the loss and its terms (``target_ce``, ``source_ce`` or ``pseudo_ce`` and
  ``mask_rate``), ``grad_norm`` and ``step_s`` (seconds per step), the learning rates of the
  backbone (and of a kept pre-trained classifier) and of the freshly drawn heads at that step,
  and ``images_per_s``;
- ``eval``, at every evaluation: ``test_top1``, ``test_mean_class_acc`` (and ``val_...`` with
  a validation split), and the best of each so far (``best_test_top1``, ...).

``metrics.jsonl`` holds one JSON object a line with ``kind``; TensorBoard gets the same scalars
as ``train/<name>`` and ``eval/<name>`` through tensorboardX (no TensorFlow needed), in event
files in the run folder (``tensorboard --logdir runs/``). Only process 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

__all__ = ["Writer", "read"]

logger = logging.getLogger("uotsel_train")


class Writer:
    """The metrics of the run in ``out_dir``; a no-op where ``enabled`` is False."""

    def __init__(self, out_dir: str, enabled: bool = True):
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.enabled = enabled
        self._board = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                logger.info("tensorboardX is not installed: no TensorBoard event files")
            else:
                self._board = SummaryWriter(out_dir, flush_secs=30)

    def write(self, kind: str, step: int, epoch: float, scalars: dict[str, float]) -> None:
        """Append one record of ``kind`` (``train`` or ``eval``).

        Raises:
          ValueError: starting with ``out_dir:`` when the file cannot be written.
        """
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "epoch": epoch, **scalars}
        try:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as err:
            raise ValueError(f"out_dir: cannot write {self.path}: {err.strerror or err}") from None
        if self._board is not None:
            for name, value in scalars.items():
                self._board.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self._board is not None:
            self._board.close()
            self._board = None


def read(run_dir: str, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` (of one ``kind`` when given).

    Raises:
      ValueError: starting with ``run:`` when the file is missing or damaged.
    """
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        with open(path) as fh:
            records = [json.loads(line) for line in fh if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"run: cannot read {path}: {err}") from None
    return [r for r in records if kind is None or r.get("kind") == kind]
