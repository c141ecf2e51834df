"""The ``uotsel-train`` command line: parses, then calls the library.

Commands: ``convert`` (torchvision / MoCo-v2 checkpoints to Flax variables), ``extract`` (class
means for ``uotsel select``), ``configs`` (the paper's experiments), ``finetune`` (one config),
``grid`` (a search over lr, weight decay and lambda), ``input-bench`` (how fast the host feeds
a config's steps), ``demo``. Errors are one line with exit status 2; a run whose loss diverges
ends with exit status 3; a data worker process that dies (killed, out of memory) ends the
command with exit status 4, naming the worker and the image it was reading.

The commands themselves are in :mod:`uotsel_train.commands`; they import JAX, Flax and
ml_collections only when they run, so that a missing ``train`` extra is reported as such and a
bad config is refused before JAX loads. Parsing and errors come from :mod:`uotsel.cli_kit`,
shared with ``uotsel``.

Fine-tuning settings come from a config (``--config NAME[:ARG]``, a ``.py`` file with
``get_config`` or a run's ``config.json``) and ``--config.KEY=VALUE`` overrides, one per setting.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from collections.abc import Sequence
from typing import Any

from uotsel.cli_kit import (
    OneLineParser,
    UsageError,
    add_cluster_flags,
    integer,
    report,
)
from uotsel_train import __version__, commands
from uotsel_train.commands import MAX_SEED
from uotsel_train.errors import WorkerDied

__all__ = ["main"]

# What the training side needs beyond jax and numpy (import name -> pip name): every package of
# the ``train`` extra in setup.cfg, so that no command runs with a part of it silently missing.
_NEEDS = {
    "absl": "absl-py",
    "flax": "flax",
    "optax": "optax",
    "orbax.checkpoint": "orbax-checkpoint",
    "ml_collections": "ml_collections",
    "PIL": "pillow",
    "grain": "grain",
    "tensorflow_datasets": "tensorflow-datasets",
    "tensorboardX": "tensorboardX",
    "tqdm": "tqdm",
}


def _missing_extra() -> list[str]:
    def absent(name: str) -> bool:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in sys.modules and sys.modules[prefix] is None:
                return True  # an import blocked on purpose
        if name in sys.modules:
            return False
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):  # a missing parent package (orbax of orbax.checkpoint)
            return True

    return [pip for name, pip in _NEEDS.items() if absent(name)]


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        required=True,
        metavar="NAME[:ARG]|FILE",
        help="a shipped experiment ('uotsel-train configs'), a .py file with get_config(), or "
        "a run's config.json; override any setting with --config.KEY=VALUE",
    )
    p.add_argument("--out-dir", required=True, help="the run's folder (created)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    _distributed_options(p)


def _distributed_options(p: argparse.ArgumentParser) -> None:
    """``--distributed`` and the explicit cluster flags, for every multi-process command."""
    add_cluster_flags(p, "")


def _add_convert_and_extract(sub: Any) -> None:
    """The ``convert`` and ``extract`` parsers."""
    from uotsel_train import config

    conv = sub.add_parser(
        "convert",
        help="torchvision / MoCo-v2 checkpoint to Flax variables",
        description="Convert a torchvision ResNet state dict or a MoCo-v2 checkpoint (.npz with "
        "torch key names, or .pth/.pth.tar when torch is installed) into Flax variables, .npz.",
    )
    conv.add_argument("--checkpoint", required=True, help=".npz, .pth or .pth.tar")
    conv.add_argument("--arch", required=True, choices=list(config.ARCHS))
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
        help="an image folder root/<class>/<image>, or tfds:NAME[:SPLIT] (paper names such as "
        "tfds:cub map to the paper's split; SPLIT defaults to train)",
    )
    ext.add_argument("--data-dir", help="TFDS data directory (default: TFDS's own)")
    ext.add_argument("--arch", required=True, choices=list(config.ARCHS))
    ext.add_argument("--weights", required=True, help="Flax weights from 'uotsel-train convert'")
    ext.add_argument(
        "--moco-head", action="store_true", help="use MoCo-v2's 128-d head output, as the paper"
    )
    ext.add_argument(
        "--image-size", type=integer(1, 10**5), default=224, help="crop size (default: 224)"
    )
    ext.add_argument("--batch-size", type=integer(1, 10**5), default=64, help="default: 64")
    ext.add_argument(
        "--workers",
        type=int,
        default=4,
        help="decoding worker processes, 0-256 (0: in this process; default: 4)",
    )
    ext.add_argument(
        "--features-out",
        help="also write per-sample features: .npy (one file; with --distributed on a file "
        "system every process sees) or .json (an index, and NAME-00000-of-0000P.npy beside it "
        "written by each of the P processes); zeros for an image that could not be read",
    )
    ext.add_argument(
        "--allow-empty-classes",
        action="store_true",
        help="keep classes without images as zero rows (default: an error)",
    )
    ext.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    ext.add_argument(
        "--out",
        required=True,
        help="class means .npz to write (means, counts, names, and every image's class as "
        "assignment: -1, no unit, for an image that could not be read)",
    )
    _distributed_options(ext)


def _build_parser() -> argparse.ArgumentParser:

    parser = OneLineParser(
        prog="uotsel-train",
        description="Fine-tuning with selected pre-training data (uotsel's training adapter, "
        "Flax).",
    )
    parser.add_argument("--version", action="version", version=f"uotsel-train {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    _add_convert_and_extract(sub)
    cfgs = sub.add_parser(
        "configs",
        help="list the paper's experiments as configs, or show one",
        description="Without an argument: the shipped configs, one line each. With NAME[:ARG] "
        "(or a .py / config.json file): every setting of that config.",
    )
    cfgs.add_argument("name", nargs="?", help="a config to show in full")
    ft = sub.add_parser(
        "finetune",
        help="fine-tune with one config",
        description="Fine-tune a converted backbone on the target data while training on the "
        "selected pre-training data (paper eq. 6 / 7), as a config says.",
    )
    _run_options(ft)
    ft.add_argument(
        "--until-epoch", type=integer(1, 10**6), help="stop after this epoch (resume later)"
    )
    grid = sub.add_parser(
        "grid",
        help="grid search over lr, weight decay and lambda with several seeds",
        description="Fine-tune once per combination of --lrs x --wds x --lams and per seed; "
        "choose the combination by its mean validation top-1 (a share of every target class "
        "held out, --config.val_fraction, 0.1 unless set) and report its test top-1.",
    )
    _run_options(grid)
    grid.add_argument("--lrs", help="comma-separated learning rates (default: the config's)")
    grid.add_argument("--wds", help="comma-separated weight decays")
    grid.add_argument("--lams", help="comma-separated lambdas")
    grid.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: 0,1,2)")
    grid.add_argument(
        "--select-on-test",
        action="store_true",
        help="rank the combinations by test top-1 (optimistic; default: validation)",
    )
    bench = sub.add_parser(
        "input-bench",
        help="how many images a second the host feeds a config's training steps",
        description="Iterate the config's training input pipeline without a model (one "
        "warm-up step, then --steps steps; every image decoded and cropped, batches placed on "
        "the devices) and print a JSON object with images_per_s as the last line.",
    )
    bench.add_argument(
        "--config",
        required=True,
        metavar="NAME[:ARG]|FILE",
        help="as for finetune; override any setting with --config.KEY=VALUE",
    )
    bench.add_argument(
        "--steps", type=integer(1, 10**6), default=20, help="timed steps (default: 20)"
    )
    plot = sub.add_parser(
        "plot",
        help="draw runs: accuracy and smoothed losses against epochs, by arm",
        description="Draw the test (and validation, where recorded) top-1 and the loss terms "
        "of one or more run folders against epochs, one colour per arm (runs that differ only "
        "in their seed folder form one arm), and the learning rates where the runs' schedules "
        "differ (needs matplotlib: pip install 'uotsel[plot]').",
    )
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    plot.add_argument("--out", required=True, help="the picture to write (.png)")
    demo = sub.add_parser(
        "demo",
        help="the whole method on generated images, on CPU in a few minutes",
        description="Draw a pre-training set and a small target set of synthetic images, "
        "pre-train a tiny ResNet, select pre-training classes with uotsel and as baselines, "
        "fine-tune with each and without, in every world and with every seed, and print the "
        "test accuracies, the paired differences with their spread and the claims that hold.",
    )
    demo.add_argument("--out-dir", help="folder for the runs and demo.json (default: a new one)")
    demo.add_argument("--seeds", help="fine-tuning seeds (default: 0,1,2,3,4; --quick: 0)")
    demo.add_argument(
        "--data-seeds", help="worlds, one per data seed (default: 0,1,2,3; --quick: 0)"
    )
    demo.add_argument(
        "--data-seed", type=integer(0, MAX_SEED), help="one world only: --data-seeds N"
    )
    demo.add_argument(
        "--unlabelled", action="store_true", help="add the eq. 7 arm (UOT clusters, no labels)"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    demo.add_argument("--quick", action="store_true", help="a few seconds' smoke run")
    return parser


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """``--config.KEY=VALUE`` (or ``--config.KEY VALUE``) pulled out of ``argv``."""
    rest, pairs = [], []
    it = iter(argv)
    for item in it:
        if item.startswith("--config."):
            body = item[len("--config.") :]
            if "=" not in body:
                value = next(it, None)
                if value is None:
                    raise ValueError(f"{body}: --config.{body} needs a value")
                body = f"{body}={value}"
            pairs.append(body)
        else:
            rest.append(item)
    return rest, pairs


class _Stderr(logging.Handler):
    """Log lines to whatever ``sys.stderr`` is when they are written."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")
        sys.stderr.flush()


