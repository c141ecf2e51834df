"""A run folder's checkpoints (orbax): the whole state of a run at the end of an epoch.

A checkpoint holds the train state (step, parameters, batch statistics, optimiser state), the
seed and the data state: the positions of the two sample streams after the step. Every data
order and augmentation is drawn from ``(seed, step, position)``, so these are the run's whole
random state and a resumed run is bit-identical to an uninterrupted one. The grain iterator is
rebuilt from them (its element ``s`` is step ``s``'s batch) rather than restored from grain's
own iterator state, which records the worker layout: ``workers`` and ``prefetch`` may change
between a run and its resumption. Writes are atomic (a failed write leaves the previous
checkpoint); the last two are kept.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import numpy as np

from uotsel_train import step

__all__ = ["Restored", "Store"]


class Restored(NamedTuple):
    state: step.TrainState
    positions: tuple[int, int]


def _snapshot(state: step.TrainState, seed: int, positions: tuple[int, int]) -> dict:
    return {
        "state": state._asdict(),
        "seed": np.asarray(seed, np.int64),
        "target_position": np.asarray(positions[0], np.int64),
        "source_position": np.asarray(positions[1], np.int64),
    }


class Store:
    """The checkpoints under ``out_dir/checkpoints``."""

    def __init__(self, out_dir: str):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.path = os.path.abspath(os.path.join(out_dir, "checkpoints"))
        try:
            self.manager = ocp.CheckpointManager(
                self.path, options=ocp.CheckpointManagerOptions(max_to_keep=2)
            )
        except (OSError, ValueError) as err:
            raise ValueError(f"out_dir: cannot keep checkpoints in {self.path}: {err}") from None

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, template: step.TrainState, seed: int) -> Restored:
        """The latest checkpoint, shaped like ``template``.

        Raises:
          ValueError: a damaged checkpoint, one laid out otherwise than ``template`` (an
            earlier version's optimiser groups), or one made with another seed.
        """
        latest = self.latest()
        args = self._ocp.args.StandardRestore(_snapshot(template, seed, (0, 0)))
        try:
            got = self.manager.restore(latest, args=args)
        except Exception as err:  # orbax raises many kinds for damaged files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"out_dir: the checkpoint at step {latest} in {self.path} cannot be read ({first})"
            ) from None
        restored = step.TrainState(**got["state"])
        if jax.tree.structure(restored) != jax.tree.structure(template):
            raise ValueError(
                f"out_dir: the checkpoint at step {latest} in {self.path} is laid out otherwise "
                "than this run's state (an earlier version's optimiser groups); start a new run"
            )
        if int(got["seed"]) != seed:
            raise ValueError(
                f"seed: the checkpoint in {self.path} was made with seed {int(got['seed'])}"
            )
        positions = (int(got["target_position"]), int(got["source_position"]))
        return Restored(restored, positions)

    def save(self, state: step.TrainState, seed: int, positions: tuple[int, int]) -> None:
        """Write a checkpoint at ``state.step`` and wait until it is complete.

        Raises:
          ValueError: when it cannot be written (the previous checkpoint stays).
        """
        args = self._ocp.args.StandardSave(_snapshot(state, seed, positions))
        try:
            self.manager.save(int(state.step), args=args)
            self.manager.wait_until_finished()
        except OSError as err:
            raise ValueError(f"out_dir: cannot write a checkpoint in {self.path}: {err}") from None
