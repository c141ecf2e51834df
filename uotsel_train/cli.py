"""The ``uotsel-train`` command line. ``convert``: torchvision / MoCo-v2 checkpoints to Flax
variables (``.npz``). One-line errors with exit status 2, no partial output."""

from __future__ import annotations

import argparse
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
    return parser


def _source(spec: str, data_dir: str | None, default_split: str):
    from uotsel_train import data

    if spec.startswith("tfds:"):
        name, _, split = spec[len("tfds:") :].partition(":")
        return data.TfdsSource(name, split or default_split, data_dir=data_dir)
    return data.ImageFolder(spec)


def _finetune(args: argparse.Namespace) -> int:
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from uotsel_train import convert, loop, models, streams
    from uotsel_train.presets import PRESETS

    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(loop.Config)
        if getattr(args, f.name, None) is not None
    }
    cfg = dataclasses.replace(PRESETS[args.preset], **overrides)
    needs_source = cfg.objective != "vanilla"
    if needs_source and not (args.pretrain and args.selection):
        raise ValueError(f"pretrain: preset {args.preset!r} needs --pretrain and --selection")
    selection = streams.read_selection(args.selection) if args.selection else None
    if not os.path.exists(args.weights):
        raise ValueError(f"weights: file not found: {args.weights}")
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
    num_source = int(pretrain.labels.max()) + 1 if cfg.objective == "labelled" else 0
    model = models.FineTuner(cfg.arch, num_target=len(target.classes), num_source=num_source)
    variables = model.init(jax.random.key(cfg.seed), jnp.zeros((1, 32, 32, 3)))
    weights = convert.load_variables(args.weights)
    if weights.get("backbone") is None:
        raise ValueError(f"weights: {args.weights} holds no backbone")
    # The backbone comes from the checkpoint; the heads keep their fresh initialisation.
    variables = {
        "params": {**variables["params"], "backbone": weights["backbone"]["params"]},
        "batch_stats": {"backbone": weights["backbone"]["batch_stats"]},
    }
    out = loop.fit(
        cfg,
        model,
        variables,
        target,
        args.out_dir,
        target_test=test,
        pretrain=pretrain,
        pretrain_indices=indices,
        resume=args.resume,
        until_epoch=args.until_epoch,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    summary = f"step {out['step']}, epoch {out['epoch']}"
    if out["eval"]:
        summary += (
            f", top-1 {out['eval']['top1']:.4f}, mean per-class accuracy "
            f"{out['eval']['mean_class_acc']:.4f}"
        )
    print(f"{summary} -> {args.out_dir}")
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
        return {"convert": _convert, "extract": _extract, "finetune": _finetune}[args.command](args)
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
        ):
            if message.startswith(name):
                message = flag + message[len(name) :]
                break
        message = message.replace("pass allow_empty=True", "pass --allow-empty-classes")
        print(f"uotsel-train {args.command}: error: {message}", file=sys.stderr)
        return 2


def entry() -> None:
    sys.exit(main())
