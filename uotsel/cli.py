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
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from uotsel import cache, paper
from uotsel.mesh import SHARD_ABOVE_BYTES, SHARD_CHOICES
from uotsel.outputs import Outputs
from uotsel.progress import Progress

__all__ = ["MAX_CHUNK", "MAX_ITER", "MAX_N_INIT", "MAX_SEED", "MAX_UNITS", "OneLineParser", "main"]

# Upper bounds of the integer options (docs/cli.md).
MAX_UNITS = 1_000_000  # --top-k, --groups, --num-classes, --k
MAX_ITER = 1_000_000  # --max-iter
MAX_SEED = 2**32 - 1  # --seed
MAX_N_INIT = 1000  # --n-init
MAX_CHUNK = 2**24  # --chunk-size


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, ``prog: error: --flag: ...``, status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {_flag_first(message)}\n")


def _flag_first(message: str) -> str:
    """argparse's usage messages in the form ``--flag: what is wrong``."""
    text = " ".join(message.split())
    argument = re.fullmatch(r"argument (\S+?)(?:/\S+)?: (.*)", text)
    if argument:
        return f"{argument[1]}: {argument[2]}"
    required = re.fullmatch(r"the following arguments are required: (.*)", text)
    if required:
        first, *rest = required[1].split(", ")
        also = f" (also missing: {', '.join(rest)})" if rest else ""
        return f"{first}: required{also}"
    unknown = re.fullmatch(r"unrecognized arguments: (.*)", text)
    if unknown:
        return f"{unknown[1].split()[0]}: unrecognized argument"
    ambiguous = re.fullmatch(r"ambiguous option: (\S+?)(?:=\S*)? could match (.*)", text)
    if ambiguous:
        return f"{ambiguous[1]}: ambiguous, could be {ambiguous[2]}"
    return text


def _integer(minimum: int, maximum: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        if not re.fullmatch(r"\s*[+-]?\d{1,4000}\s*", text):
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


def _number(*, allow_zero: bool = False, allow_inf: bool = False) -> Callable[[str], float]:
    """An argparse type: a number > 0 (``>= 0`` with ``allow_zero``), finite unless
    ``allow_inf``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
            raise argparse.ArgumentTypeError(f"must be {'>=' if allow_zero else '>'} 0, got {text}")
        if math.isinf(value) and not allow_inf:
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        return value

    return parse


def _default(fn: Callable[..., Any], name: str) -> Any:
    """The default of parameter ``name`` of ``fn``: the library's default, stated once."""
    return inspect.signature(fn).parameters[name].default


def _add_select(sub: Any) -> argparse.ArgumentParser:
    from uotsel.costs import COSTS
    from uotsel.strategies import STRATEGIES

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
        type=_integer(1, MAX_UNITS),
        default=None,
        help=f"number of units to select (default: {paper.TOP_K_CLASSES}; label: all matching)",
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
        type=_integer(0, MAX_SEED),
        default=seed,
        help=f"seed of the random strategy (default: {seed})",
    )
    sel.add_argument(
        "--matching",
        help="label strategy: matching source unit ids, comma-separated, or a file with one id "
        "a line (or a .npy/.npz array)",
    )
    sel.add_argument(
        "--groups",
        type=_integer(1, MAX_UNITS),
        default=None,
        help=f"split the ranking into this many equal groups (default: {paper.N_GROUPS}, or K "
        "if fewer)",
    )
    _add_select_outputs(sel)
    _add_cluster_flags(sel)
    return sel


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    """``--distributed`` and the explicit cluster flags (:func:`uotsel.mesh.initialize`)."""
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run (jax.distributed), so that --shard splits the work over "
        "the devices of every process; process 0 writes the outputs. The cluster is read from "
        "the environment (SLURM, Open MPI, Cloud TPU) unless --coordinator is given",
    )
    parser.add_argument("--coordinator", help="HOST:PORT of process 0 (with --distributed)")
    parser.add_argument("--num-processes", type=_integer(1, 2**16), help="with --coordinator")
    parser.add_argument("--process-id", type=_integer(0, 2**16), help="with --coordinator")


