"""What ``uotsel select --per-sample`` does once its flags are parsed (:mod:`uotsel.cli`): find
the per-sample features and unit ids, check them against the unit file, score every sample by
the unit-level ``uot`` solution (:func:`uotsel.per_sample.select_samples`) and write the
outputs. Bad input raises :class:`uotsel.cli_kit.UsageError` naming the flag, before anything
is solved; features that are not those the units were computed from (:mod:`uotsel.member_means`)
once every sample is scored, before anything is written.
"""

from __future__ import annotations

import argparse
from typing import Any, NamedTuple

import numpy as np

from uotsel import embedded, io, paper, per_sample, selection_file
from uotsel.cli_kit import UsageError
from uotsel.outputs import Outputs
from uotsel.plan import selection_mass
from uotsel.progress import Progress

__all__ = ["check_flags", "read_samples", "report", "run", "write_outputs"]

# Flags read only with --per-sample.
_ONLY_PER_SAMPLE = ("features", "scores_out", "chunk_size")


def check_flags(args: argparse.Namespace) -> None:
    """Refuse flag combinations before any file is read.

    Raises:
      UsageError: naming the flag at fault.
    """
    if not args.per_sample:
        for name in _ONLY_PER_SAMPLE:
            if getattr(args, name) is not None:
                raise UsageError(f"--{name.replace('_', '-')}: read only with --per-sample")
        return
    if args.strategy != "uot":
        raise UsageError(
            f"--per-sample: samples are scored by the uot solution; --strategy {args.strategy} "
            "has none"
        )
    if args.top_k is not None:
        raise UsageError(
            "--top-k: cannot be combined with --per-sample; give --budget-images N, the number "
            "of samples to select"
        )
    if args.budget_images is None:
        raise UsageError("--per-sample: needs --budget-images N, the number of samples to select")


class Samples(NamedTuple):
    """The per-sample features ``[N, D]`` of a ``--per-sample`` run, the flag that names them
    in messages and the file they come from."""

    features: Any
    flag: str
    path: str


def read_samples(args: argparse.Namespace, source: io.Units) -> Samples:
    """The per-sample features (``--features``, else the ``features`` of a ``--source``
    ``.npz``), checked against the source's per-sample unit ids and dimension
    (``--budget-images`` is checked against the samples in a unit by :func:`run`, before
    anything is solved).

    Raises:
      UsageError: naming ``--per-sample``, ``--features``, ``--source`` or ``--n-groups``.
    """
    if args.features is not None:
        samples = Samples(
            io.read_features(args.features, "--features"), "--features", args.features
        )
    else:
        path = io.input_path(args.source)
        keys = None if args.source.startswith(embedded.PREFIX) else io.npz_keys(path, "--source")
        if keys is None or not {"features", "labels"} <= set(keys):
            raise UsageError(
                "--per-sample: needs per-sample features: give --features F, or a --source .npz "
                "with 'features' and 'labels'"
            )
        samples = Samples(io.read_features(path, "--source"), "--source", path)
    if source.unit_ids is None:
        raise UsageError(
            "--per-sample: the source file has no per-sample unit ids ('labels' or "
            "'assignment') to say which unit each row of --features belongs to"
        )
    rows, dim = samples.features.shape
    if rows != source.unit_ids.size:
        raise UsageError(
            f"{samples.flag}: {rows} rows for the {source.unit_ids.size} samples of the source "
            "file's per-sample unit ids"
        )
    if dim != source.means.shape[1]:
        raise UsageError(
            f"{samples.flag}: feature dimension {dim} does not match the source units' "
            f"{source.means.shape[1]}"
        )
    num_units = source.means.shape[0]
    if args.n_groups is not None and args.n_groups > num_units:
        raise UsageError(f"--n-groups: {args.n_groups} is more than the {num_units} source units")
    return samples


def run(
    args: argparse.Namespace, source: io.Units, target: io.Units, samples: Samples, settings: dict
) -> per_sample.SampleSelection:
    """:func:`uotsel.per_sample.select_samples` with the flags (``settings``: the ``uot``
    keywords of :func:`uotsel.select`); a library error about the features or the budget
    named as its flag."""
    num_units = source.means.shape[0]
    rows = samples.features.shape[0]
    with Progress(
        rows, "scoring samples", unit="rows", enabled=not args.quiet, log_start=False
    ) as bar:
        try:
            return per_sample.select_samples(
                samples.features,
                source.means,
                target.means,
                budget_images=args.budget_images,
                unit_ids=source.unit_ids,
                n_groups=min(paper.N_GROUPS, num_units) if args.n_groups is None else args.n_groups,
                chunk_size=args.chunk_size or per_sample.DEFAULT_CHUNK,
                progress=bar.update,
                **settings,
            )
        except ValueError as err:
            name, _, rest = str(err).partition(": ")
            flag = {"features": samples.flag, "budget_images": "--budget-images"}.get(name)
            if flag is None:
                raise
            raise UsageError(f"{flag}: {rest}") from None


def write_outputs(
    outputs: Outputs,
    args: argparse.Namespace,
    picked: per_sample.SampleSelection,
    source: io.Units,
    target: io.Units,
    samples: Samples,
    unit_lines: Any,
) -> None:
    """The selection file, and the names, samples and scores files when asked for."""
    from uotsel import __version__

    mass = selection_mass(picked.units, source.means, target.means)
    features = {"path": samples.path, "rows": int(samples.features.shape[0])}
    features["dim"] = int(samples.features.shape[1])
    record = selection_file.sample_selection_record(
        picked, source, target, __version__, mass.total, features
    )
    outputs.write("--out", selection_file.write_selection, record)
    if args.names_out is not None:
        outputs.write("--names-out", io.write_lines, unit_lines(source, picked.units_holding))
    if args.samples_out is not None:
        write_sample_list(outputs, source, picked.samples)
    if args.scores_out is not None:
        outputs.write("--scores-out", io.write_scores, picked.scores)


def write_sample_list(outputs: Outputs, source: io.Units, samples: np.ndarray) -> None:
    """``--samples-out``: the sample indices ``[S]`` as a ``.npy``, or one a line (the sample's
    name where the unit file has names), in their order."""
    if outputs.format("--samples-out") == "npy":
        outputs.write("--samples-out", io.write_indices, samples)
    else:
        names = source.sample_names
        lines = (names[i] if names is not None else int(i) for i in samples)
        outputs.write("--samples-out", io.write_lines, lines)


def report(args: argparse.Namespace, picked: per_sample.SampleSelection) -> str:
    """The line ``select`` prints for a per-sample selection (before its solver note)."""
    low, high = picked.score_range
    cut = picked.selected_range[0]
    held = picked.units_holding.size
    unscored = int(np.isneginf(picked.scores).sum())
    none = f"; {unscored} in no unit, not scored" if unscored else ""
    return (
        f"selected {picked.samples.size} of {picked.scores.size} samples (from {held} of "
        f"{picked.units.ranking.size} units{none}) with uot per sample; scores {low:.6g} to "
        f"{high:.6g}, cut at {cut:.6g}"
    )
