"""The ``uotsel-train`` command line. ``convert``: torchvision / MoCo-v2 checkpoints to Flax
variables (``.npz``). One-line errors with exit status 2, no partial output."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from uotsel.cli import OneLineParser

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    from uotsel_train import __version__, models

    parser = OneLineParser(
        prog="uotsel-train",
        description="Fine-tuning with selected pre-training "
        "data (uotsel's training adapter, Flax).",
    )
    parser.add_argument("--version", action="version", version=f"uotsel-train {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    conv = sub.add_parser(
        "convert",
        help="torchvision / MoCo-v2 checkpoint to Flax variables",
        description="Convert a torchvision ResNet state dict or a MoCo-v2 checkpoint "
        "(.npz with torch key names, or .pth/.pth.tar when torch is installed) into Flax "
        "variables for uotsel_train.models, written as .npz.",
    )
    conv.add_argument("--checkpoint", required=True, help=".npz, .pth or .pth.tar")
    conv.add_argument("--arch", required=True, choices=list(models.ARCHS))
    conv.add_argument("--out", required=True, help=".npz to write")
    ext = sub.add_parser(
        "extract",
        help="class means (and per-sample features) of an image folder or TFDS data set",
        description="Run a backbone over an image folder or a TFDS data set (evaluation "
        "transform, evaluation mode) and write the per-class mean features and counts as the "
        ".npz that 'uotsel select' reads, and optionally every sample's features as .npy for "
        "'uotsel kmeans'.",
    )
    ext.add_argument(
        "--data",
        required=True,
        help="an image folder root/<class>/<image>, or tfds:NAME[:SPLIT] for a "
        "prepared TFDS data set (paper names such as tfds:cub map to the paper's "
        "split; SPLIT defaults to train)",
    )
    ext.add_argument("--data-dir", help="TFDS data directory (default: TFDS's own)")
    ext.add_argument("--arch", required=True, choices=list(models.ARCHS))
    ext.add_argument("--weights", required=True, help="Flax weights from 'uotsel-train convert'")
    ext.add_argument(
        "--moco-head",
        action="store_true",
        help="use MoCo-v2's projection head output (128-d), as the paper does",
    )
    ext.add_argument("--image-size", type=int, default=224, help="crop size (default: 224)")
    ext.add_argument("--batch-size", type=int, default=64, help="default: 64")
    ext.add_argument("--workers", type=int, default=4, help="decoding threads (default: 4)")
    ext.add_argument("--features-out", help="also write per-sample features (.npy)")
    ext.add_argument(
        "--allow-empty-classes",
        action="store_true",
        help="keep classes without images as zero rows (default: an error)",
    )
    ext.add_argument("--quiet", action="store_true", help="no progress lines")
    ext.add_argument("--out", required=True, help="class means .npz to write")
    from uotsel_train.presets import PRESETS

    ft = sub.add_parser(
        "finetune",
        help="fine-tune on target data plus the selected pre-training data",
        description="Fine-tune a converted backbone on the target data set while training on "
        "the pre-training samples a 'uotsel select' file chose (paper eq. 6 / 7). Data: an "
        "image folder or tfds:NAME[:SPLIT]. Every preset setting can be overridden.",
    )
    ft.add_argument("--preset", required=True, choices=list(PRESETS))
    ft.add_argument("--target", required=True, help="target training data")
    ft.add_argument("--test", help="target test data (evaluated every --eval-every epochs)")
    ft.add_argument("--pretrain", help="pre-training data (not needed by vanilla presets)")
    ft.add_argument("--selection", help="'uotsel select' JSON file")
    ft.add_argument(
        "--unit-ids",
        help="per-sample unit ids of the pre-training data (.npy, or "
        "the .npz of 'uotsel kmeans' with 'assignment'); default: its labels",
    )
    ft.add_argument("--weights", required=True, help="Flax weights from 'uotsel-train convert'")
    ft.add_argument("--data-dir", help="TFDS data directory")
    ft.add_argument("--out-dir", required=True, help="this run's folder (created)")
    ft.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    ft.add_argument("--until-epoch", type=int, help="stop after this epoch (resume later)")
    for name, kind in (
        ("arch", str),
        ("lr", float),
        ("weight-decay", float),
        ("lam", float),
        ("epochs", int),
        ("batch-size", int),
        ("source-batch-size", int),
        ("image-size", int),
        ("threshold", float),
        ("eval-every", int),
        ("seed", int),
        ("workers", int),
    ):
        ft.add_argument(f"--{name}", type=kind, help="override the preset")
    ft.add_argument(
        "--objective",
        choices=["vanilla", "labelled", "unlabelled"],
        help="override the preset (eq. 6: labelled, eq. 7: unlabelled)",
    )
    ft.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints")
    ft.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        help="bfloat16: mixed precision, float32 parameters (default: float32)",
    )
    ft.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run (jax.distributed): the cluster is read from the "
        "environment (SLURM, Open MPI, Cloud TPU) unless --coordinator is given",
    )
    ft.add_argument("--coordinator", help="HOST:PORT of process 0 (with --distributed)")
    ft.add_argument("--num-processes", type=int, help="with --coordinator")
    ft.add_argument("--process-id", type=int, help="with --coordinator")
    grid = sub.add_parser(
        "grid",
        help="grid search over lr, weight decay and lambda with several seeds",
        description="Fine-tune once per combination of --lrs x --wds x --lams and per seed, "
        "evaluate on --test, and report the mean and the best top-1 accuracy of each "
        "combination (out-dir/grid.json); the paper picked its settings this way.",
    )
    for action in ft._actions:
        if action.dest in ("help", "lr", "weight_decay", "lam", "seed", "until_epoch"):
            continue
        grid._add_action(action)
    grid.add_argument("--lrs", help="comma-separated learning rates (default: the preset's)")
    grid.add_argument("--wds", help="comma-separated weight decays")
    grid.add_argument("--lams", help="comma-separated lambdas")
    grid.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    demo = sub.add_parser(
        "demo",
        help="the whole method on generated images, on CPU in about a minute",
        description="Draw a pre-training set and a small related target set of synthetic "
        "images, pre-train a tiny ResNet, select pre-training classes with uotsel (UOT) and "
        "at random, fine-tune with each and without, and print the test accuracies.",
    )
    demo.add_argument(
        "--out-dir", help="folder for the runs and demo.json (default: a new temporary folder)"
    )
    demo.add_argument("--seeds", help="fine-tuning seeds (default: 0,1,2; --quick: 0)")
    demo.add_argument("--data-seed", type=int, default=0, help="image seed (default: 0)")
    demo.add_argument("--quick", action="store_true", help="a few seconds' smoke run")
    return parser


def _source(spec: str, data_dir: str | None, default_split: str):
    from uotsel_train import data

    if spec.startswith("tfds:"):
        name, _, split = spec[len("tfds:") :].partition(":")
        return data.TfdsSource(name, split or default_split, data_dir=data_dir)
    return data.ImageFolder(spec)


def _config(args: argparse.Namespace):
    import dataclasses

    from uotsel_train import loop
    from uotsel_train.presets import PRESETS

    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(loop.Config)
        if getattr(args, f.name, None) is not None
    }
    return dataclasses.replace(PRESETS[args.preset], **overrides)


def _trainer(args: argparse.Namespace, objective: str):
    """Load data, selection and weights once; return ``run(cfg, out_dir, resume, until)``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from uotsel_train import convert, loop, models, streams

    needs_source = objective != "vanilla"
    if needs_source and not (args.pretrain and args.selection):
        raise ValueError(f"pretrain: the {objective} objective needs --pretrain and --selection")
    selection = streams.read_selection(args.selection) if args.selection else None
    if not os.path.exists(args.weights):
        raise ValueError(f"weights: file not found: {args.weights}")
    weights = convert.load_variables(args.weights)
    if weights.get("backbone") is None:
        raise ValueError(f"weights: {args.weights} holds no backbone")
    target = _source(args.target, args.data_dir, "train")
    test = _source(args.test, args.data_dir, "test") if args.test else None
    pretrain = indices = None
    if needs_source:
        pretrain = _source(args.pretrain, args.data_dir, "train")
        unit_ids = pretrain.labels
        if args.unit_ids:
            from uotsel.io import read_array

            key = "assignment" if args.unit_ids.endswith(".npz") else None
            unit_ids = np.asarray(read_array(args.unit_ids, "--unit-ids", key=key))
            if unit_ids.shape != (len(pretrain),):
                raise ValueError(
                    f"unit-ids: {unit_ids.shape[0]} ids for {len(pretrain)} pre-training images"
                )
        indices = streams.selected_samples(unit_ids, selection["selected"])
    num_source = int(pretrain.labels.max()) + 1 if objective == "labelled" else 0

    def run(cfg, out_dir: str, resume: bool = False, until: int | None = None):
        model = models.FineTuner(cfg.arch, num_target=len(target.classes), num_source=num_source)
        fresh = model.init(jax.random.key(cfg.seed), jnp.zeros((1, 32, 32, 3)))
        # The backbone comes from the checkpoint; the heads keep their fresh initialisation.
        variables = {
            "params": {**fresh["params"], "backbone": weights["backbone"]["params"]},
            "batch_stats": {"backbone": weights["backbone"]["batch_stats"]},
        }
        return loop.fit(
            cfg,
            model,
            variables,
            target,
            out_dir,
            target_test=test,
            pretrain=pretrain,
            pretrain_indices=indices,
            resume=resume,
            until_epoch=until,
            log=lambda line: print(line, file=sys.stderr, flush=True),
        )

    return run


