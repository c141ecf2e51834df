"""Grid search over learning rate, weight decay and lambda, several seeds each, as the paper
chose its settings; the choice is made on a validation split, never on the test set unless asked.

Every combination runs once per seed in ``out_dir/lr<..>_wd<..>_lam<..>/seed<N>``. With
``select_on="val"`` (the default) the target training set loses ``val_fraction`` of every class
(seeded by ``subset_seed``, the same samples for every run); combinations are ranked by the mean
over seeds of the last validation top-1, and the test top-1 of the chosen combination is reported
beside it. ``select_on="test"`` ranks by test top-1 instead: the protocol of papers that report
the best test accuracy of a search, an optimistic figure.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from uotsel.io import write_json
from uotsel_train import config, initialise, input_pipeline, objectives, train

__all__ = ["AXES", "search"]

AXES = ("lr", "weight_decay", "lam")


def _folder(out_dir: str, point: dict[str, float], seed: int) -> str:
    name = f"lr{point['lr']:g}_wd{point['weight_decay']:g}_lam{point['lam']:g}"
    return os.path.join(out_dir, name, f"seed{seed}")


def search(
    base: Any,
    values: dict[str, Sequence[float]],
    seeds: Sequence[int],
    out_dir: str,
    *,
    select_on: str = "val",
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the grid ``values`` (a list per key of :data:`AXES`; missing keys keep ``base``'s
    value) over ``seeds``; write and return ``out_dir/grid.json``'s record.

    Raises:
      ValueError: ``select_on`` unknown, or the split it needs absent (``val_fraction`` 0 or
        no test set).
    """
    if select_on not in ("val", "test"):
        raise ValueError(f"select_on: unknown {select_on!r}; valid: val, test")
    if select_on == "val" and not base.val_fraction:
        raise ValueError("val_fraction: the grid selects on a validation split; set it > 0")
    if select_on == "test" and not base.test:
        raise ValueError("test: selecting on test accuracy needs a test set")
    axes = {k: list(values.get(k) or [base[k]]) for k in AXES}
    inputs = input_pipeline.load_inputs(base)
    keeps_head = objectives.get(base.objective).pretrained_head
    backbone = initialise.load_backbone(base.weights, with_head=keeps_head)
    rows = []
    for combo in itertools.product(*axes.values()):
        point = dict(zip(AXES, combo, strict=True))
        runs = []
        for seed in seeds:
            cfg = config.override(base, [f"{k}={v!r}" for k, v in point.items()] + [f"seed={seed}"])
            config.validate(cfg, check_files=False)
            out = train.fit(
                cfg,
                inputs,
                backbone,
                _folder(out_dir, point, seed),
                resume=resume,
                log=lambda line: None,
            )
            runs.append(out.last or {})
        row = {**point, "seeds": list(seeds)}
        for key in ("val_top1", "test_top1"):
            got = [r[key] for r in runs if key in r]
            if got:
                row |= {key: got, f"{key}_mean": float(np.mean(got))}
        rows.append(row)
        log(
            " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
        )
    chosen = max(rows, key=lambda r: r[f"{select_on}_top1_mean"])
    record = {
        "config": config.to_dict(base),
        "select_on": select_on,
        "results": rows,
        "chosen": chosen,
    }
    write_json(os.path.join(out_dir, "grid.json"), record)
    return record
