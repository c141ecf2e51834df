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
    return parser


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
        return {"convert": _convert, "extract": _extract}[args.command](args)
    except ValueError as err:
        message = " ".join(str(err).split())
        for name, flag in (
            ("checkpoint:", "--checkpoint:"),
            ("data:", "--data:"),
            ("weights:", "--weights:"),
            ("labels:", "--data:"),
        ):
            if message.startswith(name):
                message = flag + message[len(name) :]
                break
        message = message.replace("pass allow_empty=True", "pass --allow-empty-classes")
        print(f"uotsel-train {args.command}: error: {message}", file=sys.stderr)
        return 2


def entry() -> None:
    sys.exit(main())
