"""The input pipeline: samples -> epoch order -> views -> batches.

- :func:`load_inputs`: opens the data a config names and decides which samples train: the target
  subset (all, a per-class fraction for Fig. 3b, or a long tail for Table 3), the validation
  share held out of it, and the pre-training samples of the selected units
  (:mod:`uotsel_train.selected`). The test set must have the target's classes, by name.
- :class:`Pipeline`: two seeded, resumable epoch orders (target, pre-training), the views each
  objective asks for (:data:`VIEWS`), decoding in one thread pool per run, and the global batch
  of a step placed on the data-parallel mesh (each process loads only its own rows).

Every augmentation is drawn from ``(seed, step, stream, sample, view)``, so a batch is a pure
function of the step and the stream positions: prefetching, threads and resuming change nothing.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from uotsel_train import augment, data, objectives, parallel, selected, streams

__all__ = ["VIEWS", "Inputs", "Pipeline", "load_inputs", "open_source"]


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
    record = selected.read(cfg.selection)
    if cfg.unit_ids:
        ids = selected.unit_ids(cfg.unit_ids, len(pretrain))
        num_units, names = int(ids.max()) + 1 if ids.size else 0, None
    else:
        ids, num_units, names = pretrain.labels, len(pretrain.classes), list(pretrain.classes)
    selected.check_against(
        record,
        strategy=cfg.selection_strategy,
        num_units=num_units,
        unit_names=names,
        unit_file=cfg.unit_ids,
    )
    choice = selected.units(record, top_k=cfg.top_k, group=cfg.group)
    indices = streams.selected_samples(ids, choice.units)
    return indices, f"{choice.what}: {choice.units.size} units, {indices.size} images"


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


def _train(img, rng, cfg):
    return data.train_transform(img, rng, cfg.image_size, tuple(cfg.crop_scale))


def _strong(img, rng, cfg):
    return augment.strong_view(
        img, rng, cfg.image_size, scale=tuple(cfg.crop_scale), policy=cfg.strong_view
    )


# view name -> (its number in the seed, transform(image, rng, cfg) -> [S, S, 3] float32)
VIEWS: dict[str, tuple[int, Callable]] = {
    "train": (0, _train),
    "weak": (1, _train),  # eq. 7's weak view is the training crop + flip
    "strong": (2, _strong),
}


class Pipeline:
    """The batches of a run, step by step.

    ``make(step)`` returns ``(batch, positions)``: the global batch of ``step`` placed on
    ``mesh`` (``<part>_images``, ``target_labels``, ``source_labels``) and the two stream
    positions after it (what a checkpoint stores). ``positions`` at construction resume the
    streams.
    """

    def __init__(self, cfg: Any, inputs: Inputs, mesh: Any, positions: tuple[int, int], dtype):
        self.cfg, self.inputs, self.mesh = cfg, inputs, mesh
        self.objective = objectives.get(cfg.objective)
        self.target_order = streams.EpochOrder(inputs.train_indices, cfg.seed, positions[0])
        self.source_order = None
        if self.objective.needs_source:
            self.source_order = streams.EpochOrder(
                inputs.pretrain_indices, cfg.seed + 1, positions[1]
            )
        self.dtype = dtype
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=cfg.workers)
        b, s = cfg.batch_size, cfg.source_batch_size
        self.sizes = {"target_images": b, "target_labels": b}
        for view in self.objective.source_views:
            self.sizes[f"source_{view}_images"] = s
        if self.objective.source_head:
            self.sizes["source_labels"] = s
        self.rows = {n: parallel.local_rows(mesh, n) for n in {b, s}}

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def _load(self, source, indices, step: int, stream: int, views) -> data.Batch:
        """``images [n, V, S, S, 3]`` of ``views``; an unreadable image is replaced by a
        readable one of the same rows (with a warning) so shapes and streams stay aligned."""
        cfg = self.cfg

        def transform(img, index):
            return np.stack(
                [
                    fn(img, np.random.default_rng([cfg.seed, step, stream, index, num]), cfg)
                    for num, fn in (VIEWS[v] for v in views)
                ]
            )

        got = list(data.batches(source, indices, transform, max(1, len(indices)), pool=self.pool))
        if not got:
            raise ValueError(
                f"data: all {len(indices)} images of a batch are unreadable "
                f"(first index {int(indices[0])})"
            )
        b = got[0]
        if len(b.indices) < len(indices):
            fill = np.resize(np.arange(len(b.indices)), len(indices))
            b = data.Batch(b.images[fill], b.labels[fill], b.indices[fill])
        return b

    def make(self, step: int) -> tuple[dict, tuple[int, int]]:
        cfg, inputs = self.cfg, self.inputs
        idx = self.target_order.take(cfg.batch_size)[self.rows[cfg.batch_size]]
        tb = self._load(inputs.target, idx, step, 0, ("train",))
        local = {"target_images": tb.images[:, 0], "target_labels": tb.labels}
        if self.source_order is not None:
            rows = self.rows[cfg.source_batch_size]
            idx = self.source_order.take(cfg.source_batch_size)[rows]
            views = self.objective.source_views
            sb = self._load(inputs.pretrain, idx, step, 1, views)
            for i, view in enumerate(views):
                local[f"source_{view}_images"] = sb.images[:, i]
            if self.objective.source_head:
                local["source_labels"] = sb.labels
        local = {
            k: v.astype(self.dtype) if k.endswith("images") else v.astype(np.int32)
            for k, v in local.items()
        }
        after = (self.target_order.position, self.source_order.position if self.source_order else 0)
        return parallel.global_batch(self.mesh, local, self.sizes), after
