"""What ``uotsel select`` does once its flags are parsed (:mod:`uotsel.cli`): read the units
and the target, rank and select (whole units, a budget in images, or every sample by its
score), write the outputs together (:class:`uotsel.outputs.Outputs`) and report. Bad input
raises :class:`uotsel.cli_kit.UsageError` or ``ValueError`` naming the flag.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

import numpy as np

from uotsel import (
    __version__,
    _checks,
    budget,
    commands,
    costs,
    embedded,
    io,
    paper,
    sample_select,
    selection_file,
)
from uotsel.cli_kit import UsageError
from uotsel.outputs import Outputs
from uotsel.plan import selection_mass
from uotsel.selection import select
from uotsel.settings import UOT
from uotsel.strategies import STRATEGIES

__all__ = ["cmd_select", "default_top_k"]

# `--matching concept:NAME`: the ImageNet classes of a concept (uotsel.embedded.concept_ids)
CONCEPT_PREFIX = "concept:"


def _is_id_list(text: str) -> bool:
    return bool(re.fullmatch(r"[\s\d,+\-.eE]*\d[\s\d,+\-.eE]*", text))


def _matching_file(text: str | None) -> str | None:
    """The file ``--matching`` names, or None when it is a comma-separated list or a concept."""
    if text is None or (_is_id_list(text) and not os.path.lexists(text)):
        return None
    if text.startswith(CONCEPT_PREFIX) and not os.path.lexists(text):
        return None
    return text


def _read_matching(text: str, num_units: int) -> np.ndarray:
    if text.startswith(CONCEPT_PREFIX) and not os.path.lexists(text):
        classes = len(embedded.imagenet_classes()["concept"])
        if num_units != classes:
            raise UsageError(
                f"--matching: {text} names ImageNet classes; the source has {num_units} units, "
                f"not the {classes} ImageNet classes"
            )
        return embedded.concept_ids(text[len(CONCEPT_PREFIX) :], "--matching")
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
    """Rows of zeros have no direction: refused (naming ``flag``) for an angular cost."""
    if costs.check_kind(cost).angular:
        _checks.check_nonzero_rows(units.means, flag)


def cmd_select(args: argparse.Namespace) -> int:

    spec = STRATEGIES[args.strategy]
    if spec.needs_target and not args.target:
        raise UsageError(f"--target: required by --strategy {args.strategy}")
    if args.strategy == "label" and args.matching is None:
        raise UsageError("--matching: required by --strategy label")
    sample_select.check_flags(args)
    inputs = [
        ("--source", io.input_path(args.source)),
        ("--target", io.input_path(args.target)),
        ("--matching", _matching_file(args.matching)),
        ("--features", args.features),
    ]
    lead = commands.join(args)
    with Outputs(inputs, writes=lead) as outputs:
        outputs.add("--out", args.out, ("json",))
        if args.names_out is not None:
            outputs.add("--names-out", args.names_out, ("txt",))
        if args.samples_out is not None:
            outputs.add("--samples-out", args.samples_out, ("npy", "txt"))
        if args.scores_out is not None:
            outputs.add("--scores-out", args.scores_out, ("npy",))

        source = io.read_units(args.source, "--source")
        target = io.read_units(args.target, "--target") if args.target else None
        num_units, dim = source.means.shape
        if target is not None and target.means.shape[1] != dim:
            raise UsageError(
                f"--target: feature dimension {target.means.shape[1]} does not match the "
                f"source's {dim}"
            )
        if args.per_sample:
            return _select_samples(args, outputs, source, target, lead)
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
        selection = _run_select(args, source, target, matching)
        _write_selection_outputs(outputs, args, selection, source, target)
        outputs.commit()
    if lead:
        _report_selection(args, selection)
    return 0


def _select_samples(
    args: argparse.Namespace, outputs: Outputs, source: io.Units, target: io.Units, lead: bool
) -> int:
    """``select --per-sample`` inside the open ``outputs``: every sample scored, the
    ``--budget-images`` best taken (:mod:`uotsel.sample_select`)."""
    samples = sample_select.read_samples(args, source)
    cost = args.cost or STRATEGIES["uot"].defaults["cost"]
    _check_units_for_cost(source, "--source", cost)
    _check_units_for_cost(target, "--target", cost)
    picked = sample_select.run(args, source, target, samples, _strategy_settings(args, None))
    sample_select.write_outputs(outputs, args, picked, source, target, samples, _unit_lines)
    outputs.commit()
    if lead:
        line = sample_select.report(args, picked)
        _report_line(args, picked.units.diagnostics, line)
    return 0


def _run_select(
    args: argparse.Namespace, source: io.Units, target: io.Units | None, matching: Any
) -> Any:
    """:func:`uotsel.select` with the flags; a budget error of the library named as
    ``--budget-images``."""
    num_units = source.means.shape[0]
    try:
        return select(
            source.means,
            None if target is None else target.means,
            strategy=args.strategy,
            top_k=_select_top_k(args, source, matching),
            budget_images=args.budget_images,
            unit_sizes=_unit_sizes(args, source),
            n_groups=min(paper.N_GROUPS, num_units) if args.n_groups is None else args.n_groups,
            unit_ids=source.unit_ids,
            **_strategy_settings(args, matching),
        )
    except ValueError as err:
        raise _budget_error(err) from None


def default_top_k(source: io.Units) -> int:
    """The paper's number of units to select: 200 k-means clusters (a ``uotsel kmeans`` file),
    else 100 classes."""
    return paper.TOP_K_CLUSTERS if source.clusters else paper.TOP_K_CLASSES


def _select_top_k(args: argparse.Namespace, source: io.Units, matching: Any) -> int | None:
    """``--top-k`` (its default for every strategy but ``label``), checked against the units;
    ``--n-groups`` checked too."""
    num_units = source.means.shape[0]
    top_k = args.top_k
    if top_k is None and args.strategy != "label" and args.budget_images is None:
        top_k = default_top_k(source)
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
    if args.n_groups is not None and args.n_groups > num_units:
        raise UsageError(f"--n-groups: {args.n_groups} is more than the {num_units} source units")
    return top_k


def _unit_sizes(args: argparse.Namespace, source: io.Units) -> np.ndarray | None:
    """With ``--budget-images``: the images of every source unit, from the source file's
    ``counts``, else from its per-sample unit ids (:func:`uotsel.budget.unit_sizes`)."""
    if args.budget_images is None:
        return None
    if source.counts is None and source.unit_ids is None:
        raise UsageError(
            "--budget-images: the source file does not give the images of its units (it has "
            "no 'counts', 'labels' or 'assignment')"
        )
    try:
        return budget.unit_sizes(
            source.means.shape[0], counts=source.counts, unit_ids=source.unit_ids
        )
    except ValueError as err:
        raise UsageError(f"--source: {str(err).partition(': ')[2]}") from None


def _budget_error(err: ValueError) -> Exception:
    """The library's ``budget_images: ...`` as the one-line error of ``--budget-images``;
    any other error as it is."""
    name, _, rest = str(err).partition(": ")
    return UsageError(f"--budget-images: {rest}") if name == "budget_images" else err


def _strategy_settings(args: argparse.Namespace, matching: Any) -> dict[str, Any]:
    """The flags ``--strategy`` takes, as :func:`uotsel.select` keywords."""
    with_cost = {} if args.cost is None else {"cost": args.cost}
    return {
        "uot": dict(
            **with_cost,
            **{f: getattr(args, f) for f in UOT._fields if f != "cost"},
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

    mass = None
    if args.strategy == "uot":
        mass = selection_mass(selection, source.means, target.means)
    record = selection_file.selection_record(selection, source, target, __version__, mass)
    outputs.write("--out", selection_file.write_selection, record)
    if args.names_out is not None:
        outputs.write("--names-out", io.write_lines, _unit_lines(source, selection.selected))
    if args.samples_out is not None:
        sample_select.write_sample_list(outputs, source, selection.sample_indices)


def _report_selection(args: argparse.Namespace, selection: Any) -> None:
    """One line on stdout; a warning on stderr when the solver stopped short."""
    used = ""
    if selection.budget_images is not None:
        used = f" ({selection.images_used} images of a budget of {selection.budget_images})"
    line = (
        f"selected {selection.selected.size} of {selection.ranking.size} units{used} with "
        f"{args.strategy}"
    )
    _report_line(args, selection.diagnostics, line)


def _report_line(args: argparse.Namespace, diag: dict, line: str) -> None:
    """``line``, the solver's figures and the output on stdout; a warning on stderr when the
    solver stopped short."""
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
    print(f"{line}{note} -> {args.out}")


def _unit_lines(source: Any, ids: np.ndarray) -> list[Any]:
    """One line per unit: ``wnid<TAB>name`` for the embedded ImageNet classes, else the name or
    the id."""

    names, wnids = source.names, io.unit_wnids(source)
    if wnids is not None and names is not None:
        return [f"{wnids[i]}\t{names[i]}" for i in ids]
    return [names[i] if names is not None else int(i) for i in ids]
