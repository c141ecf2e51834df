"""The training runs of the demo (:mod:`uotsel_train.demo`): pre-training the tiny ResNet from
scratch, fine-tuning it with one arm's objective, and :func:`domain_gap`, which measures how
different the synthetic domains are for the skill the target needs (a classifier of the
pre-training shapes trained on one domain, tested on every domain). Every run keeps a
persistent XLA compilation cache for the demo's duration, so that the same few programs are
compiled once.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Schedule", "compilation_cache", "domain_gap", "finetune", "pretrain"]

_COMMON = {"arch": "tiny", "crop_scale": "0.35,1", "workers": 0, "progress": False}


def _config(**settings: Any) -> Any:
    from uotsel_train import config

    cfg = config.override(
        config.default(), [f"{k}={v}" for k, v in {**_COMMON, **settings}.items()]
    )
    config.validate(cfg, check_files=False)
    return cfg


def _inputs(target: Any, test: Any, pretrain: Any = None, indices: Any = None, heads: int = 0):
    from uotsel_train import input_pipeline

    return input_pipeline.Inputs(
        target=target,
        train_indices=np.arange(len(target)),
        val_indices=np.zeros(0, np.int64),
        test=test,
        pretrain=pretrain,
        pretrain_indices=indices,
        num_source_classes=heads,
    )


def pretrain(
    source: Any,
    tests: dict[str, Any],
    num_classes: int,
    folder: str,
    *,
    epochs: int,
    lr: float,
    seed: int,
    size: int,
    on_epoch: Callable[[str], None] = lambda line: None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Train the tiny ResNet from scratch on the classes of ``source``; return its backbone
    variables and its top-1 on each of ``tests`` (the first one is also in the run's
    ``metrics.jsonl``)."""
    from uotsel_train import evaluate, initialise, models, train

    cfg = _config(
        objective="vanilla",
        lr=lr,
        epochs=epochs,
        milestones=max(1, epochs * 2 // 3),
        batch_size=96,
        eval_every=epochs,
        checkpoint_every=epochs,
        seed=seed,
        image_size=size,
    )
    first, *others = tests
    fresh = initialise.fresh(models.backbone("tiny"), seed, size)
    out = train.fit(cfg, _inputs(source, tests[first]), fresh, folder, log=on_epoch)
    variables = {"params": out.state.params, "batch_stats": out.state.batch_stats}
    top1 = {first: out.last["test_top1"]}
    predict = evaluate.predictor(train.build_model(cfg, num_classes, 0))
    for name in others:
        top1[name] = evaluate.accuracy(predict, variables, tests[name], image_size=size)["top1"]
    params, stats = out.state.params, out.state.batch_stats
    return {"params": params["backbone"], "batch_stats": stats["backbone"]}, top1


class Schedule(NamedTuple):
    """A fine-tuning schedule, the same for every arm."""

    epochs: int
    evaluations: int  # evenly spaced, the last after the last epoch
    lr: float
    lam: float
    image_size: int
    batch_size: int = 10
    source_batch_size: int = 30

    def eval_every(self) -> int:
        return max(1, self.epochs // max(1, self.evaluations))


def finetune(
    schedule: Schedule,
    objective: str,
    seed: int,
    backbone: dict[str, Any],
    sets: tuple[Any, Any, Any],
    indices: np.ndarray | None,
    folder: str,
    on_epoch: Callable[[str], None] = lambda line: None,
) -> dict[str, float]:
    """Fine-tune from ``backbone`` (fresh heads) with ``objective`` on the target of ``sets``
    (target, test, pre-training) (+ the pre-training images at ``indices``); return the last
    evaluation's test top-1 and mean per-class accuracy. ``on_epoch`` is called after every
    epoch."""
    from uotsel_train import train

    e = schedule.epochs
    cfg = _config(
        objective=objective,
        lr=schedule.lr,
        lam=schedule.lam,
        epochs=e,
        milestones=f"{max(1, e * 3 // 5)},{max(1, e * 4 // 5)}",
        batch_size=schedule.batch_size,
        source_batch_size=schedule.source_batch_size,
        eval_every=schedule.eval_every(),
        checkpoint_every=e,
        seed=seed,
        image_size=schedule.image_size,
    )
    target, test, pre = sets
    uses = indices is not None
    inputs = _inputs(target, test, pre if uses else None, indices, len(pre.classes) if uses else 0)
    out = train.fit(cfg, inputs, backbone, folder, log=on_epoch)
    return {"top1": out.last["test_top1"], "mean_class_acc": out.last["test_mean_class_acc"]}


@contextlib.contextmanager
def compilation_cache() -> Iterator[None]:
    """Every run of the demo compiles the same few steps; a persistent compilation cache in a
    temporary folder compiles each once (unless the caller set up a cache of their own). The
    previous settings are restored afterwards."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir:
        yield
        return
    names = {
        "jax_compilation_cache_dir": None,
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    before = {name: getattr(jax.config, name) for name in names}
    with tempfile.TemporaryDirectory(prefix="uotsel-demo-xla-") as folder:
        try:
            for name, value in names.items():
                jax.config.update(name, folder if value is None else value)
            compilation_cache.reset_cache()
            yield
        finally:
            for name, value in before.items():
                jax.config.update(name, value)
            compilation_cache.reset_cache()


def domain_gap(
    out_dir: str,
    *,
    per_class: int = 100,
    test_per_class: int = 50,
    epochs: int = 20,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """How far apart the domains are: for every domain, a tiny ResNet trained from scratch to
    tell the pre-training shapes apart on that domain alone (``per_class`` images per shape),
    tested on every domain (``test_per_class`` per shape). Returns (and writes to
    ``out_dir/domain_gap.json``) ``{trained on: {tested on: top-1}}``."""
    from uotsel.io import write_json
    from uotsel_train import data, synthetic

    def shapes_on(domain: str, count: int, offset: int) -> Any:
        drawn = synthetic.pretraining_set(count, seed + offset, domains=(domain,))
        return data.ArraySource(drawn.images, drawn.labels, list(synthetic.SHAPES))

    gap: dict[str, dict[str, float]] = {}
    with compilation_cache():
        tests = {d: shapes_on(d, test_per_class, 1000) for d in synthetic.DOMAINS}
        for domain in synthetic.DOMAINS:
            _, top1 = pretrain(
                shapes_on(domain, per_class, 0),
                {domain: tests[domain], **tests},
                len(synthetic.SHAPES),
                os.path.join(out_dir, f"trained-on-{domain}"),
                epochs=epochs,
                lr=0.05,
                seed=seed,
                size=32,
            )
            gap[domain] = {d: top1[d] for d in synthetic.DOMAINS}
            cells = "  ".join(f"{d} {v:.3f}" for d, v in gap[domain].items())
            log(f"trained on {domain}: {cells}")
    write_json(os.path.join(out_dir, "domain_gap.json"), {"seed": seed, "top1": gap})
    return gap
