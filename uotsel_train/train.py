"""Fine-tuning: the target data plus the selected pre-training data (paper eq. 6 / 7).

:func:`fit` runs one config (:mod:`uotsel_train.config`) on the inputs
:func:`uotsel_train.input_pipeline.load_inputs` chose: one step takes ``batch_size`` target
images and ``source_batch_size`` pre-training images (in every view the objective needs) from two
seeded, resumable streams; an epoch is one pass over the target training samples (drop last).
Batches are split over every device of every process and made ahead of time in a background
thread. At the end of every ``checkpoint_every`` epochs the whole state is checkpointed
(:mod:`uotsel_train.checkpoints`); after the epochs of ``eval_schedule``
(:func:`evaluates_after`) the target head is evaluated on the test set and the validation
samples. The run folder holds ``config.json`` (the whole recipe,
reloadable), ``metrics.jsonl`` and TensorBoard event files (:mod:`uotsel_train.metrics`),
``result.json`` (the last and the best evaluation, as the released code reports) and
``checkpoints/``. A progress bar with an ETA shows on a terminal, a line every 30 s otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from uotsel.progress import Progress
from uotsel_train import (
    checkpoints,
    config,
    evaluate,
    initialise,
    input_pipeline,
    metrics,
    models,
    objective_settings,
    objectives,
    optim,
    parallel,
    run_files,
    step,
)

__all__ = [
    "Diverged",
    "FitResult",
    "SAME_ON_RESUME",
    "build_model",
    "fit",
    "prepare_out_dir",
    "run",
]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Settings that shape a run's course: a resumed run must keep them.
SAME_ON_RESUME = tuple(
    k
    for k in config.FIELDS
    if k
    not in (
        "epochs",
        "eval_every",
        "eval_schedule",
        "log_every_steps",
        "checkpoint_every",
        "workers",
        "prefetch",
        "progress",
    )
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
    saved = os.path.join(out_dir, "config.json")
    if not resume and store.latest() is not None:
        raise ValueError(
            f"out_dir: {out_dir} already holds a run (checkpoint at step {store.latest()}); "
            "resume it (--resume) or choose another folder"
        )
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


class _Meter:
    """The per-step metrics since the last ``train`` record, the last record, and the best of
    every evaluation score so far (``best``, from the run's earlier records when resumed)."""

    def __init__(self, best: dict[str, float]) -> None:
        self.rows: list[dict] = []
        self.since = time.perf_counter()
        self.last: dict[str, Any] = {}
        self.best = best

    def take(self) -> tuple[dict[str, float], int, float]:
        """``(means, steps, seconds)`` since the last call."""
        names = [k for k in self.rows[0] if k != "finite"]
        means = {k: float(np.mean([float(r[k]) for r in self.rows])) for k in names}
        steps, seconds = len(self.rows), time.perf_counter() - self.since
        self.rows, self.since = [], time.perf_counter()
        return means, steps, seconds


def _check_finite(values: dict, s: int, epoch: int, store: checkpoints.Store) -> dict:
    if not bool(values["finite"]):
        kept = store.latest()
        where = (
            f"the last good checkpoint (step {kept}) is intact in {store.path}"
            if kept is not None
            else f"no checkpoint had been written yet in {store.path}"
        )
        raise Diverged(
            f"the loss became {float(values['loss'])} at step {s + 1} (epoch {epoch + 1}); " + where
        )
    return values


class _Run(NamedTuple):
    """What the epochs of a run share."""

    train: Callable  # compiled (state, batch) -> (state, metrics)
    predict: Callable  # compiled (variables, images) -> labels
    pipeline: input_pipeline.Pipeline
    store: checkpoints.Store
    rates: dict[str, Callable]  # parameter group -> learning-rate schedule
    steps_per_epoch: int
    images_per_step: int
    log_every: int
    writer: metrics.Writer
    bar: Progress
    epochs: int


def _step_done(run: _Run, meter: _Meter, pending: tuple) -> None:
    """Book a finished step: check its loss, advance the bar, write a ``train`` record every
    ``log_every`` steps and at the end of every epoch."""
    values, s, epoch = pending
    meter.rows.append(_check_finite(values, s, epoch, run.store))
    loss = float(meter.rows[-1]["loss"])
    run.bar.update(1, epoch=f"{epoch + 1}/{run.epochs}", loss=f"{loss:.4g}")
    done = s + 1
    if done % run.log_every and done % run.steps_per_epoch:
        return
    means, steps, seconds = meter.take()
    rates = {f"lr_{group}": float(rate(s)) for group, rate in run.rates.items()}
    scalars = {**means, **rates, "step_s": seconds / steps}
    scalars["images_per_s"] = run.images_per_step * steps / seconds
    meter.last = {"step": done, **scalars}
    run.writer.write("train", done, done / run.steps_per_epoch, scalars)


def _train_epoch(run: _Run, state, epoch: int, meter: _Meter):
    """One epoch: ``(state, stream positions after it)``."""
    pending = positions = None
    for i in range(run.steps_per_epoch):
        batch, after = run.pipeline.next()
        state, values = run.train(state, batch)
        if pending is not None:  # read the previous step while this one runs
            _step_done(run, meter, pending)
        pending, positions = (values, epoch * run.steps_per_epoch + i, epoch), after
    _step_done(run, meter, pending)
    return state, positions


def prepare_out_dir(out_dir: str, resume: bool, create: bool = True) -> None:
    """Create the run folder (with ``create``), or refuse it: a file, not creatable, or
    holding a run's checkpoints without ``resume``.

    Raises:
      ValueError: one line starting with ``out_dir:``.
    """
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir: is a file, expected a folder: {out_dir}")
    kept = os.path.join(out_dir, "checkpoints")
    if not resume and os.path.isdir(kept) and os.listdir(kept):
        raise ValueError(
            f"out_dir: {out_dir} already holds a run; resume it (--resume) or choose another folder"
        )
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"out_dir: cannot create {out_dir}: {parent} is a file")
    if create:
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as err:
            raise ValueError(f"out_dir: cannot create {out_dir}: {err.strerror or err}") from None


