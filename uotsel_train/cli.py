"""The ``uotsel-train`` command line: parses, then calls the library.

Commands: ``convert`` (torchvision / MoCo-v2 checkpoints to Flax variables), ``extract`` (class
means for ``uotsel select``), ``configs`` (the paper's experiments), ``finetune`` (one config),
``grid`` (a search over lr, weight decay and lambda), ``input-bench`` (how fast the host feeds
a config's steps), ``demo``. Errors are one line with exit status 2; a run whose loss diverges
ends with exit status 3; a data worker process that dies (killed, out of memory) ends the
command with exit status 4, naming the worker and the image it was reading.

Fine-tuning settings come from a config (``--config NAME[:ARG]``, a ``.py`` file with
``get_config`` or a run's ``config.json``) and ``--config.KEY=VALUE`` overrides, one per setting.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from uotsel_train.errors import WorkerDied

__all__ = ["main"]

# What the training side needs beyond jax and numpy (import name -> pip name).
_NEEDS = {
    "flax": "flax",
    "optax": "optax",
    "orbax": "orbax-checkpoint",
    "ml_collections": "ml_collections",
    "PIL": "pillow",
    "grain": "grain",
    "tensorflow_datasets": "tensorflow-datasets",
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``prog: error: ...``), status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _missing_extra() -> list[str]:
    def absent(name: str) -> bool:
        if name in sys.modules:
            return sys.modules[name] is None  # an import blocked on purpose
        return importlib.util.find_spec(name) is None

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
    p.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run (jax.distributed): the cluster is read from the "
        "environment (SLURM, Open MPI, Cloud TPU) unless --coordinator is given",
    )
    p.add_argument("--coordinator", help="HOST:PORT of process 0 (with --distributed)")
    p.add_argument("--num-processes", type=int, help="with --coordinator")
    p.add_argument("--process-id", type=int, help="with --coordinator")


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
    ext.add_argument("--image-size", type=int, default=224, help="crop size (default: 224)")
    ext.add_argument("--batch-size", type=int, default=64, help="default: 64")
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
        "written by each of the P processes)",
    )
    ext.add_argument(
        "--allow-empty-classes",
        action="store_true",
        help="keep classes without images as zero rows (default: an error)",
    )
    ext.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    ext.add_argument("--out", required=True, help="class means .npz to write")
    _distributed_options(ext)


def _build_parser() -> argparse.ArgumentParser:
    from uotsel_train import __version__

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
    ft.add_argument("--until-epoch", type=int, help="stop after this epoch (resume later)")
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
    bench.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    plot = sub.add_parser(
        "plot",
        help="draw runs: loss, learning rate and accuracy against epochs",
        description="Draw the loss terms, the learning rates and the test / validation top-1 "
        "of one or more run folders against epochs, overlaid (needs matplotlib: "
        "pip install 'uotsel[plot]').",
    )
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    plot.add_argument("--out", required=True, help="the picture to write (.png)")
    demo = sub.add_parser(
        "demo",
        help="the whole method on generated images, on CPU in a few minutes",
        description="Draw a pre-training set and a small target set of synthetic images, "
        "pre-train a tiny ResNet, select pre-training classes with uotsel and as baselines, "
        "fine-tune with each and without, and print the test accuracies.",
    )
    demo.add_argument("--out-dir", help="folder for the runs and demo.json (default: a new one)")
    demo.add_argument("--seeds", help="fine-tuning seeds (default: 0,1,2; --quick: 0)")
    demo.add_argument("--data-seed", type=int, default=0, help="image seed (default: 0)")
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


def _numbers(text: str | None, flag: str, kind: type = float) -> list:
    if text is None:
        return []
    from uotsel_train import config

    try:
        return [config._number(flag, v, kind) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


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
    if args.coordinator and not args.distributed:
        raise ValueError("--coordinator: given without --distributed")
    import jax

    if args.distributed:
        from uotsel_train import parallel

        parallel.initialize(args.coordinator, args.num_processes, args.process_id)
    return jax.process_index() == 0


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


def _log(line: str) -> None:
    logging.getLogger("uotsel_train").info(line)


def _finetune(args: argparse.Namespace, pairs: list[str]) -> int:
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


def _input_bench(args: argparse.Namespace, pairs: list[str]) -> int:
    if not 1 <= args.steps <= 10**6:
        raise ValueError(f"--steps: must be between 1 and 10^6, got {args.steps}")
    args.until_epoch = None
    cfg = _config(args, pairs)
    from uotsel_train import input_bench

    print(json.dumps(input_bench.measure(cfg, args.steps)))
    return 0


def _grid(args: argparse.Namespace, pairs: list[str]) -> int:
    args.until_epoch = None
    from uotsel_train import config

    base = config.override(config.load(args.config), pairs)
    if not base.val_fraction and not args.select_on_test:
        base = config.override(base, ["val_fraction=0.1"])
    config.validate(base)
    values = {
        "lr": _numbers(args.lrs, "--lrs"),
        "weight_decay": _numbers(args.wds, "--wds"),
        "lam": _numbers(args.lams, "--lams"),
    }
    seeds = _numbers(args.seeds, "--seeds", int)
    if not seeds or any(not 0 <= s < 2**31 for s in seeds):
        raise ValueError(f"--seeds: give seeds between 0 and 2^31 - 1, got {args.seeds!r}")
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


def _configs(args: argparse.Namespace, pairs: list[str]) -> int:
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


def _plot(args: argparse.Namespace, pairs: list[str]) -> int:
    from uotsel_train import plot

    for run_dir in args.runs:
        if not os.path.isdir(run_dir):
            raise ValueError(f"RUN_DIR: not a folder: {run_dir}")
        if os.path.abspath(args.out) == os.path.abspath(os.path.join(run_dir, "metrics.jsonl")):
            raise ValueError("--out: would overwrite the metrics it draws")
    plot.curves(args.runs, args.out)
    print(f"{len(args.runs)} run(s) -> {args.out}")
    return 0


def _demo(args: argparse.Namespace, pairs: list[str]) -> int:
    import dataclasses
    import tempfile

    from uotsel_train import demo

    settings = demo.DemoSettings.quick() if args.quick else demo.DemoSettings()
    if args.seeds is not None:
        seeds = tuple(_numbers(args.seeds, "--seeds", int))
        if not seeds:
            raise ValueError("--seeds: give at least one seed")
        settings = dataclasses.replace(settings, seeds=seeds)
    settings = dataclasses.replace(settings, data_seed=args.data_seed)
    if args.out_dir:
        if os.path.isfile(args.out_dir):
            raise ValueError(f"--out-dir: is a file, expected a folder: {args.out_dir}")
        os.makedirs(args.out_dir, exist_ok=True)
        out_dir = args.out_dir
    else:
        out_dir = tempfile.mkdtemp(prefix="uotsel-train-demo-")
    demo.run(out_dir, settings, log=lambda line: print(line, flush=True))
    return 0


def _extract(args: argparse.Namespace, pairs: list[str]) -> int:
    from uotsel_train import config, extract, initialise, input_pipeline

    for value, flag in ((args.image_size, "--image-size"), (args.batch_size, "--batch-size")):
        if not 1 <= value <= 10**5:
            raise ValueError(f"{flag}: must be between 1 and 10^5, got {value}")
    config.check_workers(args.workers, "--workers")
    if os.path.isdir(args.weights) or not os.path.exists(args.weights):
        raise ValueError(f"--weights: not a file: {args.weights}")
    from uotsel.outputs import Outputs

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

    from uotsel import shards
    from uotsel.outputs import Outputs

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
    import numpy as np

    if not path or (jax.process_count() > 1 and not _in_parts(path)):
        return None
    arg = _PART if _in_parts(path) else "--features-out"
    return lambda shape: outputs.array(arg, shape, np.float32)


def _write_extracted(outputs: Any, args: argparse.Namespace, source: Any, result: Any, lead: bool):
    """The class means (process 0) and the per-sample features. With parts, every output is
    complete on every process before any is renamed into place, and the index (process 0) goes
    in last, so a failure leaves no index that names parts of another run."""
    import jax
    import numpy as np

    from uotsel import io, shards
    from uotsel_train import parallel

    count, n = jax.process_count(), len(source)
    parts = _in_parts(args.features_out)
    if lead:
        outputs.write(
            "--out",
            io.write_units,
            result.means,
            counts=result.counts,
            names=source.classes,
            assignment=source.labels,
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


def _convert(args: argparse.Namespace, pairs: list[str]) -> int:
    from uotsel.outputs import Outputs
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


_COMMANDS = {
    "convert": _convert,
    "extract": _extract,
    "configs": _configs,
    "finetune": _finetune,
    "grid": _grid,
    "input-bench": _input_bench,
    "plot": _plot,
    "demo": _demo,
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
        print(f"uotsel-train: error: {err}", file=sys.stderr)
        return 2
    _console()
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        return int(done.code or 0)
    if pairs and args.command not in ("finetune", "grid", "configs", "input-bench"):
        print(
            f"uotsel-train {args.command}: error: --config.{pairs[0]}: not a setting of this "
            "command",
            file=sys.stderr,
        )
        return 2
    try:
        return _COMMANDS[args.command](args, pairs)
    except WorkerDied as err:
        print(f"uotsel-train {args.command}: error: {err}", file=sys.stderr)
        return 4
    except ValueError as err:
        print(f"uotsel-train {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # train.Diverged: the loss became NaN or infinite
        print(f"uotsel-train {args.command}: diverged: {err}", file=sys.stderr)
        return 3


def entry() -> None:
    sys.exit(main())
