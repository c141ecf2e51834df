"""What the demo (:mod:`uotsel_train.demo`) reports: the record it writes (``demo.json``), the
tables and claims it prints, and the curves of its runs.

The claims are computed from the paired differences (:mod:`uotsel_train.paired`) of the arms
in :data:`COMPARISONS`, each one separating one hypothesis:

- UOT classes - target only: does the selected pre-training data help at all?
- random classes - target only: does *any* labelled pre-training data of that size help?
- UOT classes - random classes: does *related* data help beyond more labelled data?
- UOT classes - least similar classes: related against unrelated data.
- UOT clusters, no labels - target only: does the selection help without labels (eq. 7)?
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from uotsel_train import paired

__all__ = ["COMPARISONS", "compare", "draw", "record", "report"]

COMPARISONS = (
    ("+ UOT classes", "target only"),
    ("+ random classes", "target only"),
    ("+ UOT classes", "+ random classes"),
    ("+ UOT classes", "+ least similar classes"),
    ("+ UOT clusters, no labels", "target only"),
)


def _name(arm: str) -> str:
    return arm.removeprefix("+ ")


def compare(top1: dict[str, list[list[float]]]) -> dict[str, dict[str, Any]]:
    """``"arm - other"`` -> the paired summary and its claim, for every comparison of
    :data:`COMPARISONS` whose arms are in ``top1`` (``arm -> [worlds][seeds]`` test top-1);
    each verdict at level 0.05 / the number of comparisons."""
    made = [(arm, other) for arm, other in COMPARISONS if arm in top1 and other in top1]
    out = {}
    for arm, other in made:
        diff = np.subtract(top1[arm], top1[other])
        d = paired.compare(_name(other), diff, level=paired.ALPHA / len(made))
        summary = d._asdict() | {"differences": d.differences.tolist()}
        out[f"{_name(arm)} - {_name(other)}"] = summary | {"claim": paired.claim(_name(arm), d)}
    return out


def describe(w: Any, k: int):
    """Functions of a class selection in the demo's world ``w``: names, how many on the
    target's domain, shapes, and one line saying all three."""
    from uotsel_train import synthetic

    def names(units) -> list[str]:
        return [w.pre.classes[u] for u in units]

    def on_domain(units) -> int:
        return sum(synthetic.class_domain(n) == w.domain for n in names(units))

    def shapes(units) -> int:
        return len({n.partition("/")[0] for n in names(units)})

    def line(units) -> str:
        return (
            f"{', '.join(names(units))} ({on_domain(units)} of {k} on {w.domain}; "
            f"{shapes(units)} distinct shapes)"
        )

    return names, on_domain, shapes, line


def _world_record(s: Any, outcome: Any) -> dict[str, Any]:
    from uotsel_train import synthetic

    w, sel = outcome.world, outcome.selections
    names, on_domain, shapes, _ = describe(w, s.top_k)
    kinds = {"uot": sel.uot, "least_similar": sel.least}

    def per_kind(fn):
        randoms = {seed: fn(u) for seed, u in sel.randoms.items()}
        return {**{k: fn(v) for k, v in kinds.items()}, "random": randoms}

    clusters = sel.clusters
    return {
        "data_seed": w.data_seed,
        "target_domain": w.domain,
        "pretrain_shapes": list(synthetic.SHAPES),
        "domains": list(synthetic.DOMAINS),
        "target_shapes": list(w.target.classes),
        "pretrain_images": len(w.pretrain),
        "target_train_images": len(w.target),
        "target_test_images": len(w.test),
        "pretrain_top1": outcome.pretrain_top1,
        "selected": per_kind(names) | {"uot_clusters": clusters and clusters["clusters"]},
        "on_target_domain": per_kind(on_domain)
        | {"uot_cluster_images": clusters and clusters["share_on_domain"]},
        "distinct_shapes": per_kind(shapes),
        "pretrain_images_per_arm": int(np.isin(w.pre.labels, sel.uot).sum()),
    }


