"""The ``uotsel`` command line: ``select``, ``plot``, ``centroids``, ``kmeans``, ``embedded`` and
``demo``.

Every argument is checked here, with the flag's own name, before the library is called: bad
input ends the command with exit status 2 and one line ``uotsel COMMAND: error: --FLAG: ...``.
The outputs of a command are checked before any work and written together at the end
(:class:`uotsel.outputs.Outputs`): a failed command leaves every existing file as it was.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

from uotsel import __version__, cache, commands, demo, paper, per_sample, select_command
from uotsel.centroids import class_means
from uotsel.cli_kit import (
    OneLineParser,
    UsageError,
    add_cluster_flags,
    integer,
    number,
    report,
)
from uotsel.clustering import kmeans
from uotsel.costs import COSTS
from uotsel.mesh import SHARD_ABOVE_BYTES, SHARD_CHOICES
from uotsel.settings import FIELD_HELP, UOT
from uotsel.strategies import STRATEGIES
from uotsel.unbalanced import METHODS

__all__ = [
    "MAX_CHUNK",
    "MAX_IMAGES",
    "MAX_ITER",
    "MAX_N_INIT",
    "MAX_SEED",
    "MAX_UNITS",
    "OneLineParser",
    "main",
]

# Upper bounds of the integer options (docs/cli.md).
MAX_UNITS = 1_000_000  # --top-k, --n-groups, --num-classes, --k
MAX_ITER = 1_000_000  # --max-iter
MAX_SEED = 2**32 - 1  # --seed
MAX_N_INIT = 1000  # --n-init
MAX_CHUNK = 2**24  # --chunk-size
MAX_IMAGES = 10**12  # --budget-images


def _default(fn: Callable[..., Any], name: str) -> Any:
    """The default of parameter ``name`` of ``fn``: the library's default, stated once."""
    return inspect.signature(fn).parameters[name].default


