"""Fine-tuning: the target data plus the selected pre-training data (paper eq. 6 / 7).

:func:`fit` runs one config (:mod:`uotsel_train.config`) on the inputs
:func:`uotsel_train.input_pipeline.load_inputs` chose: one step takes ``batch_size`` target
images and ``source_batch_size`` pre-training images (in every view the objective needs) from two
seeded, resumable streams; an epoch is one pass over the target training samples (drop last).
Batches are split over every device of every process and made ahead of time in a background
thread. At the end of every ``checkpoint_every`` epochs the whole state is checkpointed
(:mod:`uotsel_train.checkpoints`); every ``eval_every`` epochs the target head is evaluated on
the test set and the validation samples. The run folder holds ``config.json`` (the whole recipe,
reloadable), ``metrics.jsonl`` (one line per epoch), ``result.json`` (the last and the best
evaluation, as the released code reports) and ``checkpoints/``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from uotsel.io import write_json
from uotsel_train import (
    checkpoints,
    config,
    evaluate,
    feed,
    initialise,
    input_pipeline,
    models,
    objectives,
    optim,
    parallel,
    step,
)

__all__ = ["Diverged", "FitResult", "SAME_ON_RESUME", "build_model", "fit"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Settings that shape a run's course: a resumed run must keep them.
SAME_ON_RESUME = tuple(
    k
    for k in config.FIELDS
    if k not in ("epochs", "eval_every", "checkpoint_every", "workers", "prefetch", "progress")
)


class Diverged(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the epoch."""


class FitResult(NamedTuple):
    """``step`` and ``epoch`` reached, the final ``state``, and the ``last`` and ``best``
    evaluations (dicts with ``epoch`` and ``test_top1`` / ``val_top1`` ...; None when none
    ran)."""

    step: int
    epoch: int
    state: step.TrainState
    last: dict | None
    best: dict | None


def build_model(cfg: Any, num_target: int, num_source: int) -> models.FineTuner:
    """The :class:`~uotsel_train.models.FineTuner` of ``cfg`` (arch, precision, BatchNorm
    groups)."""
    objective = objectives.get(cfg.objective)
    groups = 1
    if cfg.bn_group_size:
        views = len(objective.source_views)
        groups = (cfg.batch_size + views * cfg.source_batch_size) // cfg.bn_group_size
    return models.FineTuner(
        cfg.arch,
        num_target=num_target,
        num_source=num_source if objective.source_head else 0,
        dtype=DTYPES[cfg.precision],
        bn_groups=groups,
    )


def _open_run(cfg: Any, out_dir: str, resume: bool, store: checkpoints.Store) -> bool:
    """Check the run folder; True when resuming from a checkpoint."""
    resuming = resume and store.latest() is not None
    if not resume and store.latest() is not None:
        raise ValueError(
            f"out_dir: {out_dir} already holds a run (checkpoint at step {store.latest()}); "
            "resume it or choose another folder"
        )
    saved = os.path.join(out_dir, "config.json")
    if resuming and os.path.exists(saved):
        before = config.to_dict(config.load(saved))
        now = config.to_dict(cfg)
        for key in SAME_ON_RESUME:
            if before[key] != now[key]:
                raise ValueError(
                    f"{key}: the run being resumed used {before[key]!r}, not {now[key]!r} "
                    "(start a new run to change it)"
                )
    return resuming


