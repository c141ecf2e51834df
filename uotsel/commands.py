"""What the ``uotsel`` commands do once their flags are parsed (:mod:`uotsel.cli`): read the
inputs, call the library, write the outputs together (:class:`uotsel.outputs.Outputs`). Each
``cmd_NAME(args)`` returns the exit status; bad input raises :class:`uotsel.cli_kit.UsageError`
or ``ValueError`` naming the flag. ``select`` has a module of its own
(:mod:`uotsel.select_command`); :func:`join` is shared.
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np

from uotsel import (
    __version__,
    _checks,
    demo,
    embedded,
    io,
    mesh,
    plot,
    plot_budget,
    selection_file,
)
from uotsel.centroids import class_means
from uotsel.cli_kit import (
    UsageError,
    check_cluster_flags,
)
from uotsel.clustering import ProgressBars, kmeans
from uotsel.outputs import Outputs, first_line
from uotsel.progress import Progress


def join(args: argparse.Namespace) -> bool:
    """Join the multi-process run when asked; True on the process that writes and reports."""
    check_cluster_flags(args)

    if args.distributed:
        try:
            mesh.initialize(args.coordinator, args.num_processes, args.process_id)
        except (RuntimeError, ValueError) as err:
            raise UsageError(f"--distributed: {first_line(err)}") from None
    return jax.process_index() == 0


def cmd_plot(args: argparse.Namespace) -> int:

    if args.unit_ids is not None and args.scores is None:
        raise UsageError("--unit-ids: read only with --scores")
    inputs = [
        ("SELECTION", args.selection),
        ("--scores", args.scores),
        ("--unit-ids", args.unit_ids),
    ]
    with Outputs(inputs) as outputs:
        outputs.add("--out", args.out, ("png",))
        plot.require_matplotlib("--out")
        record = selection_file.read_selection(args.selection, "SELECTION")
        data = plot.check_record(record, args.selection, "SELECTION")
        if args.scores is not None:
            data = _with_sample_scores(args, record, data)
        outputs.write("--out", plot.write_png, data, os.path.basename(args.selection))
        outputs.commit()
    print(f"drew {args.selection} -> {args.out}")
    return 0


def _with_sample_scores(args: argparse.Namespace, record: dict, data: dict) -> dict:
    """``data`` with the per-sample scores of ``--scores`` (a per-sample selection only)."""
    if data["per_sample"] is None:
        raise UsageError(
            f"--scores: {args.selection} selects whole units; per-sample scores go with a "
            f"per-sample selection ({selection_file.PER_SAMPLE_FORMAT})"
        )
    scores = plot_budget.read_sample_scores(
        record, data, args.scores, args.unit_ids, args.selection
    )
    return {**data, "sample_scores": scores}


def cmd_embedded(args: argparse.Namespace) -> int:

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


def cmd_centroids(args: argparse.Namespace) -> int:

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


def cmd_kmeans(args: argparse.Namespace) -> int:

    if args.stream_rows is not None and args.shard == "on":
        raise UsageError("--stream-rows: streaming runs on one device; drop --shard on")
    inputs = [("--features", args.features), ("--sample-names", args.sample_names)]
    lead = join(args)
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
            zero = _checks.check_rows(
                features, "--features", chunk_size=args.chunk_size or 65536, progress=bar.update
            )
        exclude = _zero_rows(zero, n, args)
        with ProgressBars(enabled=not quiet) as bars:
            result = kmeans(
                features,
                args.k,
                exclude=exclude,
                cost="sqeuclidean" if args.euclidean else "cosine",
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
    left_out = "" if exclude is None else f" ({exclude.size} all-zero rows in no cluster)"
    print(
        f"{args.k} clusters of {n - (0 if exclude is None else exclude.size)} samples"
        f"{left_out}, objective {result.objective:.6g}, {result.n_iters} iterations ({state}) "
        f"-> {args.out}"
    )
    return 0


def _zero_rows(zero: np.ndarray, n: int, args: argparse.Namespace) -> np.ndarray | None:
    """The rows ``uotsel kmeans`` leaves out: the all-zero rows ``zero`` with
    ``--skip-zero-rows``, else none (spherical k-means then refuses them)."""
    if not zero.size:
        return None
    if args.skip_zero_rows:
        if zero.size == n:
            raise UsageError("--features: every row is all zeros; nothing to cluster")
        if args.k > n - zero.size:
            raise UsageError(
                f"--k: {args.k} clusters for only {n - zero.size} samples that are not all zeros"
            )
        return zero
    if not args.euclidean:
        raise UsageError(
            f"--features: row {zero[0]} is all zeros; spherical k-means needs a direction for "
            "every sample (--skip-zero-rows leaves all-zero rows, such as those of images "
            "uotsel-train extract could not read, in no cluster)"
        )
    return None


def cmd_demo(args: argparse.Namespace) -> int:

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