def _join(args: argparse.Namespace) -> bool:
    """Start ``jax.distributed`` when asked; True on the process that reports."""
    if args.coordinator and not args.distributed:
        raise ValueError("coordinator: given without --distributed")
    if args.distributed:
        from uotsel_train import parallel

        parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    import jax

    return jax.process_index() == 0


def _finetune(args: argparse.Namespace) -> int:
    cfg = _config(args)
    lead = _join(args)
    out = _trainer(args, cfg.objective)(cfg, args.out_dir, args.resume, args.until_epoch)
    if not lead:
        return 0
    summary = f"step {out['step']}, epoch {out['epoch']}"
    if out["eval"]:
        summary += (
            f", top-1 {out['eval']['top1']:.4f}, mean per-class accuracy "
            f"{out['eval']['mean_class_acc']:.4f}"
        )
    print(f"{summary} -> {args.out_dir}")
    return 0


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def _grid(args: argparse.Namespace) -> int:
    import dataclasses
    import itertools
    import json

    import numpy as np

    from uotsel.io import write_json

    base = _config(args)
    if args.test is None:
        raise ValueError("test: the grid search ranks settings by test accuracy; pass --test")
    axes = {
        "lr": _floats(args.lrs, "--lrs") if args.lrs else [base.lr],
        "weight_decay": _floats(args.wds, "--wds") if args.wds else [base.weight_decay],
        "lam": _floats(args.lams, "--lams") if args.lams else [base.lam],
    }
    seeds = [int(v) for v in _floats(args.seeds, "--seeds")]
    lead = _join(args)
    run = _trainer(args, base.objective)
    results = []
    for lr, wd, lam in itertools.product(*axes.values()):
        accs = []
        for seed in seeds:
            cfg = dataclasses.replace(base, lr=lr, weight_decay=wd, lam=lam, seed=seed)
            folder = os.path.join(args.out_dir, f"lr{lr:g}_wd{wd:g}_lam{lam:g}", f"seed{seed}")
            out = run(cfg, folder, resume=args.resume)
            accs.append(out["eval"]["top1"])
        results.append(
            {
                "lr": lr,
                "weight_decay": wd,
                "lam": lam,
                "seeds": seeds,
                "top1": accs,
                "mean": float(np.mean(accs)),
                "best": float(max(accs)),
            }
        )
        if lead:
            print(json.dumps(results[-1]))
    if not lead:
        return 0
    best = max(results, key=lambda r: r["mean"])
    write_json(
        os.path.join(args.out_dir, "grid.json"),
        {"preset": args.preset, "results": results, "best_by_mean": best},
    )
    print(
        f"best by mean top-1: lr {best['lr']:g}, weight decay {best['weight_decay']:g}, "
        f"lambda {best['lam']:g}: mean {best['mean']:.4f}, best {best['best']:.4f}"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    import dataclasses
    import tempfile

    from uotsel_train import demo

    settings = demo.DemoSettings.quick() if args.quick else demo.DemoSettings()
    if args.seeds is not None:
        seeds = tuple(int(v) for v in _floats(args.seeds, "--seeds"))
        if not seeds:
            raise ValueError("--seeds: give at least one seed")
        settings = dataclasses.replace(settings, seeds=seeds)
    settings = dataclasses.replace(settings, data_seed=args.data_seed)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        out_dir = args.out_dir
    else:
        out_dir = tempfile.mkdtemp(prefix="uotsel-train-demo-")
    demo.run(out_dir, settings, log=lambda line: print(line, flush=True))
    return 0


def _extract(args: argparse.Namespace) -> int:
    import numpy as np

    from uotsel.io import atomic_writer
    from uotsel_train import convert, data, extract

    for path, flag in ((args.out, "--out"), (args.features_out, "--features-out")):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ValueError(f"{flag}: directory does not exist: {path}")
    for value, flag in (
        (args.image_size, "--image-size"),
        (args.batch_size, "--batch-size"),
        (args.workers, "--workers"),
    ):
        if value < 1:
            raise ValueError(f"{flag}: must be >= 1, got {value}")
    if args.data.startswith("tfds:"):
        name, _, split = args.data[len("tfds:") :].partition(":")
        source = data.TfdsSource(name, split or "train", data_dir=args.data_dir)
    else:
        source = data.ImageFolder(args.data)
    if not os.path.exists(args.weights):
        raise ValueError(f"--weights: file not found: {args.weights}")
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
        allow_empty=args.allow_empty_classes,
        progress=None if args.quiet else lambda line: print(line, file=sys.stderr, flush=True),
    )
    with atomic_writer(args.out, "wb") as fh:
        np.savez(
            fh,
            means=result.means,
            counts=result.counts,
            names=np.asarray(source.classes),
            assignment=source.labels,
        )
    if args.features_out:
        with atomic_writer(args.features_out, "wb") as fh:
            np.save(fh, result.features)
    print(
        f"{len(source.classes)} class means from {int(result.counts.sum())} images "
        f"({len(result.skipped)} unreadable skipped) -> {args.out}"
    )
    return 0


