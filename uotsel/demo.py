"""Reproduce the paper's Table 4 on the embedded class means (``uotsel demo``).

Recall = (ImageNet bird classes among the 100 classes selected for CUB-200) / 59, for Greedy-OT
with the l2 and the cosine cost and for UOT with the cosine cost, on supervised ResNet18 and on
self-supervised MoCo-v2 ResNet50 features.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, NamedTuple, TextIO

import numpy as np

from uotsel import cache, embedded
from uotsel.selection import Selection, select

__all__ = ["PUBLISHED", "RecallRow", "figure_path", "recall", "recall_table", "run", "save"]

TOP_K = 100
BACKBONE_LABELS = {
    "resnet18_supervised": "supervised ResNet18",
    "mocov2_resnet50": "MoCo-v2 ResNet50",
}
# (method label, strategy, cost) -> published matches out of 59, per backbone (Table 4).
PUBLISHED = {
    ("Greedy-OT", "greedy_ot", "l2"): {"resnet18_supervised": 51, "mocov2_resnet50": 10},
    ("Greedy-OT", "greedy_ot", "cosine"): {"resnet18_supervised": 56, "mocov2_resnet50": 23},
    ("UOT", "uot", "cosine"): {"resnet18_supervised": 58, "mocov2_resnet50": 55},
}


class RecallRow(NamedTuple):
    """One cell of Table 4: ``matches`` of the ``relevant`` classes among those selected."""

    method: str
    cost: str
    backbone: str
    matches: int
    relevant: int
    published: int
    selected: np.ndarray
    selection: Selection


def recall(
    backbone: str,
    strategy: str = "uot",
    *,
    target: str = "cub",
    concept: str = "bird",
    top_k: int = TOP_K,
    **settings: Any,
) -> tuple[int, int]:
    """How many of the ``top_k`` ImageNet classes that ``strategy`` selects for ``target``
    (embedded class means of ``backbone``) belong to ``concept``, and how many ImageNet
    classes do: ``(matches, relevant)``; the recall is their ratio.

    Example:
      >>> from uotsel import demo
      >>> demo.recall("resnet18_supervised", eps_c=0.01)  # paper, Table 4: 58/59
      (58, 59)
    """
    relevant = embedded.imagenet_classes()["concept"] == concept
    source = embedded.load(backbone, "imagenet").means
    tgt = embedded.load(backbone, target).means
    sel = select(source, tgt, strategy=strategy, top_k=top_k, **settings)
    return int(relevant[sel.selected].sum()), int(relevant.sum())


def recall_table(target: str = "cub", concept: str = "bird") -> list[RecallRow]:
    """Select ``TOP_K`` ImageNet classes for ``target`` with each Table 4 method and count
    how many belong to ``concept``."""
    relevant = embedded.imagenet_classes()["concept"] == concept
    rows = []
    for backbone in BACKBONE_LABELS:
        source = embedded.load(backbone, "imagenet").means
        tgt = embedded.load(backbone, target).means
        for (method, strategy, cost), published in PUBLISHED.items():
            # The cost is always given: greedy_ot's default (l2) is one of the two rows.
            sel = select(source, tgt, strategy=strategy, top_k=TOP_K, cost=cost)
            rows.append(
                RecallRow(
                    method,
                    cost,
                    backbone,
                    int(relevant[sel.selected].sum()),
                    int(relevant.sum()),
                    published[backbone],
                    sel.selected,
                    sel,
                )
            )
    return rows


_COMPILATIONS = cache.Compilations()


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    """Rows of cells as aligned text columns (columns in ``right`` right-aligned)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header)] + [line(row) for row in rows]


def run(top: int = 15, out: TextIO | None = None) -> list[RecallRow]:
    """Print the Table 4 comparison and the top ImageNet classes UOT selects for CUB."""
    out = sys.stdout if out is None else out
    _COMPILATIONS.register()
    compiled = _COMPILATIONS.count()
    start = time.perf_counter()
    rows = recall_table()
    elapsed = time.perf_counter() - start
    compiled = _COMPILATIONS.count() - compiled
    names = embedded.imagenet_classes()["name"]
    print(
        f"Recall of ImageNet bird classes among the top {TOP_K} selected for CUB-200 "
        "(paper, Table 4)",
        file=out,
    )

    def recall_cell(matches: int, relevant: int) -> str:
        return f"{100 * matches / relevant:.2f} ({matches}/{relevant})"

    cells = [
        [
            r.method,
            r.cost,
            BACKBONE_LABELS[r.backbone],
            recall_cell(r.matches, r.relevant),
            recall_cell(r.published, r.relevant),
            "" if r.matches == r.published else "<- differs",
        ]
        for r in rows
    ]
    header = ["method", "cost", "backbone", "uotsel", "paper", ""]
    for line in _table(header, cells, right={3, 4}):
        print(line, file=out)
    uot = next(r for r in rows if r.method == "UOT" and r.backbone == "resnet18_supervised")
    if top > 0:
        print(
            f"\nTop {top} ImageNet classes selected by UOT for CUB-200 (supervised ResNet18):",
            file=out,
        )
        width = len(str(top))
        for rank_, unit in enumerate(uot.selected[:top], 1):
            print(f"{rank_:>{width}}. {names[unit]} (class {unit})", file=out)
    note = " (including compilation)" if compiled > 0 else ""
    print(f"\n{len(rows)} selections in {elapsed:.1f} s{note}.", file=out)
    return rows


def figure_path(path: str) -> str:
    """Where the figure of a selection file ``path`` goes: beside it, ``.png`` for ``.json``."""
    return os.path.splitext(path)[0] + ".png"


def save(outputs: Any, rows: list[RecallRow], version: str, title: str) -> None:
    """Write the UOT selection for CUB-200 on supervised ResNet18 features (the paper's main
    cell) as a selection file, and its picture (:mod:`uotsel.plot`), into ``outputs`` (a
    :class:`uotsel.outputs.Outputs` holding ``--out`` and ``--out figure``)."""
    from uotsel import io, plot, selection_file
    from uotsel.plan import selection_mass

    row = next(r for r in rows if r.method == "UOT" and r.backbone == "resnet18_supervised")
    source = io.read_units(f"{embedded.PREFIX}{row.backbone}/imagenet", "source")
    target = io.read_units(f"{embedded.PREFIX}{row.backbone}/cub", "target")
    mass = selection_mass(row.selection, source.means, target.means)
    record = selection_file.selection_record(row.selection, source, target, version, mass)
    outputs.write("--out", selection_file.write_selection, record)
    data = plot.check_record(record, "demo", "--out")
    outputs.write("--out figure", plot.write_png, data, title)
