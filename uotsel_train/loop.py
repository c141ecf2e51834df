"""The fine-tuning loop: target data plus the selected pre-training data (paper eq. 6 / 7).

One step takes ``batch_size`` target images and (labelled / unlabelled objectives)
``source_batch_size`` pre-training images from two independent, seeded, resumable streams; an
epoch is one pass over the target set (drop last). Every ``checkpoint_every`` epochs the whole
state (step, parameters, batch statistics, optimiser state, stream positions) is written with
orbax into ``out_dir/checkpoints`` (atomically: a failed write leaves the previous checkpoint),
metrics go to ``out_dir/metrics.jsonl``, and ``resume=True`` continues exactly where the last
checkpoint left off (the learning-rate schedule does not restart). A NaN or infinite loss stops
the run with a clear message; the last good checkpoint is left intact.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uotsel_train import augment, data, optim, step, streams

__all__ = ["Config", "evaluate", "fit"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Training settings; the defaults are the paper's common ones (see ``docs/train.md``)."""

    arch: str = "resnet18"
    objective: str = "labelled"  # "vanilla", "labelled" or "unlabelled"
    lr: float = 0.003
    weight_decay: float = 1e-4
    lam: float = 0.3
    epochs: int = 100
    milestones: tuple[int, ...] = (60, 80)
    batch_size: int = 256
    source_batch_size: int = 256
    image_size: int = 224
    threshold: float | None = None
    eval_every: int = 10
    checkpoint_every: int = 1
    seed: int = 0
    workers: int = 4


def _train_view(img, index: int, *, seed: int, step: int, size: int) -> np.ndarray:
    """The training crop of sample ``index`` at ``step``: seeded by both, so any thread and
    any resumed run draw the same augmentation."""
    return data.train_transform(img, np.random.default_rng([seed, step, index]), size)


def _two_views(img, index: int, *, seed: int, step: int, size: int) -> np.ndarray:
    """``[2, size, size, 3]``: the weak and the (independent) strong view of eq. 7."""
    return np.stack(
        [
            augment.weak_view(img, np.random.default_rng([seed, step, index, 0]), size),
            augment.strong_view(img, np.random.default_rng([seed, step, index, 1]), size),
        ]
    )


def _load_full(
    source, order: streams.EpochOrder, count: int, transform, workers: int
) -> data.Batch:
    """``count`` samples from ``order``; unreadable ones are replaced by the next in line, so
    every step has the same shapes."""
    got: list[data.Batch] = []
    have = 0
    while have < count:
        idx = order.take(count - have)
        for b in data.batches(source, idx, transform, count, workers=workers):
            got.append(b)
            have += len(b.indices)
    return data.Batch(*(np.concatenate(parts) for parts in zip(*got, strict=True)))


def evaluate(
    model, variables, source, image_size: int, batch_size: int = 64, workers: int = 4
) -> dict[str, float]:
    """Top-1 and mean per-class accuracy of the target head on ``source``."""

    @jax.jit
    def predict(images):
        logits, _, _ = model.apply(variables, images, train=False)
        return jnp.argmax(logits, axis=1)

    preds, labels = [], []
    resize = round(image_size * 256 / 224)
    for b in data.batches(
        source,
        range(len(source)),
        lambda img, i: data.eval_transform(img, image_size, resize),
        batch_size,
        workers=workers,
    ):
        preds.append(np.asarray(predict(jnp.asarray(b.images))))
        labels.append(b.labels)
    p, y = np.concatenate(preds), np.concatenate(labels)
    per_class = [np.mean(p[y == c] == c) for c in np.unique(y)]
    return {"top1": float(np.mean(p == y)), "mean_class_acc": float(np.mean(per_class))}


