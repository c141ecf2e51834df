"""The fine-tuning loop: target data plus the selected pre-training data (paper eq. 6 / 7).

One step takes ``batch_size`` target images and (labelled / unlabelled objectives)
``source_batch_size`` pre-training images from two independent, seeded, resumable streams; an
epoch is one pass over the target set (drop last). Batches are split over every device of every
process (:mod:`uotsel_train.parallel`) and made ahead of time in a background thread
(:mod:`uotsel_train.feed`). Every ``checkpoint_every`` epochs the whole state (step,
parameters, batch statistics, optimiser state, stream positions) is written with orbax into
``out_dir/checkpoints`` (atomically: a failed write leaves the previous checkpoint), metrics go
to ``out_dir/metrics.jsonl``, and ``resume=True`` continues exactly where the last checkpoint
left off (the learning-rate schedule does not restart). A NaN or infinite loss stops the run
with a clear message; the last good checkpoint is left intact.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from uotsel.io import write_json
from uotsel_train import augment, data, feed, objectives, optim, parallel, step, streams

__all__ = ["PRECISIONS", "Config", "evaluate", "fit"]

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Config:
    """Training settings; the defaults are the paper's common ones (see ``docs/finetune.md``)."""

    arch: str = "resnet18"
    objective: str = "labelled"  # "vanilla", "labelled" or "unlabelled"
    lr: float = 0.003
    weight_decay: float = 1e-4
    lam: float = 0.3
    epochs: int = 100
    milestones: tuple[int, ...] = (60, 80)
    batch_size: int = 256  # target images per step, all devices together
    source_batch_size: int = 256  # pre-training images per step
    image_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area range of the random resized crop
    threshold: float | None = None  # eq. 7 confidence threshold (None: every sample counts)
    precision: str = "float32"  # or "bfloat16": mixed precision, float32 parameters
    eval_every: int = 10
    checkpoint_every: int = 1
    seed: int = 0
    workers: int = 4  # decoding threads per process
    prefetch: int = 2  # batches made ahead of time
    progress: bool = True  # a progress line on an interactive terminal


def _train_view(
    img, index: int, *, seed: int, step: int, size: int, scale: tuple[float, float]
) -> np.ndarray:
    """The training crop of sample ``index`` at ``step``: seeded by both, so any thread and
    any resumed run draw the same augmentation."""
    return data.train_transform(img, np.random.default_rng([seed, step, index]), size, scale)


def _two_views(
    img, index: int, *, seed: int, step: int, size: int, scale: tuple[float, float]
) -> np.ndarray:
    """``[2, size, size, 3]``: the weak and the (independent) strong view of eq. 7."""
    return np.stack(
        [
            augment.weak_view(img, np.random.default_rng([seed, step, index, 0]), size, scale),
            augment.strong_view(
                img, np.random.default_rng([seed, step, index, 1]), size, scale=scale
            ),
        ]
    )


def _load_rows(source, indices: np.ndarray, transform, workers: int) -> data.Batch:
    """The samples at ``indices``, in order; an unreadable image is replaced by a readable one
    of the same rows (with a warning), so every step has the same shapes and every process
    advances its streams alike."""
    got = list(data.batches(source, indices, transform, max(1, len(indices)), workers=workers))
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


def _check_config(cfg: Config) -> None:
    """One-line ``ValueError`` naming the first setting out of range."""
    at_least_one = (
        "epochs",
        "batch_size",
        "source_batch_size",
        "image_size",
        "eval_every",
        "checkpoint_every",
        "workers",
    )
    for name in at_least_one:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name}: must be >= 1, got {getattr(cfg, name)}")
    for name in ("lr", "weight_decay", "lam", "prefetch"):
        value = getattr(cfg, name)
        if not np.isfinite(value) or value < 0 or (name == "lr" and value == 0):
            bound = "> 0" if name == "lr" else ">= 0"
            raise ValueError(f"{name}: must be a finite number {bound}, got {value}")
    lo, hi = cfg.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop_scale: need 0 < low <= high <= 1, got {cfg.crop_scale}")
    if cfg.threshold is not None and not 0 <= cfg.threshold < 1:
        raise ValueError(f"threshold: must be in [0, 1), got {cfg.threshold}")
    if any(m < 0 for m in cfg.milestones):
        raise ValueError(f"milestones: must be >= 0, got {cfg.milestones}")