def _start(cfg: Any, inputs, backbone, out_dir: str, resume: bool, log: Callable):
    """Check the settings against the devices and the folder, then build the model, the
    optimiser and the state (restored when resuming): ``(model, tx, state, positions, store,
    rates)``."""
    mesh = parallel.data_mesh()
    objective = objectives.get(cfg.objective)
    for key in ("batch_size",) + (("source_batch_size",) if objective.needs_source else ()):
        parallel.check_divisible(mesh, key, cfg[key])
    prepare_out_dir(out_dir, resume)
    spe = inputs.train_indices.size // cfg.batch_size
    tx, rates = _optimiser(cfg, spe)
    model = build_model(
        cfg,
        len(inputs.target.classes),
        objective_settings.source_width(objective, inputs, backbone),
    )
    store = checkpoints.Store(out_dir)
    state = step.init_state(initialise.variables(model, backbone, cfg.seed), tx)
    positions = (0, 0)
    if _open_run(cfg, out_dir, resume, store):
        state, positions = store.restore(state, cfg.seed)
        if jax.process_index() == 0:
            log(f"resumed at step {int(state.step)}")
    return mesh, model, tx, parallel.replicate(mesh, state), positions, store, rates


def _optimiser(cfg: Any, steps_per_epoch: int) -> tuple[Any, dict[str, Callable]]:
    """The optimiser of ``cfg`` (:func:`uotsel_train.optim.sgd`) and the learning-rate
    schedule of each of its parameter groups (``{"backbone", "head"}``, logged as ``lr_<group>``).
    The objective's ``pretrained_head`` puts a source head loaded pre-trained in the backbone's
    group; freshly drawn heads learn at ``head_lr_multiplier`` times ``lr``."""
    schedule = {
        "head_lr_multiplier": cfg.head_lr_multiplier,
        "milestones": cfg.milestones,
        "lr_decay": cfg.lr_decay,
    }
    tx = optim.sgd(
        cfg.lr,
        cfg.weight_decay,
        steps_per_epoch,
        momentum=cfg.momentum,
        pretrained_head=objectives.get(cfg.objective).pretrained_head,
        **schedule,
    )
    return tx, optim.schedules(cfg.lr, steps_per_epoch, **schedule)


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
    """Fine-tune from ``backbone`` (``{"params", "batch_stats"}``, plus ``"source_head"``,
    the pre-trained classifier, for Co-Tuning) with fresh heads.

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
    mesh, model, tx, state, positions, store, rates = _start(
        cfg, inputs, backbone, out_dir, resume, log
    )
    lead, resumed = jax.process_index() == 0, int(state.step) > 0
    last, best, best_scores = _history(out_dir, resumed, lead)
    if lead:
        extra = {"devices": mesh.size, "processes": jax.process_count()}
        run_files.write_record(
            os.path.join(out_dir, "config.json"), {"config": config.to_dict(cfg), **extra}
        )
    objective = objectives.get(cfg.objective)
    replicated = NamedSharding(mesh, PartitionSpec())
    settings = objective_settings.settings(
        cfg, inputs, backbone, out_dir, lead, log, resumed=resumed
    )
    spe = inputs.train_indices.size // cfg.batch_size
    end_epoch = cfg.epochs if until_epoch is None else min(cfg.epochs, until_epoch)
    start = int(state.step)
    pipeline = input_pipeline.Pipeline(cfg, inputs, mesh, start, end_epoch * spe)
    if positions != pipeline.positions(start):
        raise ValueError(
            f"out_dir: the checkpoint's stream positions {positions} are not those of step "
            f"{start} {pipeline.positions(start)}; it was not written by this version"
        )
    loop = _Run(
        train=jax.jit(
            step.train_step(model, tx, objective, settings, model.bn_groups),
            donate_argnums=0,
            out_shardings=(replicated, replicated),
        ),
        predict=evaluate.predictor(model),
        pipeline=pipeline,
        store=store,
        rates=rates,
        steps_per_epoch=spe,
        images_per_step=cfg.batch_size + (cfg.source_batch_size if objective.needs_source else 0),
        log_every=cfg.log_every_steps,
        writer=metrics.Writer(out_dir, enabled=lead),
        bar=Progress(
            end_epoch * spe,
            "training",
            unit="step",
            initial=int(state.step),
            enabled=cfg.progress and lead,
        ),
        epochs=cfg.epochs,
    )
    meter = _Meter(best_scores)
    try:
        with pipeline:
            state, last, best = _epochs(
                loop, state, inputs, cfg, out_dir, meter, end_epoch, (last, best), log
            )
    finally:
        loop.bar.close()
        loop.writer.close()
    return FitResult(int(state.step), int(state.step) // spe, state, last, best)


def evaluates_after(epoch: int, cfg: Any) -> bool:
    """Whether the run evaluates after (1-based) ``epoch``, by ``cfg.eval_schedule``:
    ``every`` after every ``eval_every``-th epoch and the last, ``released`` after epochs
    1, 1 + ``eval_every``, ... (the released scripts' ``epoch % 10 == 0`` on 0-based epochs)."""
    if cfg.eval_schedule == "released":
        return (epoch - 1) % cfg.eval_every == 0
    return epoch % cfg.eval_every == 0 or epoch == cfg.epochs


def _epochs(loop, state, inputs, cfg, out_dir, meter, end_epoch, evals, log):
    """Train from ``state`` to the end of ``end_epoch``: ``(state, last, best)``."""
    last, best = evals
    lead = jax.process_index() == 0
    for epoch in range(int(state.step) // loop.steps_per_epoch, end_epoch):
        state, positions = _train_epoch(loop, state, epoch, meter)
        if evaluates_after(epoch + 1, cfg):
            scores = _evaluate(loop.predict, state, inputs, cfg)
            last = {"epoch": epoch + 1, **scores}
            best = last if _better(last, best) else best
            _report_eval(loop, meter, out_dir, int(state.step), last, best)
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == end_epoch:
            loop.store.save(state, cfg.seed, positions)
        if lead:
            loop.bar.clear()
            log(_epoch_line(epoch + 1, cfg.epochs, meter.last, last))
    return state, last, best


def _history(out_dir: str, resumed: bool, lead: bool):
    """``(last, best, best of every score)`` of the run so far: none on a fresh start (whose
    folder loses the records a run without a checkpoint left), else from ``result.json`` and
    the ``eval`` records of ``metrics.jsonl``.

    Raises:
      ValueError: starting with ``out_dir:`` when those files are damaged.
    """
    result_path = os.path.join(out_dir, "result.json")
    if not resumed:
        for path in (result_path, os.path.join(out_dir, "metrics.jsonl")):
            if lead:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        return None, None, {}
    if not os.path.exists(result_path):
        return None, None, {}
    try:
        with open(result_path) as fh:
            before = json.load(fh)
        last, best = before["last"], before["best"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"out_dir: cannot read {result_path}: {err}") from None
    scores: dict[str, float] = {}
    for record in metrics.read(out_dir, "eval") if lead else []:
        for key, value in record.items():
            if key.startswith(("test_", "val_")):
                scores[key] = max(value, scores.get(key, value))
    return last, best, scores


def _report_eval(run: _Run, meter: _Meter, out_dir: str, step_: int, last, best) -> None:
    """The ``eval`` record (with the best of each score so far) and ``result.json``."""
    scores = {k: v for k, v in last.items() if k != "epoch"}
    meter.best = {k: max(v, meter.best.get(k, v)) for k, v in scores.items()}
    if run.writer.enabled:
        bests = {f"best_{k}": v for k, v in meter.best.items()}
        run.writer.write("eval", step_, last["epoch"], scores | bests)
        run_files.write_record(os.path.join(out_dir, "result.json"), {"last": last, "best": best})


def _epoch_line(epoch: int, epochs: int, train: dict, last: dict | None) -> str:
    """One line per epoch for the log: the last train record and the epoch's evaluation."""
    shown = dict(train)
    if last is not None and last["epoch"] == epoch:
        shown |= {k: v for k, v in last.items() if k != "epoch"}
    return f"epoch {epoch}/{epochs} " + " ".join(_shown(k, v) for k, v in shown.items())


def _shown(key: str, value: Any) -> str:
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"


def run(
    cfg: Any,
    out_dir: str,
    *,
    resume: bool = False,
    until_epoch: int | None = None,
    log: Callable[[str], None] = print,
) -> FitResult:
    """Load what ``cfg`` names (data, selection, weights) and :func:`fit`."""
    prepare_out_dir(out_dir, resume, create=False)
    backbone = initialise.load_backbone(
        cfg.weights, with_head=objectives.get(cfg.objective).pretrained_head
    )
    inputs = input_pipeline.load_inputs(cfg)
    if jax.process_index() == 0:
        for note in inputs.notes:
            log(note)
    return fit(
        cfg,
        inputs,
        backbone,
        out_dir,
        resume=resume,
        until_epoch=until_epoch,
        log=log,
    )