def _write(path: str, record: dict, append: bool = False) -> None:
    try:
        if append:
            with open(path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
        else:
            write_json(path, record)
    except OSError as err:
        raise ValueError(f"out_dir: cannot write {path}: {err}") from None


def _evaluate(predict, state, inputs, cfg) -> dict[str, float]:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    out = {}
    sets = {"test": (inputs.test, None), "val": (inputs.target, inputs.val_indices)}
    for name, (source, indices) in sets.items():
        if source is None or (indices is not None and not indices.size):
            continue
        acc = evaluate.accuracy(
            predict, variables, source, indices, image_size=cfg.image_size, workers=cfg.workers
        )
        out |= {f"{name}_{k}": v for k, v in acc.items()}
    return out


def _better(new: dict, best: dict | None) -> bool:
    key = "val_top1" if "val_top1" in new else "test_top1"
    return best is None or new.get(key, -1) > best.get(key, -1)


def _epoch_record(epoch: int, state, terms: list[dict], seconds: float, images: int) -> dict:
    names = [k for k in terms[0] if k != "finite"]
    means = {k: float(np.mean([float(t[k]) for t in terms])) for k in names}
    return {
        "epoch": epoch,
        "step": int(state.step),
        **means,
        "seconds": seconds,
        "images_per_s": images * len(terms) / seconds,
    }


def _check_finite(metrics: dict, s: int, epoch: int, store: checkpoints.Store) -> dict:
    if not bool(metrics["finite"]):
        raise Diverged(
            f"the loss became {float(metrics['loss'])} at step {s + 1} (epoch {epoch + 1}); "
            f"the last good checkpoint (step {store.latest()}) is intact in {store.path}"
        )
    return metrics


def fit(
    cfg: Any,
    inputs: input_pipeline.Inputs,
    backbone: dict[str, Any],
    out_dir: str,
    *,
    resume: bool = False,
    until_epoch: int | None = None,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Fine-tune from ``backbone`` (``{"params", "batch_stats"}``) with fresh heads.

    Args:
      cfg: a validated config (:func:`uotsel_train.config.validate`).
      inputs: from :func:`uotsel_train.input_pipeline.load_inputs` (or built in memory).
      out_dir: the run folder (created; on a shared file system with several processes).
      resume: continue from the latest checkpoint in ``out_dir``.
      until_epoch: stop after this epoch (a time-sliced job; resume later).
      log: receives one line per epoch, on process 0.

    Raises:
      ValueError: one line naming the setting or folder at fault, before training.
      Diverged: when the loss becomes NaN or infinite (the last checkpoint stays).
    """
    steps_per_epoch = inputs.train_indices.size // cfg.batch_size
    mesh = parallel.data_mesh()
    objective = objectives.get(cfg.objective)
    for key in ("batch_size",) + (("source_batch_size",) if objective.needs_source else ()):
        parallel.check_divisible(mesh, key, cfg[key])
    if os.path.isfile(out_dir):
        raise ValueError(f"out_dir: is a file, expected a folder: {out_dir}")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise ValueError(f"out_dir: cannot create {out_dir}: {err}") from None
    lead = jax.process_index() == 0
    model = build_model(cfg, len(inputs.target.classes), inputs.num_source_classes)
    tx = optim.sgd(
        cfg.lr,
        cfg.weight_decay,
        steps_per_epoch,
        head_multiplier=cfg.head_lr_multiplier,
        momentum=cfg.momentum,
        milestones=cfg.milestones,
        gamma=cfg.lr_decay,
    )
    store = checkpoints.Store(out_dir)
    resuming = _open_run(cfg, out_dir, resume, store)
    state = step.init_state(initialise.variables(model, backbone, cfg.seed), tx)
    positions = (0, 0)
    if resuming:
        state, positions = store.restore(state, cfg.seed)
        if lead:
            log(f"resumed at step {int(state.step)}")
    state = parallel.replicate(mesh, state)
    result_path = os.path.join(out_dir, "result.json")
    last = best = None
    if resuming and os.path.exists(result_path):
        with open(result_path) as fh:
            last, best = (json.load(fh).get(k) for k in ("last", "best"))
    if lead:
        extra = {"devices": mesh.size, "processes": jax.process_count()}
        _write(os.path.join(out_dir, "config.json"), {"config": config.to_dict(cfg), **extra})
    replicated = NamedSharding(mesh, PartitionSpec())
    settings = objectives.Settings(cfg.lam, cfg.threshold)
    train = jax.jit(
        step.train_step(model, tx, objective, settings, model.bn_groups),
        donate_argnums=0,
        out_shardings=(replicated, replicated),
    )
    predict = evaluate.predictor(model)
    transfer = np.float32 if cfg.precision == "float32" else jnp.bfloat16
    pipeline = input_pipeline.Pipeline(cfg, inputs, mesh, positions, transfer)
    images = cfg.batch_size + len(objective.source_views) * cfg.source_batch_size
    show = cfg.progress and lead and sys.stderr.isatty()
    end_epoch = cfg.epochs if until_epoch is None else min(cfg.epochs, until_epoch)
    feeder = feed.Feeder(pipeline.make, int(state.step), depth=cfg.prefetch)
    try:
        for epoch in range(int(state.step) // steps_per_epoch, end_epoch):
            t0, terms, pending = time.perf_counter(), [], None
            for i in range(steps_per_epoch):
                batch, after = feeder.next()
                state, metrics = train(state, batch)
                if pending is not None:  # read the previous step while this one runs
                    terms.append(_check_finite(*pending, store))
                    if show:
                        rate = images * i / (time.perf_counter() - t0)
                        _progress(epoch, cfg.epochs, i, steps_per_epoch, terms[-1], rate)
                pending = (metrics, epoch * steps_per_epoch + i, epoch)
                positions = after
            terms.append(_check_finite(*pending, store))
            record = _epoch_record(epoch + 1, state, terms, time.perf_counter() - t0, images)
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                last = {"epoch": epoch + 1, **_evaluate(predict, state, inputs, cfg)}
                best = last if _better(last, best) else best
                record |= last
            if lead:
                if show:
                    sys.stderr.write("\r\x1b[2K")
                _write(os.path.join(out_dir, "metrics.jsonl"), record, append=True)
                if last is not None:
                    _write(result_path, {"last": last, "best": best})
                log(" ".join(_shown(k, v) for k, v in record.items()))
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == end_epoch:
                store.save(state, cfg.seed, positions)
    finally:
        feeder.close()
        pipeline.close()
    return FitResult(int(state.step), int(state.step) // steps_per_epoch, state, last, best)


def _shown(key: str, value: Any) -> str:
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"


def _progress(epoch: int, epochs: int, i: int, steps: int, metrics: dict, rate: float) -> None:
    sys.stderr.write(
        f"\r\x1b[2Kepoch {epoch + 1}/{epochs} step {i}/{steps} "
        f"loss {float(metrics['loss']):.4g} {rate:.0f} img/s"
    )
    sys.stderr.flush()


def run(
    cfg: Any,
    out_dir: str,
    *,
    resume: bool = False,
    until_epoch: int | None = None,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Load what ``cfg`` names (data, selection, weights) and :func:`fit`."""
    inputs = input_pipeline.load_inputs(cfg)
    if jax.process_index() == 0:
        for note in inputs.notes:
            log(note)
    return fit(
        cfg,
        inputs,
        initialise.load_backbone(cfg.weights),
        out_dir,
        resume=resume,
        until_epoch=until_epoch,
        log=log,
    )
