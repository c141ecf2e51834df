"""The ``uotsel`` command line: ``select``, ``centroids`` and ``demo``.

Bad input ends the command with exit status 2 and one line naming the argument; no output file
is created (outputs are written atomically, after all checks and computation succeeded).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["OneLineParser", "main"]

# Library argument names -> the flags that set them, for error messages.
_FLAGS = {
    "source": "--source",
    "target": "--target",
    "strategy": "--strategy",
    "top_k": "--top-k",
    "cost": "--cost",
    "eps_c": "--eps-c",
    "eps": "--eps",
    "tau_source": "--tau-source",
    "tau_target": "--tau-target",
    "threshold": "--threshold",
    "max_iter": "--max-iter",
    "seed": "--seed",
    "matching": "--matching",
    "n_groups": "--groups",
    "features": "--features",
    "labels": "--labels",
    "num_classes": "--num-classes",
    "chunk_size": "--chunk-size",
    "names": "--names",
    "k": "--k",
    "n_init": "--n-init",
    "tol": "--tol",
}


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``prog: error: ...``), status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if math.isnan(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _finite_positive(text: str) -> float:
    value = _positive_float(text)
    if math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def _int_at_least(minimum: int):
    """An argparse type: an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _build_parser() -> argparse.ArgumentParser:
    from uotsel import __version__
    from uotsel.costs import COSTS
    from uotsel.strategies import STRATEGIES

    parser = OneLineParser(
        prog="uotsel",
        description="Choose which pre-training classes or clusters to reuse while fine-tuning, "
        "by unbalanced optimal transport (Liu et al., NeurIPS 2022).",
    )
    parser.add_argument("--version", action="version", version=f"uotsel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    sel = sub.add_parser(
        "select",
        help="rank source units by similarity to a target and write a selection",
        description="Rank the source (pre-training) units by similarity to the target units and "
        "write the top K as a JSON selection file. Unit files: .npz with 'means' [K, D] "
        "(+ 'counts', 'names', 'assignment') or 'features' [N, D] + 'labels' [N]; .npy with "
        "means [K, D]; or embedded:<backbone>/<dataset> (see 'uotsel demo'). Defaults are the "
        "paper's settings.",
    )
    sel.add_argument("--source", required=True, help="source (pre-training) unit file")
    sel.add_argument("--target", help="target unit file (not needed by random and label)")
    sel.add_argument(
        "--strategy",
        default="uot",
        choices=list(STRATEGIES),
        help="selection strategy (default: uot)",
    )
    sel.add_argument(
        "--top-k",
        type=_positive_int,
        default=None,
        help="number of units to select (default: 100; label: all matching)",
    )
    sel.add_argument(
        "--cost",
        default=None,
        choices=list(COSTS),
        help="cost between unit features (default: the strategy's: cosine for uot and "
        "nearest, l2 on the raw means for greedy_ot)",
    )
    sel.add_argument(
        "--eps-c",
        type=_finite_positive,
        default=0.01,
        help="cosine cost temperature: C = (1 - cos) / eps_c (default: 0.01; the l2 and "
        "sqeuclidean costs ignore it)",
    )
    sel.add_argument(
        "--eps", type=_finite_positive, default=1.0, help="entropic regularisation (default: 1.0)"
    )
    sel.add_argument(
        "--tau-source",
        type=_positive_float,
        default=1.0,
        help="KL weight of the source marginal; inf = exact (default: 1.0)",
    )
    sel.add_argument(
        "--tau-target",
        type=_positive_float,
        default=100.0,
        help="KL weight of the target marginal; inf = exact (default: 100.0)",
    )
    sel.add_argument(
        "--threshold",
        type=_finite_positive,
        default=1e-5,
        help="certified relative error of P 1 at which to stop (default: 1e-5)",
    )
    sel.add_argument(
        "--max-iter",
        type=_positive_int,
        default=1000,
        help="Sinkhorn iteration cap (default: 1000)",
    )
    sel.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of the random strategy (default: 0)"
    )
    sel.add_argument(
        "--matching",
        help="label strategy: matching source unit ids, comma-separated, or a "
        "text file with one id per line",
    )
    sel.add_argument(
        "--groups",
        type=_positive_int,
        default=None,
        help="split the ranking into this many equal groups (default: 10, or K if fewer)",
    )
    sel.add_argument("--out", required=True, help="selection file to write (JSON)")
    sel.add_argument("--names-out", help="also write the selected unit names (or ids), one a line")
    sel.add_argument(
        "--samples-out",
        help="also write the samples of the selected units: their indices (.npy) or, for any "
        "other file name, one sample name (or index) a line; needs per-sample unit ids in the "
        "source file ('labels' or 'assignment')",
    )

    cen = sub.add_parser(
        "centroids",
        help="class means from per-sample features and labels",
        description="Compute per-class mean features and counts from per-sample features "
        "(.npy, memory-mapped, or .npz with 'features' [+ 'labels']) and integer labels; write "
        "an .npz that 'uotsel select' reads.",
    )
    cen.add_argument("--features", required=True, help="[N, D] features: .npy or .npz")
    cen.add_argument(
        "--labels",
        help="[N] integer labels: .npy, .npz or a text file "
        "(default: 'labels' inside the --features .npz)",
    )
    cen.add_argument(
        "--num-classes", type=_positive_int, help="number of classes (default: max label + 1)"
    )
    cen.add_argument("--names", help="text file with one class name per line")
    cen.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=65536,
        help="rows reduced at a time (default: 65536)",
    )
    cen.add_argument("--out", required=True, help=".npz to write (means, counts, assignment)")

    km = sub.add_parser(
        "kmeans",
        help="cluster unlabelled features (spherical k-means) into selectable units",
        description="Cluster per-sample features (.npy, memory-mapped, or .npz with "
        "'features') with spherical k-means (cosine, the paper's choice) or Euclidean k-means, "
        "and write an .npz that 'uotsel select --source' reads: the mean raw feature of each "
        "cluster's members as 'means' (the paper's cluster features), the centroids as "
        "'centroids', the cluster sizes as 'counts', and every sample's cluster as "
        "'assignment'.",
    )
    km.add_argument("--features", required=True, help="[N, D] features: .npy or .npz")
    km.add_argument("--k", type=_positive_int, required=True, help="number of clusters")
    km.add_argument(
        "--euclidean",
        action="store_true",
        help="Euclidean k-means instead of spherical (cosine) k-means",
    )
    km.add_argument(
        "--n-init",
        type=_positive_int,
        default=1,
        help="seeded restarts; the lowest objective is kept (default: 1)",
    )
    km.add_argument(
        "--max-iter",
        type=_positive_int,
        default=50,
        help="Lloyd iterations per restart (default: 50)",
    )
    km.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="stop when the objective improves by less than this, relative (default: 1e-4)",
    )
    km.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default: 0)")
    km.add_argument(
        "--chunk-size", type=_positive_int, help="rows per assignment block (default: automatic)"
    )
    km.add_argument(
        "--sample-names",
        help="text file with one name per sample, stored with the clusters so "
        "that 'select --samples-out names.txt' can list them",
    )
    km.add_argument("--quiet", action="store_true", help="no progress lines")
    km.add_argument("--out", required=True, help=".npz to write")

    demo = sub.add_parser(
        "demo",
        help="reproduce the paper's Table 4 on the embedded class means",
        description="Select 100 ImageNet classes for CUB-200 with Greedy-OT (l2, cosine) and UOT "
        "on the embedded supervised and self-supervised class means, and compare the recall "
        "of bird classes with the published figures.",
    )
    demo.add_argument(
        "--top",
        type=_non_negative_int,
        default=15,
        help="how many selected class names to list (default: 15)",
    )
    return parser


