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
    return parser


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
        return {"convert": _convert}[args.command](args)
    except ValueError as err:
        message = " ".join(str(err).split()).replace("checkpoint:", "--checkpoint:", 1)
        print(f"uotsel-train {args.command}: error: {message}", file=sys.stderr)
        return 2


def entry() -> None:
    sys.exit(main())