# Settings that shape the trajectory: a resumed run must keep them.
_SAME_ON_RESUME = (
    "arch",
    "objective",
    "lr",
    "weight_decay",
    "lam",
    "milestones",
    "batch_size",
    "source_batch_size",
    "image_size",
    "crop_scale",
    "threshold",
    "seed",
)


def _check_same_run(cfg: Config, config_path: str) -> None:
    """Refuse to resume a run with settings that would change its course."""
    if not os.path.exists(config_path):
        return
    with open(config_path) as fh:
        before = json.load(fh)
    now = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for name in _SAME_ON_RESUME:
        if name in before and before[name] != now[name]:
            raise ValueError(
                f"{name}: the run being resumed used {before[name]}, not {now[name]} "
                "(start a new run to change it)"
            )


def _progress_line(text: str) -> None:
    sys.stderr.write("\r\x1b[2K" + text)
    sys.stderr.flush()


def _predictor(model: Any) -> Callable:
    @jax.jit
    def predict(variables, images):
        logits, _, _ = model.apply(variables, images, train=False)
        return jnp.argmax(logits, axis=1)

    return predict


def evaluate(
    model: Any,
    variables: Any,
    source: Any,
    image_size: int,
    batch_size: int = 64,
    workers: int = 4,
    *,
    predict: Callable | None = None,
) -> dict[str, float]:
    """Top-1 and mean per-class accuracy of the target head on ``source`` (evaluation
    transform: shorter side to ``image_size * 256 / 224``, centre crop).

    Each process evaluates its share of ``source`` on its own devices; the per-class counts are
    summed over processes. ``predict`` is a compiled ``(variables, images) -> labels`` to reuse
    across calls (made from ``model`` when None).
    """
    predict = predict or _predictor(model)
    local = Mesh(np.asarray(jax.local_devices()), ("data",))
    variables = jax.device_put(
        parallel.local_copy(variables), NamedSharding(local, PartitionSpec())
    )
    split = NamedSharding(local, PartitionSpec("data"))
    labels = np.asarray(source.labels)
    classes = getattr(source, "classes", None)
    num_classes = len(classes) if classes is not None else int(labels.max()) + 1
    mine = np.array_split(np.arange(len(source)), jax.process_count())[jax.process_index()]
    counts = np.zeros((2, num_classes), np.int64)  # correct, total
    resize = round(image_size * 256 / 224)
    batch_size = -(-batch_size // local.size) * local.size
    for b in data.batches(
        source,
        mine,
        lambda img, i: data.eval_transform(img, image_size, resize),
        batch_size,
        workers=workers,
    ):
        n = len(b.labels)
        padded = -(-n // local.size) * local.size
        images = np.concatenate([b.images, np.zeros((padded - n, *b.images.shape[1:]), np.float32)])
        p = np.asarray(predict(variables, jax.device_put(images, split)))[:n]
        np.add.at(counts[0], b.labels, p == b.labels)
        np.add.at(counts[1], b.labels, 1)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        counts = np.asarray(multihost_utils.process_allgather(counts)).sum(axis=0)
    seen = counts[1] > 0
    if not seen.any():
        raise ValueError("test: no readable images to evaluate")
    return {
        "top1": float(counts[0].sum() / counts[1].sum()),
        "mean_class_acc": float(np.mean(counts[0][seen] / counts[1][seen])),
    }


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
      cfg: the settings (:class:`Config`); ``cfg.precision`` overrides ``model.dtype``.
      target_train, target_test: target sources (``len``, ``load(i)``, ``labels``).
      pretrain: the pre-training source; ``pretrain_indices`` its selected samples
        (:func:`uotsel_train.streams.selected_samples`); labels of ``pretrain`` feed the
        source head (labelled objective).
      out_dir: this run's folder (created); never the working directory implicitly. With
        several processes it must be on a file system they share.
      resume: continue from the latest checkpoint in ``out_dir``.
      until_epoch: stop after this epoch (a time-sliced job); resume later.
      log: receives one line per epoch (and at resume) on process 0.

    Returns:
      ``{"step", "epoch", "state", "eval"}`` (the last evaluation, if any).

    Raises:
      ValueError: on inconsistent settings, before any work.
      FloatingPointError: when the loss becomes NaN or infinite (the last checkpoint stays).
    """
    import orbax.checkpoint as ocp

    _check_config(cfg)
    if cfg.objective not in ("vanilla", "labelled", "unlabelled"):
        raise ValueError(f"objective: unknown {cfg.objective!r}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision: unknown {cfg.precision!r}; valid: {', '.join(PRECISIONS)}")
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
    mesh = parallel.data_mesh()
    parallel.check_divisible(mesh, "batch_size", cfg.batch_size)
    if needs_source:
        parallel.check_divisible(mesh, "source_batch_size", cfg.source_batch_size)
    lead = jax.process_index() == 0
    dtype = PRECISIONS[cfg.precision]
    model = model.clone(dtype=dtype) if getattr(model, "dtype", dtype) != dtype else model
    os.makedirs(out_dir, exist_ok=True)
    tx = optim.sgd(cfg.lr, cfg.weight_decay, steps_per_epoch, milestones=cfg.milestones)
    replicated = NamedSharding(mesh, PartitionSpec())
    state = parallel.replicate(mesh, step.init_state(variables, tx))
    target_order = streams.EpochOrder(np.arange(len(target_train)), cfg.seed)
    source_order = streams.EpochOrder(pretrain_indices, cfg.seed + 1) if needs_source else None
    manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(out_dir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=2),
    )
    if not resume and manager.latest_step() is not None:
        raise ValueError(
            f"out_dir: {out_dir} already holds a run (checkpoint at step "
            f"{manager.latest_step()}); resume it or choose another folder"
        )

    def snapshot(positions):
        # All randomness (data orders, augmentations) derives from (seed, step, sample), so
        # the seed, the step and the two stream positions are the whole random state.
        return {
            "state": state._asdict(),
            "seed": np.asarray(cfg.seed, np.int64),
            "target_position": np.asarray(positions[0], np.int64),
            "source_position": np.asarray(positions[1], np.int64),
        }

    positions = (0, 0)
    config_path = os.path.join(out_dir, "config.json")
    resuming = resume and manager.latest_step() is not None
    if resuming:
        _check_same_run(cfg, config_path)
        restored = manager.restore(
            manager.latest_step(), args=ocp.args.StandardRestore(snapshot(positions))
        )
        if int(restored["seed"]) != cfg.seed:
            raise ValueError(
                f"seed: the checkpoint in {out_dir} was made with seed {int(restored['seed'])}"
            )
        state = step.TrainState(**restored["state"])
        positions = (int(restored["target_position"]), int(restored["source_position"]))
        target_order.position = positions[0]
        if source_order is not None:
            source_order.position = positions[1]
        if lead:
            log(f"resumed at step {int(state.step)}")
    if lead:
        record = {
            **json.loads(json.dumps(dataclasses.asdict(cfg))),
            "devices": mesh.size,
            "processes": jax.process_count(),
        }
        write_json(config_path, record)

    sizes = {"target_images": cfg.batch_size, "target_labels": cfg.batch_size}
    if cfg.objective == "labelled":
        sizes |= {
            "source_train_images": cfg.source_batch_size,
            "source_labels": cfg.source_batch_size,
        }
    elif cfg.objective == "unlabelled":
        sizes |= {
            "source_weak_images": cfg.source_batch_size,
            "source_strong_images": cfg.source_batch_size,
        }
    rows = {n: parallel.local_rows(mesh, n) for n in set(sizes.values())}
    transfer_dtype = np.float32 if dtype == jnp.float32 else jnp.bfloat16
    views = {"seed": cfg.seed, "size": cfg.image_size, "scale": tuple(cfg.crop_scale)}

    def make(s: int):
        """The global batch of step ``s`` (this process's rows of it), placed on the mesh."""
        local = {}
        idx = target_order.take(cfg.batch_size)[rows[cfg.batch_size]]
        aug = functools.partial(_train_view, step=s, **views)
        tb = _load_rows(target_train, idx, aug, cfg.workers)
        local |= {"target_images": tb.images, "target_labels": tb.labels}
        if needs_source:
            idx = source_order.take(cfg.source_batch_size)[rows[cfg.source_batch_size]]
            if cfg.objective == "labelled":
                sb = _load_rows(pretrain, idx, aug, cfg.workers)
                local |= {"source_train_images": sb.images, "source_labels": sb.labels}
            else:
                two = functools.partial(_two_views, step=s, **views)
                sb = _load_rows(pretrain, idx, two, cfg.workers)
                local |= {
                    "source_weak_images": sb.images[:, 0],
                    "source_strong_images": sb.images[:, 1],
                }
        local = {
            k: v.astype(transfer_dtype) if k.endswith("images") else v.astype(np.int32)
            for k, v in local.items()
        }
        after = (target_order.position, source_order.position if source_order else 0)
        return parallel.global_batch(mesh, local, sizes), after

    train = jax.jit(
        step.train_step(
            model, tx, cfg.objective, objectives.Settings(cfg.lam, cfg.threshold or 0.0)
        ),
        donate_argnums=0,
        out_shardings=(replicated, replicated),
    )
    predict = _predictor(model)
    metrics_path = os.path.join(out_dir, "metrics.jsonl")
    images_per_step = (
        cfg.batch_size
        + {"vanilla": 0, "labelled": 1, "unlabelled": 2}[cfg.objective] * cfg.source_batch_size
    )
    show = cfg.progress and lead and sys.stderr.isatty()
    last_eval = None
    start_epoch = int(state.step) // steps_per_epoch
    end_epoch = cfg.epochs if until_epoch is None else min(cfg.epochs, until_epoch)

    def check(s: int, epoch: int, metrics: dict) -> float:
        loss = float(metrics["loss"])
        if not bool(metrics["finite"]):
            if show:
                sys.stderr.write("\n")
            raise FloatingPointError(
                f"the loss became {loss} at step {s} (epoch {epoch + 1}); the last good "
                f"checkpoint (step {manager.latest_step()}) is intact in {out_dir}"
            )
        return loss

    feeder = feed.Feeder(make, int(state.step), depth=cfg.prefetch)
    try:
        for epoch in range(start_epoch, end_epoch):
            t0 = time.perf_counter()
            losses = []
            pending = None
            for i in range(steps_per_epoch):
                s = epoch * steps_per_epoch + i
                batch, after = feeder.next()
                state, metrics = train(state, batch)
                if pending is not None:  # read the previous step while this one runs
                    losses.append(check(*pending))
                    if show:
                        rate = images_per_step * i / (time.perf_counter() - t0)
                        _progress_line(
                            f"epoch {epoch + 1}/{cfg.epochs} step {i}/{steps_per_epoch} "
                            f"loss {losses[-1]:.4g} {rate:.0f} img/s"
                        )
                pending = (s, epoch, metrics)
                positions = after
            losses.append(check(*pending))
            seconds = time.perf_counter() - t0
            record = {
                "epoch": epoch + 1,
                "step": int(state.step),
                "loss": float(np.mean(losses)),
                "seconds": seconds,
                "images_per_s": images_per_step * steps_per_epoch / seconds,
            }
            if target_test is not None and (
                (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
            ):
                last_eval = evaluate(
                    model,
                    {"params": state.params, "batch_stats": state.batch_stats},
                    target_test,
                    cfg.image_size,
                    workers=cfg.workers,
                    predict=predict,
                )
                record |= last_eval
            if lead:
                if show:
                    sys.stderr.write("\r\x1b[2K")
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                log(
                    " ".join(
                        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in record.items()
                    )
                )
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == end_epoch:
                manager.save(int(state.step), args=ocp.args.StandardSave(snapshot(positions)))
                manager.wait_until_finished()
    finally:
        feeder.close()
    return {
        "step": int(state.step),
        "epoch": int(state.step) // steps_per_epoch,
        "state": state,
        "eval": last_eval,
    }