def fit(
    cfg: Config,
    model: Any,
    variables: Any,
    target_train: Any,
    out_dir: str,
    *,
    target_test: Any = None,
    pretrain: Any = None,
    pretrain_indices: Any = None,
    resume: bool = False,
    until_epoch: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fine-tune ``model`` (a :class:`~uotsel_train.models.FineTuner`) from ``variables``.

    Args:
      target_train, target_test: target sources (``len``, ``load(i)``, ``labels``).
      pretrain: the pre-training source; ``pretrain_indices`` its selected samples
        (:func:`uotsel_train.streams.selected_samples`); labels of ``pretrain`` feed the
        source head (labelled objective).
      out_dir: this run's folder (created); never the working directory implicitly.
      resume: continue from the latest checkpoint in ``out_dir``.
      until_epoch: stop after this epoch (a time-sliced job); resume later.

    Returns:
      ``{"step", "epoch", "state", "eval"}`` (the last evaluation, if any).

    Raises:
      ValueError: on inconsistent settings, before any work.
      FloatingPointError: when the loss becomes NaN or infinite (the last checkpoint stays).
    """
    import orbax.checkpoint as ocp

    if cfg.objective not in step.OBJECTIVES:
        raise ValueError(
            f"objective: unknown {cfg.objective!r}; valid: {', '.join(step.OBJECTIVES)}"
        )
    needs_source = cfg.objective != "vanilla"
    if needs_source and (pretrain is None or pretrain_indices is None):
        raise ValueError(
            f"pretrain: the {cfg.objective} objective needs pre-training data "
            "and the selected sample indices"
        )
    steps_per_epoch = len(target_train) // cfg.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch_size: {cfg.batch_size} is more than the {len(target_train)} target images"
        )
    os.makedirs(out_dir, exist_ok=True)
    tx = optim.sgd(cfg.lr, cfg.weight_decay, steps_per_epoch, milestones=cfg.milestones)
    state = step.init_state(variables, tx)
    target_order = streams.EpochOrder(np.arange(len(target_train)), cfg.seed)
    source_order = streams.EpochOrder(pretrain_indices, cfg.seed + 1) if needs_source else None
    manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(out_dir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=2),
    )

    def snapshot():
        return {
            "state": state._asdict(),
            "target_position": np.asarray(target_order.position, np.int64),
            "source_position": np.asarray(source_order.position if source_order else 0, np.int64),
        }

    if resume and manager.latest_step() is not None:
        restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(snapshot()))
        state = step.TrainState(**restored["state"])
        target_order.position = int(restored["target_position"])
        if source_order is not None:
            source_order.position = int(restored["source_position"])
        log(f"resumed at step {int(state.step)}")

    train = jax.jit(
        step.train_step(model, tx, cfg.objective, cfg.lam, cfg.threshold), donate_argnums=0
    )
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    size = cfg.image_size
    last_eval = None
    start_epoch = int(state.step) // steps_per_epoch
    end_epoch = cfg.epochs if until_epoch is None else min(cfg.epochs, until_epoch)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        losses = []
        for _ in range(steps_per_epoch):
            s = int(state.step)
            aug = functools.partial(_train_view, seed=cfg.seed, step=s, size=size)
            tb = _load_full(target_train, target_order, cfg.batch_size, aug, cfg.workers)
            batch = {"target_images": tb.images, "target_labels": tb.labels}
            if cfg.objective == "labelled":
                sb = _load_full(pretrain, source_order, cfg.source_batch_size, aug, cfg.workers)
                batch |= {"source_images": sb.images, "source_labels": sb.labels}
            elif cfg.objective == "unlabelled":
                views = functools.partial(_two_views, seed=cfg.seed, step=s, size=size)
                sb = _load_full(pretrain, source_order, cfg.source_batch_size, views, cfg.workers)
                batch |= {"weak_images": sb.images[:, 0], "strong_images": sb.images[:, 1]}
            batch = streams.shard_batch({k: np.asarray(v) for k, v in batch.items()})
            state, metrics = train(state, batch)
            if not bool(metrics["finite"]):
                raise FloatingPointError(
                    f"the loss became {float(metrics['loss'])} at step {s} (epoch {epoch}); "
                    f"the last good checkpoint (step {manager.latest_step()}) is intact in "
                    f"{out_dir}"
                )
            losses.append(float(metrics["loss"]))
        record = {
            "epoch": epoch + 1,
            "step": int(state.step),
            "loss": float(np.mean(losses)),
            "seconds": time.perf_counter() - t0,
        }
        if target_test is not None and (
            (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
        ):
            last_eval = evaluate(
                model,
                {"params": state.params, "batch_stats": state.batch_stats},
                target_test,
                size,
                workers=cfg.workers,
            )
            record |= last_eval
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        log(
            " ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
            )
        )
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == end_epoch:
            manager.save(int(state.step), args=ocp.args.StandardSave(snapshot()))
            manager.wait_until_finished()
    return {
        "step": int(state.step),
        "epoch": int(state.step) // steps_per_epoch,
        "state": state,
        "eval": last_eval,
    }