def _join(args: argparse.Namespace) -> bool:
    """Join the multi-process run when asked; True on the process that writes and reports."""
    explicit = [
        flag
        for flag, value in (
            ("--coordinator", args.coordinator),
            ("--num-processes", args.num_processes),
            ("--process-id", args.process_id),
        )
        if value is not None
    ]
    if explicit and not args.distributed:
        raise UsageError(f"{explicit[0]}: given without --distributed")
    import jax

    from uotsel import mesh
    from uotsel.outputs import first_line

    if args.distributed:
        try:
            mesh.initialize(args.coordinator, args.num_processes, args.process_id)
        except (RuntimeError, ValueError) as err:
            raise UsageError(f"--distributed: {first_line(err)}") from None
    return jax.process_index() == 0


def _add_shard_flag(parser: argparse.ArgumentParser, rows: str, big: str) -> None:
    """``--shard``: the work split over devices by rows (:mod:`uotsel.mesh`)."""
    parser.add_argument(
        "--shard",
        choices=SHARD_CHOICES,
        default="auto",
        help=f"split the {rows} over every device JAX sees: on, off, or auto (when there are "
        f"several devices and {big} more than {SHARD_ABOVE_BYTES >> 30} GiB) (default: auto)",
    )


def _add_solver_flags(sel: argparse.ArgumentParser) -> None:
    """The cost temperature and the Sinkhorn settings of ``select``, defaults the paper's."""
    sel.add_argument(
        "--eps-c",
        type=_number(),
        default=paper.EPS_C,
        help=f"cosine cost temperature: C = (1 - cos) / eps_c (default: {paper.EPS_C}; the l2 "
        "and sqeuclidean costs ignore it)",
    )
    sel.add_argument(
        "--eps",
        type=_number(),
        default=paper.EPS,
        help=f"entropic regularisation (default: {paper.EPS})",
    )
    sel.add_argument(
        "--tau-source",
        type=_number(allow_inf=True),
        default=paper.TAU_SOURCE,
        help=f"KL weight of the source marginal; inf = exact (default: {paper.TAU_SOURCE})",
    )
    sel.add_argument(
        "--tau-target",
        type=_number(allow_inf=True),
        default=paper.TAU_TARGET,
        help=f"KL weight of the target marginal; inf = exact (default: {paper.TAU_TARGET})",
    )
    sel.add_argument(
        "--threshold",
        type=_number(),
        default=paper.SOLVER_RTOL,
        help=f"certified relative error of P 1 at which to stop (default: {paper.SOLVER_RTOL})",
    )
    sel.add_argument(
        "--max-iter",
        type=_integer(1, MAX_ITER),
        default=paper.SOLVER_MAX_ITER,
        help=f"Sinkhorn iteration cap (default: {paper.SOLVER_MAX_ITER})",
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
        help="also write the samples of the selected units: their indices (.npy) or one sample "
        "name (or index) a line (.txt); needs per-sample unit ids in the source file "
        "('labels' or 'assignment')",
    )


def _add_plot(sub: Any) -> argparse.ArgumentParser:
    plot = sub.add_parser(
        "plot",
        help="draw a selection file as a PNG",
        description="Draw a selection file: the scores of all units sorted, with the top-K "
        "cut-off and the score groups; the top units by name; and, when the file has it, the "
        "mass each target class receives from the selected units. Needs matplotlib "
        "(pip install 'uotsel[plot]').",
    )
    plot.add_argument("selection", metavar="SELECTION", help="selection file (.json)")
    plot.add_argument("--out", required=True, help="picture to write (.png)")
    return plot


def _add_centroids(sub: Any) -> argparse.ArgumentParser:
    from uotsel.centroids import class_means

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
        type=_integer(1, MAX_UNITS),
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
        type=_integer(1, MAX_CHUNK),
        default=chunk,
        help=f"rows reduced at a time (default: {chunk})",
    )
    cen.add_argument("--out", required=True, help=".npz to write (means, counts, assignment)")
    cen.add_argument("--quiet", action="store_true", help="no progress display")
    return cen