def _console() -> None:
    """The package's log lines (``uotsel_train`` logger, INFO) go to standard error, once."""
    logger = logging.getLogger("uotsel_train")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        logger.addHandler(_Stderr())
    logger.setLevel(logging.INFO)
    logger.propagate = False


_COMMANDS = {
    "convert": commands.convert_command,
    "extract": commands.extract_command,
    "configs": commands.configs_command,
    "finetune": commands.finetune_command,
    "grid": commands.grid_command,
    "input-bench": commands.input_bench_command,
    "plot": commands.plot_command,
    "demo": commands.demo_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    missing = _missing_extra()
    if missing:
        print(
            "uotsel-train: error: the training side needs the 'train' extra: "
            f"pip install 'uotsel[train]' (missing: {', '.join(missing)})",
            file=sys.stderr,
        )
        return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, pairs = _split_overrides(argv)
    except ValueError as err:
        return report("uotsel-train", err)
    _console()
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        return int(done.code or 0)
    prog = f"uotsel-train {args.command}"
    if pairs and args.command not in ("finetune", "grid", "configs", "input-bench"):
        return report(prog, UsageError(f"--config.{pairs[0]}: not a setting of this command"))
    try:
        return _COMMANDS[args.command](args, pairs)
    except WorkerDied as err:
        return report(prog, err, status=4)
    except (UsageError, ValueError) as err:
        return report(prog, err)
    except FloatingPointError as err:  # train.Diverged: the loss became NaN or infinite
        return report(prog, err, status=3, word="diverged")


def entry() -> None:
    sys.exit(main())