def _add_select(sub: Any) -> argparse.ArgumentParser:

    sel = sub.add_parser(
        "select",
        help="rank source units by similarity to a target and write a selection",
        description="Rank the source (pre-training) units by similarity to the target units and "
        "write the top K (or the best units a budget in images holds; or, with --per-sample, "
        "the best single samples) as a JSON selection file. Unit files: .npz with 'means' [K, D] "
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
    count = sel.add_mutually_exclusive_group()
    count.add_argument(
        "--top-k",
        type=integer(1, MAX_UNITS),
        default=None,
        help=f"number of units to select (default: the paper's {paper.TOP_K_CLASSES} classes, "
        f"or {paper.TOP_K_CLUSTERS} clusters from a 'uotsel kmeans' file; label: all matching)",
    )
    count.add_argument(
        "--budget-images",
        type=integer(1, MAX_IMAGES),
        default=None,
        metavar="N",
        help="instead of --top-k: the most images to select. Whole units are taken best first, "
        "and the first unit that does not fit ends the selection; unit sizes come from the "
        "source file ('counts', else its 'labels' or 'assignment'). With --per-sample: the "
        "number of samples to select",
    )
    sel.add_argument(
        "--cost",
        default=None,
        choices=list(COSTS),
        help="cost between unit features (default: the strategy's: cosine for uot and "
        "nearest, l2 on the raw means for greedy_ot)",
    )
    _add_solver_flags(sel)
    seed = STRATEGIES["random"].defaults["seed"]
    sel.add_argument(
        "--seed",
        type=integer(0, MAX_SEED),
        default=seed,
        help=f"seed of the random strategy (default: {seed})",
    )
    sel.add_argument(
        "--matching",
        help="label strategy: matching source unit ids, comma-separated, or a file with one id "
        "a line (or a .npy/.npz array)",
    )
    sel.add_argument(
        "--n-groups",
        "--groups",
        dest="n_groups",
        type=integer(1, MAX_UNITS),
        default=None,
        help=f"split the ranking into this many equal groups (default: {paper.N_GROUPS}, or K "
        "if fewer)",
    )
    _add_per_sample_flags(sel)
    _add_select_outputs(sel)
    _add_cluster_flags(sel)
    return sel


def _add_per_sample_flags(sel: argparse.ArgumentParser) -> None:
    """``--per-sample`` and the flags only it reads."""
    sel.add_argument(
        "--per-sample",
        action="store_true",
        help="score every sample by the unit-level uot solution (s(x) = LSE_j((g_j - C(x, "
        "t_j)) / eps)) and select the --budget-images best samples instead of whole units; "
        "needs per-sample features (a --source .npz with 'features' and 'labels', or "
        "--features) and per-sample unit ids",
    )
    sel.add_argument(
        "--features",
        help="with --per-sample: [N, D] per-sample features, one row per sample of the "
        "source file's per-sample unit ids: .npy (memory-mapped), .npz with 'features', or "
        "a feature-shards index (.json)",
    )
    sel.add_argument(
        "--chunk-size",
        type=integer(1, MAX_CHUNK),
        default=None,
        help=f"with --per-sample: rows scored at a time (default: {per_sample.DEFAULT_CHUNK})",
    )
    sel.add_argument(
        "--quiet",
        action="store_true",
        help="with --per-sample: no progress display while the samples are scored",
    )


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    """``--distributed`` and the explicit cluster flags (:func:`uotsel.mesh.initialize`)."""
    add_cluster_flags(
        parser,
        ", so that --shard splits the work over the devices of every process; process 0 "
        "writes the outputs",
    )


def _add_shard_flag(parser: argparse.ArgumentParser, rows: str, big: str) -> None:
    """``--shard``: the work split over devices by rows (:mod:`uotsel.mesh`)."""
    parser.add_argument(
        "--shard",
        choices=SHARD_CHOICES,
        default="auto",
        help=f"split the {rows} over every device JAX sees: on, off, or auto (when there are "
        f"several devices and {big} more than {SHARD_ABOVE_BYTES >> 30} GiB) (default: auto)",
    )


# How the command line reads each solver field of :class:`uotsel.UOT` (``cost`` has its own
# flag: its default depends on the strategy).
_SOLVER_FLAG_TYPES = {
    "eps_c": number(),
    "eps": number(),
    "tau_source": number(allow_inf=True),
    "tau_target": number(allow_inf=True),
    "threshold": number(),
    "max_iter": integer(1, MAX_ITER),
    "method": None,
}


def _add_solver_flags(sel: argparse.ArgumentParser) -> None:
    """One flag for each solver field of :class:`uotsel.UOT`, its default the paper's value."""

    paper_uot = UOT()
    for field, kind in _SOLVER_FLAG_TYPES.items():
        default = getattr(paper_uot, field)
        extra = {"choices": METHODS} if kind is None else {"type": kind}
        sel.add_argument(
            "--" + field.replace("_", "-"),
            default=default,
            help=f"{FIELD_HELP[field]} (default: {default})",
            **extra,
        )
    _add_shard_flag(sel, "source units", "the cost matrix takes")


def _add_select_outputs(sel: argparse.ArgumentParser) -> None:
    """The files ``select`` writes."""
    sel.add_argument("--out", required=True, help="selection file to write (.json)")
    sel.add_argument(
        "--names-out",
        help="also write the selected unit names (or ids), one a line (.txt); for the embedded "
        "ImageNet classes 'wnid<TAB>name'",
    )
    sel.add_argument(
        "--samples-out",
        help="also write the samples of the selected units: their ascending indices (.npy) or "
        "one sample name (or index) a line (.txt); needs per-sample unit ids in the source "
        "file ('labels' or 'assignment'). With --per-sample: the selected samples, best first",
    )
    sel.add_argument(
        "--scores-out",
        help="with --per-sample: also write the score of every sample, in sample order (.npy; "
        "-inf for a sample in no unit, unit id -1)",
    )


def _add_plot(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "plot",
        help="draw a selection file as a PNG",
        description="Draw a selection file: the scores of all units sorted, with the top-K "
        "cut-off and the score groups; the top units by name; and, when the file has it, the "
        "mass each target class receives from the selected units. A selection by "
        "--budget-images also shows where the budget cuts the ranking; a --per-sample "
        "selection shows the samples of each unit holding chosen samples (their score "
        "distribution and the cut with --scores). Needs matplotlib (pip install "
        "'uotsel[plot]').",
    )
    parser.add_argument("selection", metavar="SELECTION", help="selection file (.json)")
    parser.add_argument("--out", required=True, help="picture to write (.png)")
    parser.add_argument(
        "--scores",
        metavar="F",
        help="with a --per-sample selection: the score of every sample (.npy), as 'uotsel "
        "select --per-sample --scores-out F' wrote it; draws each unit's score distribution "
        "and the cut. The samples' units are read from the source file the selection names "
        "(its 'labels' or 'assignment'), so nothing else is needed while that file is where "
        "it was",
    )
    parser.add_argument(
        "--unit-ids",
        metavar="F",
        help="with --scores: the unit id of every sample, when the selection's source file "
        "has moved: a unit file (.npz with 'assignment' or 'labels'), a .npy, or one id a "
        "line (default: the selection's source file)",
    )
    return parser


def _add_centroids(sub: Any) -> argparse.ArgumentParser:

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
        help="[N] integer labels: .npy, .npz or a text file with one label a line "
        "(default: 'labels' inside the --features .npz)",
    )
    cen.add_argument(
        "--num-classes",
        type=integer(1, MAX_UNITS),
        help="number of classes (default: max label + 1, which must be at most the number of "
        "samples)",
    )
    cen.add_argument(
        "--allow-empty-classes",
        action="store_true",
        help="keep classes without samples as zero rows (count 0) instead of refusing them",
    )
    cen.add_argument("--names", help="text file with one class name per line")
    chunk = _default(class_means, "chunk_size")
    cen.add_argument(
        "--chunk-size",
        type=integer(1, MAX_CHUNK),
        default=chunk,
        help=f"rows reduced at a time (default: {chunk})",
    )
    cen.add_argument("--out", required=True, help=".npz to write (means, counts, assignment)")
    cen.add_argument("--quiet", action="store_true", help="no progress display")
    return cen