def _add_kmeans(sub: Any) -> argparse.ArgumentParser:
    from uotsel.clustering import kmeans

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
        type=_integer(1, MAX_UNITS),
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
        type=_integer(1, MAX_N_INIT),
        default=defaults["n_init"],
        help=f"seeded restarts; the lowest objective is kept (default: {defaults['n_init']})",
    )
    km.add_argument(
        "--max-iter",
        type=_integer(1, MAX_ITER),
        default=defaults["max_iter"],
        help=f"Lloyd iterations per restart (default: {defaults['max_iter']})",
    )
    km.add_argument(
        "--tol",
        type=_number(allow_zero=True),
        default=defaults["tol"],
        help="stop when the objective improves by less than this, relative (default: "
        f"{defaults['tol']})",
    )
    km.add_argument(
        "--seed",
        type=_integer(0, MAX_SEED),
        default=defaults["seed"],
        help=f"seed (default: {defaults['seed']})",
    )
    km.add_argument(
        "--chunk-size",
        type=_integer(1, MAX_CHUNK),
        help="rows per assignment block (default: automatic)",
    )
    km.add_argument(
        "--sample-names",
        help="text file with one name per sample, stored with the clusters so "
        "that 'select --samples-out names.txt' can list them",
    )
    km.add_argument(
        "--stream-rows",
        type=_integer(1, MAX_CHUNK),
        help="leave the features on disk and read this many rows at a time in every "
        "iteration (for features larger than the device's memory; default: load them)",
    )
    _add_shard_flag(km, "samples", "the float32 features take")
    km.add_argument("--quiet", action="store_true", help="no progress display")
    km.add_argument("--out", required=True, help=".npz to write")
    _add_cluster_flags(km)
    return km


def _add_demo(sub: Any) -> argparse.ArgumentParser:
    from uotsel.demo import run

    demo = sub.add_parser(
        "demo",
        help="reproduce the paper's Table 4 on the embedded class means",
        description="Select 100 ImageNet classes for CUB-200 with Greedy-OT (l2, cosine) and UOT "
        "on the embedded supervised and self-supervised class means, and compare the recall "
        "of bird classes with the published figures.",
    )
    top = _default(run, "top")
    demo.add_argument(
        "--top",
        type=_integer(0, paper.TOP_K_CLASSES),
        default=top,
        help=f"how many selected class names to list (default: {top})",
    )
    demo.add_argument(
        "--out",
        help="also write the UOT selection for CUB-200 (supervised ResNet18) to this .json, and "
        "its picture beside it (.png; needs matplotlib)",
    )
    return demo


def _add_embedded(sub: Any) -> argparse.ArgumentParser:
    emb = sub.add_parser(
        "embedded",
        help="list the embedded class-mean feature sets",
        description="List the class-mean feature sets shipped with uotsel (backbone, data set, "
        "units, dimension); use them as embedded:<backbone>/<dataset>.",
    )
    return emb


def _build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from uotsel import __version__

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


def _is_id_list(text: str) -> bool:
    return bool(re.fullmatch(r"[\s\d,+\-.eE]*\d[\s\d,+\-.eE]*", text))


def _matching_file(text: str | None) -> str | None:
    """The file ``--matching`` names, or None when it is a comma-separated list."""
    if text is None or (_is_id_list(text) and not os.path.lexists(text)):
        return None
    return text


def _read_matching(text: str, num_units: int) -> np.ndarray:
    from uotsel import io

    path = _matching_file(text)
    if path is not None:
        if not os.path.lexists(path):
            raise UsageError(
                f"--matching: neither an existing file nor a comma-separated list of ids: {text!r}"
            )
        ids = io.read_ids(path, "--matching")
    else:
        ids = io.parse_ids(text.split(","), "--matching")
    if ids.size == 0:
        raise UsageError("--matching: no ids given")
    if ids.min() < 0 or ids.max() >= num_units:
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise UsageError(
            f"--matching: id {bad} is not a source unit (ids must be in [0, {num_units}))"
        )
    return ids


def _check_units_for_cost(units: Any, flag: str, cost: str) -> None:
    from uotsel import _checks

    if cost == "cosine":
        _checks.check_nonzero_rows(units.means, flag)


