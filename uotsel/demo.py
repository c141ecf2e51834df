"""Reproduce the paper's Table 4 on the embedded class means (``uotsel demo``).

Recall = (ImageNet bird classes among the 100 classes selected for CUB-200) / 59, for Greedy-OT
with the l2 and the cosine cost and for UOT with the cosine cost, on supervised ResNet18 and on
self-supervised MoCo-v2 ResNet50 features.
"""

from __future__ import annotations

import sys
import time
from typing import Any, NamedTuple, TextIO

import numpy as np

from uotsel import embedded
from uotsel.selection import select

__all__ = ["PUBLISHED", "RecallRow", "recall", "recall_table", "run"]

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
    method: str
    cost: str
    backbone: str
    matches: int
    relevant: int
    published: int
    selected: np.ndarray


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
                )
            )
    return rows


def run(top: int = 15, out: TextIO | None = None) -> list[RecallRow]:
    """Print the Table 4 comparison and the top ImageNet classes UOT selects for CUB."""
    out = sys.stdout if out is None else out
    start = time.perf_counter()
    rows = recall_table()
    elapsed = time.perf_counter() - start
    names = embedded.imagenet_classes()["name"]
    print(
        f"Recall of ImageNet bird classes among the top {TOP_K} selected for CUB-200 "
        "(paper, Table 4)",
        file=out,
    )
    print(f"{'method':<10} {'cost':<7} {'backbone':<20} {'uotsel':>13} {'paper':>13}", file=out)
    for r in rows:
        ours = f"{100 * r.matches / r.relevant:5.2f} ({r.matches}/{r.relevant})"
        paper = f"{100 * r.published / r.relevant:5.2f} ({r.published}/{r.relevant})"
        mark = "" if r.matches == r.published else "  <- differs"
        print(
            f"{r.method:<10} {r.cost:<7} {BACKBONE_LABELS[r.backbone]:<20} {ours:>13} "
            f"{paper:>13}{mark}",
            file=out,
        )
    uot = next(r for r in rows if r.method == "UOT" and r.backbone == "resnet18_supervised")
    print(
        f"\nTop {top} ImageNet classes selected by UOT for CUB-200 (supervised ResNet18):", file=out
    )
    for rank_, unit in enumerate(uot.selected[:top], 1):
        print(f"{rank_:3d}. {names[unit]} (class {unit})", file=out)
    print(f"\n6 selections in {elapsed:.1f} s (including compilation).", file=out)
    return rows