def _add_kmeans(sub: Any) -> argparse.ArgumentParser:

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
    km.add_argument(
        "--k",
        type=integer(1, MAX_UNITS),
        required=True,
        help=f"number of clusters (the paper: {paper.N_CLUSTERS})",
    )
    km.add_argument(
        "--euclidean",
        action="store_true",
        help="Euclidean k-means instead of spherical (cosine) k-means",
    )
    defaults = {name: _default(kmeans, name) for name in ("n_init", "max_iter", "tol", "seed")}
    km.add_argument(
        "--n-init",
        type=integer(1, MAX_N_INIT),
        default=defaults["n_init"],
        help=f"seeded restarts; the lowest objective is kept (default: {defaults['n_init']})",
    )
    km.add_argument(
        "--max-iter",
        type=integer(1, MAX_ITER),
        default=defaults["max_iter"],
        help=f"Lloyd iterations per restart (default: {defaults['max_iter']})",
    )
    km.add_argument(
        "--tol",
        type=number(allow_zero=True),
        default=defaults["tol"],
        help="stop when the objective improves by less than this, relative (default: "
        f"{defaults['tol']})",
    )
    km.add_argument(
        "--seed",
        type=integer(0, MAX_SEED),
        default=defaults["seed"],
        help=f"seed (default: {defaults['seed']})",
    )
    km.add_argument(
        "--chunk-size",
        type=integer(1, MAX_CHUNK),
        help="rows per assignment block (default: automatic)",
    )
    km.add_argument(
        "--sample-names",
        help="text file with one name per sample, stored with the clusters so "
        "that 'select --samples-out names.txt' can list them",
    )
    km.add_argument(
        "--stream-rows",
        type=integer(1, MAX_CHUNK),
        help="leave the features on disk and read this many rows at a time in every "
        "iteration (for features larger than the device's memory; default: load them)",
    )
    km.add_argument(
        "--skip-zero-rows",
        action="store_true",
        help="leave all-zero rows (those of images 'uotsel-train extract' could not read) in no "
        "cluster: assignment -1, in no count or mean (default: spherical k-means refuses them, "
        "Euclidean k-means clusters them)",
    )
    _add_shard_flag(km, "samples", "the float32 features take")
    km.add_argument("--quiet", action="store_true", help="no progress display")
    km.add_argument("--out", required=True, help=".npz to write")
    _add_cluster_flags(km)
    return km


def _add_demo(sub: Any) -> argparse.ArgumentParser:

    parser = sub.add_parser(
        "demo",
        help="reproduce the paper's Table 4 on the embedded class means",
        description="Select 100 ImageNet classes for CUB-200 with Greedy-OT (l2, cosine) and UOT "
        "on the embedded supervised and self-supervised class means, and compare the recall "
        "of bird classes with the published figures.",
    )
    top = _default(demo.run, "top")
    parser.add_argument(
        "--top",
        type=integer(0, paper.TOP_K_CLASSES),
        default=top,
        help=f"how many selected class names to list (default: {top})",
    )
    parser.add_argument(
        "--out",
        help="also write the UOT selection for CUB-200 (supervised ResNet18) to this .json, and "
        "its picture beside it (.png; needs matplotlib)",
    )
    return parser


def _add_embedded(sub: Any) -> argparse.ArgumentParser:
    emb = sub.add_parser(
        "embedded",
        help="list the embedded class-mean feature sets",
        description="List the class-mean feature sets shipped with uotsel (backbone, data set, "
        "units, dimension); use them as embedded:<backbone>/<dataset>.",
    )
    return emb


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:

    parser = OneLineParser(
        prog="uotsel",
        description="Choose which pre-training classes or clusters to reuse while fine-tuning, "
        "by unbalanced optimal transport (Liu et al., NeurIPS 2022).",
    )
    parser.add_argument("--version", action="version", version=f"uotsel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True

    added = [_add_select, _add_plot, _add_centroids, _add_kmeans, _add_demo, _add_embedded]
    return parser, {fn.__name__.removeprefix("_add_"): fn(sub) for fn in added}


_COMMANDS = {
    "select": select_command.cmd_select,
    "plot": commands.cmd_plot,
    "embedded": commands.cmd_embedded,
    "centroids": commands.cmd_centroids,
    "kmeans": commands.cmd_kmeans,
    "demo": commands.cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 for bad input)."""
    parser, subparsers = _build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            subparsers[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as done:  # --help, --version, or a usage error already printed
        return int(done.code or 0)
    if args.command in ("select", "kmeans", "demo"):
        cache.enable_compilation_cache()
    try:
        return _COMMANDS[args.command](args)
    except (UsageError, ValueError, TypeError, OSError, MemoryError) as err:
        return report(f"uotsel {args.command}", err)


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