def _cmd_select(args: argparse.Namespace) -> int:
    from uotsel import io
    from uotsel.selection import select
    from uotsel.strategies import STRATEGIES

    spec = STRATEGIES[args.strategy]
    if spec.needs_target and not args.target:
        raise UsageError(f"--target: required by --strategy {args.strategy}")
    if args.strategy == "label" and args.matching is None:
        raise UsageError("--matching: required by --strategy label")
    inputs = [
        ("--source", io.input_path(args.source)),
        ("--target", io.input_path(args.target)),
        ("--matching", _matching_file(args.matching)),
    ]
    lead = _join(args)
    with Outputs(inputs, writes=lead) as outputs:
        outputs.add("--out", args.out, ("json",))
        if args.names_out is not None:
            outputs.add("--names-out", args.names_out, ("txt",))
        if args.samples_out is not None:
            outputs.add("--samples-out", args.samples_out, ("npy", "txt"))

        source = io.read_units(args.source, "--source")
        target = io.read_units(args.target, "--target") if args.target else None
        num_units, dim = source.means.shape
        if target is not None and target.means.shape[1] != dim:
            raise UsageError(
                f"--target: feature dimension {target.means.shape[1]} does not match the "
                f"source's {dim}"
            )
        if args.samples_out is not None and source.unit_ids is None:
            raise UsageError(
                "--samples-out: the source file has no per-sample unit ids ('labels' or "
                "'assignment')"
            )
        cost = args.cost or spec.defaults.get("cost")
        if spec.needs_target:
            _check_units_for_cost(source, "--source", cost)
            _check_units_for_cost(target, "--target", cost)
        matching = None
        if args.strategy == "label":
            matching = _read_matching(args.matching, num_units)
        top_k = _select_top_k(args, num_units, matching)
        selection = select(
            source.means,
            None if target is None else target.means,
            strategy=args.strategy,
            top_k=top_k,
            n_groups=args.groups if args.groups is not None else min(paper.N_GROUPS, num_units),
            unit_ids=source.unit_ids,
            **_strategy_settings(args, matching),
        )
        _write_selection_outputs(outputs, args, selection, source, target)
        outputs.commit()
    if lead:
        _report_selection(args, selection)
    return 0


def _select_top_k(args: argparse.Namespace, num_units: int, matching: Any) -> int | None:
    """``--top-k`` (its default for every strategy but ``label``), checked against the units;
    ``--groups`` checked too."""
    top_k = args.top_k
    if top_k is None and args.strategy != "label":
        top_k = paper.TOP_K_CLASSES
        if top_k > num_units:
            raise UsageError(
                f"--top-k: the default {top_k} is more than the {num_units} source units; "
                "give --top-k"
            )
    if top_k is not None and top_k > num_units:
        raise UsageError(f"--top-k: {top_k} is more than the {num_units} source units")
    if matching is not None and top_k is not None and top_k > np.unique(matching).size:
        raise UsageError(
            f"--top-k: {top_k} is more than the {np.unique(matching).size} units listed in "
            "--matching"
        )
    if args.groups is not None and args.groups > num_units:
        raise UsageError(f"--groups: {args.groups} is more than the {num_units} source units")
    return top_k


def _strategy_settings(args: argparse.Namespace, matching: Any) -> dict[str, Any]:
    """The flags ``--strategy`` takes, as :func:`uotsel.select` keywords."""
    with_cost = {} if args.cost is None else {"cost": args.cost}
    return {
        "uot": dict(
            **with_cost,
            eps_c=args.eps_c,
            eps=args.eps,
            tau_source=args.tau_source,
            tau_target=args.tau_target,
            threshold=args.threshold,
            max_iter=args.max_iter,
            shard=args.shard,
        ),
        "greedy_ot": dict(**with_cost, eps_c=args.eps_c),
        "nearest": dict(**with_cost, eps_c=args.eps_c),
        "random": dict(seed=args.seed),
        "label": dict(matching=matching),
    }[args.strategy]