def _enable_compilation_cache() -> None:
    """Keep compiled programs between runs (a second ``uotsel select`` skips compilation).

    ``UOTSEL_CACHE_DIR`` chooses the folder; set it to an empty string to turn the cache off.
    Default: ``$XDG_CACHE_HOME/uotsel/jax`` or ``~/.cache/uotsel/jax``.
    """
    folder = os.environ.get("UOTSEL_CACHE_DIR")
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "uotsel", "jax")
    if not folder:
        return
    import jax

    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return  # an unwritable cache only costs time
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _check_out_path(path: str, flag: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError(f"{flag}: directory does not exist: {directory}")
    if os.path.isdir(path):
        raise UsageError(f"{flag}: is a directory: {path}")


def _read_ids(text: str, flag: str) -> np.ndarray:
    if os.path.exists(text):
        if text.endswith((".npy", ".npz")):
            from uotsel.io import read_array

            values = read_array(text, flag, mmap=False)
        else:
            with open(text) as fh:
                values = [line.strip() for line in fh if line.strip()]
    elif re.fullmatch(r"\s*-?\d+(\s*,\s*-?\d+)*\s*,?\s*", text):
        values = [v for v in text.split(",") if v.strip()]
    else:
        raise UsageError(f"{flag}: neither a file nor a comma-separated list of ids: {text!r}")
    try:
        return np.asarray([int(v) for v in np.asarray(values).ravel()], np.int64)
    except ValueError:
        raise UsageError(f"{flag}: expected integer ids") from None


def _cmd_select(args: argparse.Namespace) -> int:
    from uotsel import __version__
    from uotsel.io import read_units, selection_record, write_json, write_lines
    from uotsel.selection import select
    from uotsel.strategies import STRATEGIES

    for path, flag in (
        (args.out, "--out"),
        (args.names_out, "--names-out"),
        (args.samples_out, "--samples-out"),
    ):
        if path:
            _check_out_path(path, flag)
    spec = STRATEGIES[args.strategy]
    if spec.needs_target and not args.target:
        raise UsageError(f"--target: required by strategy {args.strategy!r}")
    if args.strategy == "label" and not args.matching:
        raise UsageError("--matching: required by strategy 'label'")
    source = read_units(args.source, "--source")
    target = read_units(args.target, "--target") if args.target else None
    if args.samples_out and source.unit_ids is None:
        raise UsageError(
            "--samples-out: the source file has no per-sample unit ids ('labels' or 'assignment')"
        )
    # Without --cost every strategy keeps its own default cost (greedy_ot: l2, the others:
    # cosine).
    cost = {} if args.cost is None else {"cost": args.cost}
    settings: dict[str, Any] = {
        "uot": dict(
            **cost,
            eps_c=args.eps_c,
            eps=args.eps,
            tau_source=args.tau_source,
            tau_target=args.tau_target,
            threshold=args.threshold,
            max_iter=args.max_iter,
        ),
        "greedy_ot": dict(**cost, eps_c=args.eps_c),
        "nearest": dict(**cost, eps_c=args.eps_c),
        "random": dict(seed=args.seed),
        "label": dict(matching=_read_ids(args.matching, "--matching") if args.matching else None),
    }[args.strategy]
    top_k = args.top_k
    if top_k is None and args.strategy != "label":
        top_k = 100
    selection = select(
        source.means,
        None if target is None else target.means,
        strategy=args.strategy,
        top_k=top_k,
        n_groups=args.groups,
        unit_ids=source.unit_ids,
        **settings,
    )
    record = selection_record(selection, source, target, __version__)
    write_json(args.out, record)
    if args.names_out:
        names = source.names
        write_lines(
            args.names_out, (names[i] if names is not None else int(i) for i in selection.selected)
        )
    if args.samples_out:
        if args.samples_out.endswith(".npy"):
            from uotsel.io import atomic_writer

            with atomic_writer(args.samples_out, "wb") as fh:
                np.save(fh, selection.sample_indices)
        else:
            names = source.sample_names
            write_lines(
                args.samples_out,
                (names[i] if names is not None else int(i) for i in selection.sample_indices),
            )
    diag = selection.diagnostics
    note = ""
    if diag:
        note = f"; solver: {diag['n_iters']} iterations, error {diag['error']:.2e}"
        if not diag["converged"]:
            print(
                f"uotsel select: warning: the solver did not reach --threshold "
                f"{args.threshold:g} in {diag['n_iters']} iterations (error "
                f"{diag['error']:.2e}); raise --max-iter or --threshold",
                file=sys.stderr,
            )
    print(
        f"selected {selection.selected.size} of {selection.ranking.size} units with "
        f"{args.strategy}{note} -> {args.out}"
    )
    return 0


def _cmd_centroids(args: argparse.Namespace) -> int:
    from uotsel.centroids import class_means
    from uotsel.io import atomic_writer, read_array

    _check_out_path(args.out, "--out")
    if args.features.endswith(".npz"):
        features = read_array(args.features, "--features", key="features")
        if args.labels is None:
            labels = read_array(args.features, "--labels", key="labels")
        else:
            labels = None
    else:
        features, labels = read_array(args.features, "--features"), None
    if labels is None:
        if args.labels is None:
            raise UsageError("--labels: required unless --features is an .npz with 'labels'")
        if args.labels.endswith((".npy", ".npz")):
            labels = read_array(args.labels, "--labels", mmap=False)
        else:
            labels = _read_ids(args.labels, "--labels")
    names = None
    if args.names:
        if not os.path.exists(args.names):
            raise UsageError(f"--names: file not found: {args.names}")
        with open(args.names) as fh:
            names = np.asarray([line.rstrip("\n") for line in fh if line.strip()])
    result = class_means(features, labels, args.num_classes, chunk_size=args.chunk_size)
    if names is not None and names.shape[0] != result.means.shape[0]:
        raise UsageError(f"--names: {names.shape[0]} names for {result.means.shape[0]} classes")
    arrays = dict(means=result.means, counts=result.counts, assignment=np.asarray(labels, np.int64))
    if names is not None:
        arrays["names"] = names
    with atomic_writer(args.out, "wb") as fh:
        np.savez(fh, **arrays)
    print(
        f"{result.means.shape[0]} class means of dimension {result.means.shape[1]} from "
        f"{int(result.counts.sum())} samples -> {args.out}"
    )
    return 0


def _read_names(path: str, flag: str, count: int | None = None) -> np.ndarray:
    if not os.path.exists(path):
        raise UsageError(f"{flag}: file not found: {path}")
    with open(path) as fh:
        names = np.asarray([line.rstrip("\n") for line in fh if line.strip()])
    if count is not None and names.shape[0] != count:
        raise UsageError(f"{flag}: {names.shape[0]} names for {count} samples")
    return names


def _cmd_kmeans(args: argparse.Namespace) -> int:
    from uotsel.clustering import kmeans, print_progress
    from uotsel.io import atomic_writer, read_array

    _check_out_path(args.out, "--out")
    if not (args.tol >= 0 and np.isfinite(args.tol)):
        raise UsageError(f"--tol: must be a finite number >= 0, got {args.tol}")
    key = "features" if args.features.endswith(".npz") else None
    features = read_array(args.features, "--features", key=key)
    names = None
    if args.sample_names:
        names = _read_names(args.sample_names, "--sample-names", features.shape[0])
    result = kmeans(
        features,
        args.k,
        spherical=not args.euclidean,
        n_init=args.n_init,
        max_iter=args.max_iter,
        tol=args.tol,
        seed=args.seed,
        chunk_size=args.chunk_size,
        progress=None if args.quiet else print_progress,
    )
    arrays = dict(
        means=result.means,
        centroids=result.centroids,
        counts=result.sizes,
        assignment=result.assignment,
        objective=np.float64(result.objective),
        spherical=np.bool_(result.spherical),
        n_iters=np.int64(result.n_iters),
        converged=np.bool_(result.converged),
        seed=np.int64(result.seed),
    )
    if names is not None:
        arrays["sample_names"] = names
    with atomic_writer(args.out, "wb") as fh:
        np.savez(fh, **arrays)
    state = "converged" if result.converged else "stopped at --max-iter"
    print(
        f"{args.k} clusters of {features.shape[0]} samples, objective {result.objective:.6g}, "
        f"{result.n_iters} iterations ({state}) -> {args.out}"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from uotsel.demo import run

    run(top=args.top)
    return 0


def _with_flag(message: str) -> str:
    name, sep, rest = message.partition(":")
    if sep and name in _FLAGS:
        return f"{_FLAGS[name]}:{rest}"
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 for bad input)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error already printed
        return int(done.code or 0)
    command = {
        "select": _cmd_select,
        "centroids": _cmd_centroids,
        "kmeans": _cmd_kmeans,
        "demo": _cmd_demo,
    }
    if args.command in ("select", "kmeans", "demo"):
        _enable_compilation_cache()
    try:
        return command[args.command](args)
    except (UsageError, ValueError, TypeError) as err:
        text = " ".join(str(err).split())
        print(f"uotsel {args.command}: error: {_with_flag(text)}", file=sys.stderr)
        return 2


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