def _convert(args: argparse.Namespace) -> int:
    from uotsel_train import convert

    directory = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(directory):
        raise ValueError(f"--out: directory does not exist: {directory}")
    state = convert.load_state_dict(args.checkpoint)
    converted = convert.convert_state_dict(state, args.arch)
    convert.save_variables(converted, args.out)
    parts = [name for name in ("backbone", "fc", "moco_head") if converted.get(name) is not None]
    print(f"converted {len(state)} tensors ({', '.join(parts)}) for {args.arch} -> {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        return int(done.code or 0)
    try:
        commands = {
            "convert": _convert,
            "extract": _extract,
            "finetune": _finetune,
            "grid": _grid,
            "demo": _demo,
        }
        return commands[args.command](args)
    except ValueError as err:
        message = " ".join(str(err).split())
        for name, flag in (
            ("checkpoint:", "--checkpoint:"),
            ("data:", "--data:"),
            ("weights:", "--weights:"),
            ("labels:", "--data:"),
            ("selection:", "--selection:"),
            ("pretrain:", "--pretrain:"),
            ("unit-ids:", "--unit-ids:"),
            ("test:", "--test:"),
            ("coordinator:", "--coordinator:"),
        ):
            if message.startswith(name):
                message = flag + message[len(name) :]
                break
        else:
            from uotsel_train.loop import Config

            field, sep, rest = message.partition(":")
            if sep and field in {f.name for f in dataclasses.fields(Config)} | {"out_dir"}:
                message = f"--{field.replace('_', '-')}:{rest}"
        message = message.replace("pass allow_empty=True", "pass --allow-empty-classes")
        print(f"uotsel-train {args.command}: error: {message}", file=sys.stderr)
        return 2


def entry() -> None:
    sys.exit(main())