def _write_selection_outputs(
    outputs: Outputs, args: argparse.Namespace, selection: Any, source: Any, target: Any
) -> None:
    """The selection file, and the names and sample files when asked for, into ``outputs``."""
    from uotsel import __version__, io

    mass = None
    if args.strategy == "uot":
        from uotsel.plan import selection_mass

        mass = selection_mass(selection, source.means, target.means)
    record = io.selection_record(selection, source, target, __version__, mass)
    outputs.write("--out", io.write_selection, record)
    if args.names_out is not None:
        outputs.write("--names-out", io.write_lines, _unit_lines(source, selection.selected))
    if args.samples_out is not None:
        if outputs.format("--samples-out") == "npy":
            outputs.write("--samples-out", io.write_indices, selection.sample_indices)
        else:
            names = source.sample_names
            outputs.write(
                "--samples-out",
                io.write_lines,
                (names[i] if names is not None else int(i) for i in selection.sample_indices),
            )


def _report_selection(args: argparse.Namespace, selection: Any) -> None:
    """One line on stdout; a warning on stderr when the solver stopped short."""
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


def _unit_lines(source: Any, ids: np.ndarray) -> list[Any]:
    """One line per unit: ``wnid<TAB>name`` for the embedded ImageNet classes, else the name or
    the id."""
    from uotsel import io

    names, wnids = source.names, io.unit_wnids(source)
    if wnids is not None and names is not None:
        return [f"{wnids[i]}\t{names[i]}" for i in ids]
    return [names[i] if names is not None else int(i) for i in ids]


def _cmd_plot(args: argparse.Namespace) -> int:
    from uotsel import io, plot

    with Outputs([("SELECTION", args.selection)]) as outputs:
        outputs.add("--out", args.out, ("png",))
        plot.require_matplotlib("--out")
        record = io.read_selection(args.selection, "SELECTION")
        data = plot.check_record(record, args.selection, "SELECTION")
        outputs.write("--out", plot.write_png, data, os.path.basename(args.selection))
        outputs.commit()
    print(f"drew {args.selection} -> {args.out}")
    return 0