def record(s: Any, outcomes: list[Any], seconds: float, folders: dict[str, str]) -> dict[str, Any]:
    """Everything demo.json holds; ``top1`` and ``mean_class_acc`` are ``arm ->
    [worlds][seeds]``; ``folders``: each arm's run folder name."""
    arms = list(outcomes[0].results)

    def table(key: str) -> dict[str, list[list[float]]]:
        return {arm: [[r[key] for r in o.results[arm]] for o in outcomes] for arm in arms}

    top1 = table("top1")
    runs = {
        arm: [f"world{ds}/seed{seed}/{folders[arm]}" for ds in s.data_seeds for seed in s.seeds]
        for arm in arms
    }
    return {
        "settings": dataclasses.asdict(s),
        "worlds": [_world_record(s, o) for o in outcomes],
        "arms": arms,
        "top1": top1,
        "mean_class_acc": table("mean_class_acc"),
        "mean_top1": {arm: float(np.mean(v)) for arm, v in top1.items()},
        "paired": compare(top1),
        "runs": runs,
        "seconds": seconds,
    }


def _arm_table(rec: dict[str, Any], log: Callable[[str], None]) -> None:
    s, worlds = rec["settings"], rec["worlds"]
    width = max(len(a) for a in rec["arms"])
    w0 = worlds[0]
    log(
        f"test top-1 on {w0['target_test_images']} target images per world "
        f"({w0['target_train_images']} training images, {s['finetune_epochs']} epochs; "
        f"{w0['pretrain_images_per_arm']} pre-training images in every arm that uses them), "
        f"mean over fine-tuning seeds {', '.join(map(str, s['seeds']))} (min-max):"
    )
    heads = [f"{w['target_domain']} ({w['data_seed']})" for w in worlds]
    log(f"{'':{width}}  " + "  ".join(f"{h:^19}" for h in heads))
    for arm in rec["arms"]:
        cells = [f"{np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})" for v in rec["top1"][arm]]
        log(f"{arm:{width}}  " + "  ".join(cells))


def _paired_table(rec: dict[str, Any], log: Callable[[str], None]) -> None:
    s = rec["settings"]
    n_w, n_s = len(s["data_seeds"]), len(s["seeds"])
    log(
        f"paired differences of test top-1 (same world, same seed; {n_w * n_s} pairs = "
        f"{n_w} world{'s' * (n_w > 1)} x {n_s} seed{'s' * (n_s > 1)}):"
    )
    width = max(len(k) for k in rec["paired"])
    log(
        f"{'':{width}}    mean  95% interval       min     max  positive  sign p  "
        f"mean per world ({', '.join(map(str, s['data_seeds']))})  verdict"
    )
    for key, d in rec["paired"].items():
        per_world = " ".join(f"{m:+.3f}" for m in d["world_means"])
        log(
            f"{key:{width}}  {d['mean']:+.3f}  {d['interval'][0]:+.3f} {d['interval'][1]:+.3f}"
            f"  {d['low']:+.3f}  {d['high']:+.3f}  {d['positive']:>3}/{d['n']:<3}  "
            f"{d['sign_p']:6.2g}  {per_world}  {d['verdict']}"
        )


def report(rec: dict[str, Any], log: Callable[[str], None] = print) -> None:
    """Print the arms' test top-1 per world, the paired differences and the claims."""
    log("")
    _arm_table(rec, log)
    log("")
    _paired_table(rec, log)
    log("")
    level = next(iter(rec["paired"].values()))["level"]
    log(
        f"claims (holds: the 95% interval of the mean above 0 and sign test p < {level:.2g}, "
        f"{paired.ALPHA} over {len(rec['paired'])} comparisons; another machine gives other "
        "digits):"
    )
    for d in rec["paired"].values():
        log(f"- {d['claim']}")
    s = rec["settings"]
    log(
        f"seeds: data {', '.join(map(str, s['data_seeds']))} (images, pre-training, k-means); "
        f"fine-tuning {', '.join(map(str, s['seeds']))} (heads, data order, augmentation, "
        "random draw)"
    )


def draw(out_dir: str, rec: dict[str, Any]) -> str:
    """``curves.png`` of every run beside demo.json, grouped by arm, when matplotlib is
    installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return ""
    from uotsel_train import plot

    path = os.path.join(out_dir, "curves.png")
    runs, names = [], []
    for arm, folders in rec["runs"].items():
        runs += [os.path.join(out_dir, f) for f in folders]
        names += [_name(arm)] * len(folders)
    plot.curves(runs, path, names=names)
    return path
