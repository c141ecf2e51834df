"""The input pipeline: samples -> epoch orders -> views -> uint8 batches -> devices (grain).

- :func:`load_inputs`: opens the data a config names and decides which samples train: the target
  subset (all, a per-class fraction for Fig. 3b, or a long tail for Table 3), the validation
  share held out of it, and the pre-training samples of the selected units, or of a per-sample
  list (:mod:`uotsel_train.selected`). The test set must have the target's classes, by name.
- :func:`steps`: the run's batches as a grain ``MapDataset`` indexed by step: two seeded
  streams (target, pre-training) each reshuffled at each of its own epochs, the views each
  objective asks for (:func:`uotsel_train.augment.view`), each process only its own rows.
- :class:`Pipeline`: those batches from a given step on, made by ``cfg.workers`` processes and
  placed on the data-parallel mesh one step ahead.

Every augmentation is drawn from ``(seed, step, stream, sample, view)`` and every stream
position is a function of the step, so a batch is a pure function of the step: workers,
prefetching and resuming change nothing.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import warnings
from typing import Any, NamedTuple

import numpy as np

from uotsel_train import augment, data, loader, objectives, parallel, selected, streams

__all__ = ["Inputs", "Pipeline", "load_inputs", "open_source", "steps"]


def open_source(spec: str, data_dir: str, default_split: str, key: str) -> Any:
    """An image folder, or ``tfds:NAME[:SPLIT]``; errors name the config ``key``."""
    try:
        if spec.startswith("tfds:"):
            name, _, split = spec[len("tfds:") :].partition(":")
            return data.TfdsSource(name, split or default_split, data_dir=data_dir or None)
        return data.ImageFolder(spec)
    except ValueError as err:
        message = str(err)
        if message.startswith("data:"):
            message = message[len("data:") :]
        raise ValueError(f"{key}:{message}") from None


class Inputs(NamedTuple):
    """What a run reads.

    Attributes:
      target: the target source; ``train_indices`` ``[N_t]`` its samples that train and
        ``val_indices`` ``[N_v]`` those held out for validation (empty without).
      test: the test source, or None.
      pretrain: the pre-training source, or None (vanilla objective);
        ``pretrain_indices`` ``[N_s]`` the samples of the chosen units.
      num_source_classes: width of the source head (the pre-training data's class count).
      notes: one line per decision, for the run's log.
    """

    target: Any
    train_indices: np.ndarray
    val_indices: np.ndarray
    test: Any
    pretrain: Any
    pretrain_indices: np.ndarray | None
    num_source_classes: int
    notes: tuple[str, ...] = ()


def _target_split(cfg: Any, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    everything = np.arange(labels.size, dtype=np.int64)
    if cfg.target_fraction < 1:
        kept = streams.class_fraction(labels, cfg.target_fraction, cfg.subset_seed)
        what = f"{cfg.target_fraction:g} of every class"
    elif cfg.long_tail > 1:
        kept = streams.long_tail(
            labels, cfg.long_tail, cfg.subset_seed, profile=cfg.long_tail_profile
        )
        what = f"{cfg.long_tail_profile} long tail, imbalance {cfg.long_tail:g}"
    else:
        kept, what = everything, "all"
    if not cfg.val_fraction:
        return kept, np.zeros(0, np.int64), what
    val = kept[streams.class_fraction(labels[kept], cfg.val_fraction, cfg.subset_seed + 1)]
    return np.setdiff1d(kept, val), val, f"{what}, {val.size} held out for validation"


def _check_test_classes(target: Any, test: Any) -> None:
    if list(test.classes) != list(target.classes):
        diff = sorted(set(test.classes) ^ set(target.classes))
        detail = f" (first difference: {diff[0]!r})" if diff else " (same names, other order)"
        raise ValueError(
            f"test: its {len(test.classes)} classes are not the target's "
            f"{len(target.classes)}{detail}"
        )


def _pretrain_samples(cfg: Any, pretrain: Any) -> tuple[np.ndarray, str]:
    """The pre-training samples that train, with a note, after ``pretrain_fraction``."""
    indices, line = _chosen_samples(cfg, pretrain)
    if cfg.pretrain_fraction < 1:
        ids = _unit_ids(cfg, pretrain)[0][indices]
        indices = indices[streams.class_fraction(ids, cfg.pretrain_fraction, cfg.subset_seed)]
        line += f", of which {cfg.pretrain_fraction:g} of every unit: {indices.size} images"
    return indices, line


def _chosen_samples(cfg: Any, pretrain: Any) -> tuple[np.ndarray, str]:
    if cfg.samples:
        return _sample_list(cfg, pretrain)
    if cfg.units == "all":
        indices = np.arange(len(pretrain), dtype=np.int64)
        return indices, f"every unit: {indices.size} images"
    record = selected.read(cfg.selection)
    units = _unit_ids(cfg, pretrain)
    _check_selection(cfg, units, record)
    choice = selected.units(record, units=cfg.units, top_k=cfg.top_k, group=cfg.group)
    indices = streams.selected_samples(units[0], choice.units)
    return indices, f"{choice.what}: {choice.units.size} units, {indices.size} images"


def _sample_list(cfg: Any, pretrain: Any) -> tuple[np.ndarray, str]:
    """The samples of a per-sample list (``samples``), held against its selection file when
    one is given too."""
    choice = selected.samples(cfg.samples, len(pretrain))
    if cfg.selection:
        record = selected.read(cfg.selection)
        selected.check_samples(record, choice.units, len(pretrain))
        _check_selection(cfg, _unit_ids(cfg, pretrain), record)
    return choice.units, f"{choice.what}: {choice.units.size} images"


def _unit_ids(cfg: Any, pretrain: Any) -> tuple[np.ndarray, int, list | None]:
    """Per-sample unit ids of the pre-training data (``unit_ids``, else its labels), the
    number of units and their names (None for a unit-id file)."""
    if cfg.unit_ids:
        ids = selected.unit_ids(cfg.unit_ids, len(pretrain))
        return ids, int(ids.max()) + 1 if ids.size else 0, None
    return pretrain.labels, len(pretrain.classes), list(pretrain.classes)


def _check_selection(cfg: Any, units: tuple, record: dict) -> None:
    """The selection file against the pre-training data's units (from :func:`_unit_ids`;
    :func:`selected.check_against`)."""
    _, num_units, names = units
    selected.check_against(
        record,
        strategy=cfg.selection_strategy,
        num_units=num_units,
        unit_names=names,
        unit_file=cfg.unit_ids,
    )


def load_inputs(cfg: Any) -> Inputs:
    """Open the data of ``cfg`` (a validated config) and choose the training samples.

    Raises:
      ValueError: starting with the config key at fault (``target:``, ``test:``,
        ``pretrain:``, ``selection:``, ``unit_ids:``, ...).
    """
    target = open_source(cfg.target, cfg.data_dir, "train", "target")
    test = open_source(cfg.test, cfg.data_dir, "test", "test") if cfg.test else None
    if test is not None:
        _check_test_classes(target, test)
    train, val, what = _target_split(cfg, np.asarray(target.labels))
    notes = [f"target: {train.size} training images ({what}) in {len(target.classes)} classes"]
    pretrain = indices = None
    num_source = 0
    objective = objectives.get(cfg.objective)
    if objective.needs_source:
        pretrain = open_source(cfg.pretrain, cfg.data_dir, "train", "pretrain")
        indices, line = _pretrain_samples(cfg, pretrain)
        notes.append(f"pre-training: {line}")
        num_source = len(pretrain.classes) if objective.source_head else 0
    if train.size < cfg.batch_size:
        raise ValueError(
            f"batch_size: {cfg.batch_size} is more than the {train.size} target training images"
        )
    return Inputs(target, train, val, test, pretrain, indices, num_source, tuple(notes))


def _plan(cfg: Any, inputs: Inputs, mesh: Any) -> loader.StepPlan:
    objective = objectives.get(cfg.objective)
    b, s = cfg.batch_size, cfg.source_batch_size
    size, scale = cfg.image_size, tuple(cfg.crop_scale)
    return loader.StepPlan(
        seed=cfg.seed,
        batch_size=b,
        source_batch_size=s,
        target_rows=parallel.local_rows(mesh, b),
        source_rows=parallel.local_rows(mesh, s),
        target_views=(augment.view("train", size, scale),),
        source_views=tuple(
            augment.view(v, size, scale, cfg.strong_view) for v in objective.source_views
        ),
        source_labels=objective.source_labels,
    )


def steps(cfg: Any, inputs: Inputs, mesh: Any) -> Any:
    """The grain ``MapDataset`` whose element ``s`` is this process's rows of step ``s``'s
    batch (uint8 images, int32 labels; see :func:`uotsel_train.loader.training`)."""
    needs = objectives.get(cfg.objective).needs_source
    return loader.training(
        inputs.target,
        inputs.train_indices,
        inputs.pretrain if needs else None,
        inputs.pretrain_indices if needs else None,
        _plan(cfg, inputs, mesh),
    )


class Pipeline:
    """The batches of a run from step ``start`` on, on the devices, as a context manager.

    ``next()`` returns ``(batch, positions)``: the global batch of the next step placed on
    ``mesh`` (``<part>_images`` uint8, ``target_labels``, ``source_labels``) and the two stream
    positions after it (what a checkpoint stores). ``cfg.workers`` processes decode (0: a
    thread of this process), each keeping ``cfg.prefetch`` batches ready; a thread of this
    process places the next batch on the devices while the current step runs. Unreadable
    images are replaced within their batch and reported with a warning naming the file.

    Raises (from ``next``):
      uotsel_train.loader.WorkerDied: a worker process died, naming the image it was reading.
      ValueError: every image of a batch is unreadable.
    """

    def __init__(self, cfg: Any, inputs: Inputs, mesh: Any, start: int, end: int):
        self.cfg, self.mesh, self.step = cfg, mesh, start
        objective = objectives.get(cfg.objective)
        b, s = cfg.batch_size, cfg.source_batch_size
        self.sizes = {"target_images": b, "target_labels": b}
        for view in objective.source_views:
            self.sizes[f"source_{view}_images"] = s
        if objective.source_labels:
            self.sizes["source_labels"] = s
        self.per_step = (b, s if objective.needs_source else 0)
        self.skipped = 0
        self._ds = steps(cfg, inputs, mesh)[start:end]
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Pipeline:
        cfg = self.cfg
        made = self._stack.enter_context(loader.iterate(self._ds, cfg.workers, cfg.prefetch))
        self._placed = self._stack.enter_context(_Ahead(made, self._place, cfg.workers == 0))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def _place(self, local: dict) -> dict:
        bad = local.pop("bad")
        return parallel.global_batch(self.mesh, local, self.sizes), bad

    def next(self) -> tuple[dict, tuple[int, int]]:
        batch, bad = next(self._placed)
        for _, where, error in bad:
            warnings.warn(f"replacing unreadable image {where}: {error}", stacklevel=2)
        self.skipped += len(bad)
        self.step += 1
        return batch, self.positions(self.step)

    def positions(self, step: int) -> tuple[int, int]:
        """The two stream positions before step ``step`` (after ``step - 1``)."""
        return step * self.per_step[0], step * self.per_step[1]


class _Ahead:
    """Runs ``place`` on the items of ``made`` one item ahead, in a background thread (with
    ``depth`` items kept when decoding happens in the thread too)."""

    def __init__(self, made: Any, place: Any, decoding_here: bool):
        depth = 2 if decoding_here else 1
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(made, place), daemon=True)

    def __enter__(self) -> _Ahead:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()

    def _run(self, made: Any, place: Any) -> None:
        try:
            for item in made:
                if not self._put((place(item), None)):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            self._put((None, err))
            return
        self._put((None, StopIteration()))

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> _Ahead:
        return self

    def __next__(self) -> Any:
        item, err = self._queue.get()
        if err is not None:
            raise err
        return item
