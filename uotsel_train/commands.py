"""What the ``uotsel-train`` commands do once parsed (:mod:`uotsel_train.cli`): build the config,
join the cluster, call the library, write the outputs. Each ``NAME_command(args, pairs)``
returns the exit status; bad input raises ``ValueError`` (or
:class:`uotsel.cli_kit.UsageError`) naming the flag or setting.

The modules that load JAX, Flax or ml_collections are imported inside the commands that use
them, so that a bad config is refused before JAX loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
from typing import Any

import numpy as np

from uotsel import shards
from uotsel.cli_kit import (
    check_cluster_flags,
    numbers,
)
from uotsel.outputs import Outputs
from uotsel_train import demo, plot

# The largest seed (config.validate's bound on ``seed``, the demo's seeds and data seed).
MAX_SEED = 2**31 - 1


def _config(args: argparse.Namespace, pairs: list[str], **changes):
    from uotsel_train import config

    cfg = config.override(config.load(args.config), pairs)
    if changes:
        cfg = config.override(cfg, [f"{k}={v}" for k, v in changes.items()])
    config.validate(cfg)
    if args.until_epoch is not None and not 1 <= args.until_epoch <= cfg.epochs:
        raise ValueError(
            f"--until-epoch: must be between 1 and {cfg.epochs}, got {args.until_epoch}"
        )
    return cfg


def _join(args: argparse.Namespace) -> bool:
    """Start ``jax.distributed`` when asked; True on the process that reports."""
    check_cluster_flags(args)
    import jax

    if args.distributed:
        from uotsel_train import parallel

        parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    return jax.process_index() == 0


def _log(line: str) -> None:
    logging.getLogger("uotsel_train").info(line)


def finetune_command(args: argparse.Namespace, pairs: list[str]) -> int:
    cfg = _config(args, pairs)
    lead = _join(args)
    from uotsel_train import train

    out = train.run(cfg, args.out_dir, resume=args.resume, until_epoch=args.until_epoch, log=_log)
    if lead:
        summary = f"step {out.step}, epoch {out.epoch}"
        for name, ev in (("last", out.last), ("best", out.best)):
            if ev:
                scores = ", ".join(f"{k} {v:.4f}" for k, v in ev.items() if k != "epoch")
                summary += f"; {name} (epoch {ev['epoch']}): {scores}"
        print(f"{summary} -> {args.out_dir}")
    return 0


def input_bench_command(args: argparse.Namespace, pairs: list[str]) -> int:
    if not 1 <= args.steps <= 10**6:
        raise ValueError(f"--steps: must be between 1 and 10^6, got {args.steps}")
    args.until_epoch = None
    cfg = _config(args, pairs)
    from uotsel_train import input_bench

    print(json.dumps(input_bench.measure(cfg, args.steps)))
    return 0


def grid_command(args: argparse.Namespace, pairs: list[str]) -> int:
    args.until_epoch = None
    from uotsel_train import config

    base = config.override(config.load(args.config), pairs)
    if not base.val_fraction and not args.select_on_test:
        base = config.override(base, ["val_fraction=0.1"])
    config.validate(base)
    values = {
        "lr": numbers(args.lrs, "--lrs"),
        "weight_decay": numbers(args.wds, "--wds"),
        "lam": numbers(args.lams, "--lams"),
    }
    seeds = numbers(args.seeds, "--seeds", int, maximum=MAX_SEED)
    if not seeds:
        raise ValueError(f"--seeds: give at least one seed, got {args.seeds!r}")
    lead = _join(args)
    from uotsel_train import grid

    on = "test" if args.select_on_test else "val"
    record = grid.search(
        base,
        values,
        seeds,
        args.out_dir,
        select_on=on,
        resume=args.resume,
        log=_log if lead else (lambda line: None),
    )
    if lead:
        c = record["chosen"]
        line = f"chosen on {on}: lr {c['lr']:g}, weight decay {c['weight_decay']:g}, "
        line += f"lambda {c['lam']:g}"
        for key in ("val_top1_mean", "test_top1_mean"):
            if key in c:
                line += f"; mean {key[:-5].replace('_', ' ')} {c[key]:.4f}"
        print(f"{line} -> {os.path.join(args.out_dir, 'grid.json')}")
    return 0


def configs_command(args: argparse.Namespace, pairs: list[str]) -> int:
    from uotsel_train import config, configs

    if args.name is None:
        width = max(map(len, configs.NAMES))
        for name, text in configs.NAMES.items():
            print(f"{name:{width}}  {text}")
        return 0
    cfg = config.override(config.load(args.name), pairs)
    config.validate(cfg, check_files=False)
    for key, value in config.to_dict(cfg).items():
        print(f"{key} = {value!r}")
    return 0


def plot_command(args: argparse.Namespace, pairs: list[str]) -> int:

    for run_dir in args.runs:
        if not os.path.isdir(run_dir):
            raise ValueError(f"RUN_DIR: not a folder: {run_dir}")
        if os.path.abspath(args.out) == os.path.abspath(os.path.join(run_dir, "metrics.jsonl")):
            raise ValueError("--out: would overwrite the metrics it draws")
    plot.curves(args.runs, args.out)
    print(f"{len(args.runs)} run(s) -> {args.out}")
    return 0


def demo_command(args: argparse.Namespace, pairs: list[str]) -> int:

    settings = demo.DemoSettings.quick() if args.quick else demo.DemoSettings()
    changes: dict[str, Any] = {"unlabelled": args.unlabelled}
    for flag, key, given in (
        ("--seeds", "seeds", args.seeds),
        ("--data-seeds", "data_seeds", args.data_seeds),
    ):
        if given is not None:
            seeds = tuple(numbers(given, flag, int, maximum=MAX_SEED))
            if not seeds or len(set(seeds)) < len(seeds):
                raise ValueError(f"{flag}: give distinct seeds, at least one")
            changes[key] = seeds
    if args.data_seed is not None:
        if args.data_seeds is not None:
            raise ValueError("--data-seed: give --data-seed or --data-seeds, not both")
        changes["data_seeds"] = (args.data_seed,)
    settings = dataclasses.replace(settings, **changes)
    if args.out_dir:
        if os.path.isfile(args.out_dir):
            raise ValueError(f"--out-dir: is a file, expected a folder: {args.out_dir}")
        os.makedirs(args.out_dir, exist_ok=True)
        out_dir = args.out_dir
    else:
        out_dir = tempfile.mkdtemp(prefix="uotsel-train-demo-")
    demo.run(out_dir, settings, log=lambda line: print(line, flush=True), progress=not args.quiet)
    return 0


def extract_command(args: argparse.Namespace, pairs: list[str]) -> int:
    from uotsel_train import config, extract, initialise, input_pipeline

    config.check_workers(args.workers, "--workers")
    if os.path.isdir(args.weights) or not os.path.exists(args.weights):
        raise ValueError(f"--weights: not a file: {args.weights}")

    lead = _join(args)
    with Outputs([("--weights", args.weights)]) as outputs:
        outputs.add("--out", args.out, ("npz",))
        if args.features_out:
            _add_features_out(outputs, args.features_out)
        source = input_pipeline.open_source(args.data, args.data_dir or "", "train", "--data")
        variables = {"backbone": initialise.load_backbone(args.weights)}
        if args.moco_head:
            from uotsel_train import convert

            variables = convert.load_variables(args.weights)
        result = extract.extract(
            source,
            variables,
            args.arch,
            moco_head=args.moco_head,
            image_size=args.image_size,
            resize=round(args.image_size * 256 / 224),
            batch_size=args.batch_size,
            workers=args.workers,
            keep_features=bool(args.features_out),
            features_into=_features_into(outputs, args.features_out),
            allow_empty=args.allow_empty_classes,
            progress=not args.quiet and lead,
        )
        _write_extracted(outputs, args, source, result, lead)
    if lead:
        print(
            f"{len(source.classes)} class means from {int(result.counts.sum())} images "
            f"({len(result.skipped)} unreadable skipped) -> {args.out}"
        )
    return 0


_PART = "--features-out (this process's part)"


def _in_parts(path: str | None) -> bool:
    """``--features-out`` names an index of parts (``.json``) rather than one ``.npy``."""
    return bool(path) and os.path.splitext(path)[1].lower() == ".json"


def _add_features_out(outputs: Any, path: str) -> None:
    """``--features-out`` checked like every output before any work. ``.json``: an index
    (process 0) and one ``.npy`` part per process beside it, each written by its process;
    ``.npy``: one file, from several processes filled by all of them
    (:func:`uotsel_train.parallel.write_shared_rows`)."""
    import jax

    count = jax.process_count()
    if count > 1 and not _in_parts(path):
        with Outputs([]) as probe:
            probe.add("--features-out", path, ("npy", "json"))
        return
    if outputs.add("--features-out", path, ("npy", "json")) == "json":
        outputs.add(_PART, shards.part_name(path, jax.process_index(), count), ("npy",))


def _features_into(outputs: Any, path: str | None) -> Any:
    """Where extraction writes this process's features: straight into the part's or the single
    file's temporary (a memory map, so they need not fit in memory), or, for one ``.npy``
    filled by several processes, None (in memory, written at the end)."""
    import jax

    if not path or (jax.process_count() > 1 and not _in_parts(path)):
        return None
    arg = _PART if _in_parts(path) else "--features-out"
    return lambda shape: outputs.array(arg, shape, np.float32)


def _write_extracted(outputs: Any, args: argparse.Namespace, source: Any, result: Any, lead: bool):
    """The class means (process 0) and the per-sample features. With parts, every output is
    complete on every process before any is renamed into place, and the index (process 0) goes
    in last, so a failure leaves no index that names parts of another run."""
    import jax

    from uotsel import io, shards
    from uotsel_train import extract, parallel

    count, n = jax.process_count(), len(source)
    parts = _in_parts(args.features_out)
    if lead:
        outputs.write(
            "--out",
            io.write_units,
            result.means,
            counts=result.counts,
            names=source.classes,
            assignment=extract.unit_ids(source.labels, result.skipped),
        )
    if lead and parts:
        names = [
            (shards.part_name(args.features_out, i, count), len(parallel.process_share(n, i)))
            for i in range(count)
        ]
        dim = result.features.shape[1]
        outputs.write("--features-out", io.write_shards_index, names, dim, np.float32)
    elif parts:
        outputs.drop("--out")
        outputs.drop("--features-out")
    elif args.features_out and count > 1:
        parallel.write_shared_rows(args.features_out, result.features, result.rows, n)
    parallel.wait_for_all(f"{args.out} outputs ready")
    if parts and not lead:
        outputs.commit()
    parallel.wait_for_all(f"{args.out} parts in place")
    if lead:
        outputs.commit()


def convert_command(args: argparse.Namespace, pairs: list[str]) -> int:
    from uotsel_train import convert

    with Outputs([("--checkpoint", args.checkpoint)]) as outputs:
        outputs.add("--out", args.out, ("npz",))
        state = convert.load_state_dict(args.checkpoint)
        converted = convert.convert_state_dict(state, args.arch)
        outputs.write("--out", lambda fh: convert.save_variables(converted, fh))
        outputs.commit()
    parts = [name for name in ("backbone", "fc", "moco_head") if converted.get(name) is not None]
    print(f"converted {len(state)} tensors ({', '.join(parts)}) for {args.arch} -> {args.out}")
    return 0