def _cmd_embedded(args: argparse.Namespace) -> int:
    from uotsel import embedded

    rows = [("backbone", "dataset", "units", "dim")]
    for name in embedded.available():
        backbone, _, dataset = name.partition("/")
        units, dim = embedded.shape(backbone, dataset)
        rows.append((backbone, dataset, str(units), str(dim)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [row[2].rjust(widths[2]), row[3].rjust(widths[3])]
        print("  ".join(cells))
    return 0


def _read_labels(args: argparse.Namespace, keys: list[str] | None, n: int) -> np.ndarray:
    from uotsel import io

    if args.labels is not None:
        labels = io.read_ids(args.labels, "--labels")
    elif keys is not None and "labels" in keys:
        labels = io.read_ids(args.features, "--labels", key="labels")
    else:
        raise UsageError("--labels: required unless --features is an .npz with 'labels'")
    if labels.shape != (n,):
        raise UsageError(f"--labels: {labels.size} labels for the {n} rows of --features")
    if labels.min() < 0:
        raise UsageError(f"--labels: label {int(labels.min())} is negative")
    top = int(labels.max())
    if args.num_classes is not None and top >= args.num_classes:
        raise UsageError(
            f"--labels: class id {top} is out of range for --num-classes {args.num_classes}"
        )
    if args.num_classes is None and top >= n:
        raise UsageError(
            f"--labels: label {top} is not below the number of samples ({n}), so classes would "
            "be left without samples; give --num-classes (and --allow-empty-classes) for more "
            "classes than samples"
        )
    return labels


def _cmd_centroids(args: argparse.Namespace) -> int:
    from uotsel import _checks, io
    from uotsel.centroids import class_means

    inputs = [("--features", args.features), ("--labels", args.labels), ("--names", args.names)]
    with Outputs(inputs) as outputs:
        outputs.add("--out", args.out, ("npz",))
        features = io.read_features(args.features, "--features")
        n = features.shape[0]
        labels = _read_labels(args, io.npz_keys(args.features, "--features"), n)
        num_classes = args.num_classes or int(labels.max()) + 1
        counts = np.bincount(labels, minlength=num_classes)
        empty = np.flatnonzero(counts == 0)
        if empty.size and not args.allow_empty_classes:
            raise UsageError(
                f"--labels: {empty.size} of {num_classes} classes have no samples (first: "
                f"{int(empty[0])}); give --allow-empty-classes to keep them as zero rows"
            )
        names = None
        if args.names is not None:
            names = io.read_names(args.names, "--names", num_classes, "classes")
        with Progress(
            n, "checking features", unit="rows", enabled=not args.quiet, log_start=False
        ) as bar:
            _checks.check_rows(
                features, "--features", chunk_size=args.chunk_size, progress=bar.update
            )
        with Progress(
            n, "class means", unit="rows", enabled=not args.quiet, log_start=False
        ) as bar:
            result = class_means(
                features,
                labels,
                num_classes,
                chunk_size=args.chunk_size,
                allow_empty=args.allow_empty_classes,
                progress=bar.update,
            )
        outputs.write(
            "--out",
            io.write_units,
            result.means,
            counts=result.counts,
            names=names,
            assignment=labels,
        )
        outputs.commit()
    print(
        f"{result.means.shape[0]} class means of dimension {result.means.shape[1]} from "
        f"{int(result.counts.sum())} samples -> {args.out}"
    )
    return 0


def _cmd_kmeans(args: argparse.Namespace) -> int:
    from uotsel import _checks, io
    from uotsel.clustering import ProgressBars, kmeans

    if args.stream_rows is not None and args.shard == "on":
        raise UsageError("--stream-rows: streaming runs on one device; drop --shard on")
    inputs = [("--features", args.features), ("--sample-names", args.sample_names)]
    lead = _join(args)
    quiet = args.quiet or not lead
    with Outputs(inputs, writes=lead) as outputs:
        outputs.add("--out", args.out, ("npz",))
        features = io.read_features(args.features, "--features")
        n = features.shape[0]
        if args.k > n:
            raise UsageError(f"--k: {args.k} clusters for only {n} samples")
        names = None
        if args.sample_names is not None:
            names = io.read_names(args.sample_names, "--sample-names", n, "samples")
        with Progress(
            n, "checking features", unit="rows", enabled=not quiet, log_start=False
        ) as bar:
            _checks.check_rows(
                features,
                "--features",
                chunk_size=args.chunk_size or 65536,
                nonzero=not args.euclidean,
                progress=bar.update,
            )
        with ProgressBars(enabled=not quiet) as bars:
            result = kmeans(
                features,
                args.k,
                spherical=not args.euclidean,
                n_init=args.n_init,
                max_iter=args.max_iter,
                tol=args.tol,
                seed=args.seed,
                chunk_size=args.chunk_size,
                progress=bars,
                shard=args.shard,
                stream_rows=args.stream_rows,
            )
        outputs.write("--out", io.write_clusters, result, sample_names=names)
        outputs.commit()
    if not lead:
        return 0
    state = "converged" if result.converged else "stopped at --max-iter"
    print(
        f"{args.k} clusters of {n} samples, objective {result.objective:.6g}, "
        f"{result.n_iters} iterations ({state}) -> {args.out}"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from uotsel import __version__, demo, plot

    if args.out is None:
        demo.run(top=args.top)
        return 0
    figure = demo.figure_path(args.out)
    with Outputs() as outputs:
        outputs.add("--out", args.out, ("json",))
        outputs.add("--out figure", figure, ("png",))
        plot.require_matplotlib("--out")
        rows = demo.run(top=args.top)
        demo.save(outputs, rows, __version__, os.path.basename(args.out))
        outputs.commit()
    print(f"wrote {args.out} and its picture {figure}")
    return 0


_COMMANDS = {
    "select": _cmd_select,
    "plot": _cmd_plot,
    "embedded": _cmd_embedded,
    "centroids": _cmd_centroids,
    "kmeans": _cmd_kmeans,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 for bad input)."""
    parser, commands = _build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as done:  # --help, --version, or a usage error already printed
        return int(done.code or 0)
    if args.command in ("select", "kmeans", "demo"):
        cache.enable_compilation_cache()
    try:
        return _COMMANDS[args.command](args)
    except (UsageError, ValueError, TypeError, OSError, MemoryError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"uotsel {args.command}: error: {text}", file=sys.stderr)
        return 2


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
