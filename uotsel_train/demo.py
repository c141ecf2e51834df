"""``uotsel-train demo``: the whole method on CPU in a few minutes, on generated images.

The world (:mod:`uotsel_train.synthetic`): a pre-training set that labels every pair of 8
shapes and 5 *domains* (a background texture and a colour range), and a small target task of 5
*other* shapes, never drawn in pre-training, on one of those domains. No target class is a
pre-training class; what the target shares with 8 of the 40 pre-training classes is its domain
only. Every shape and texture is mirror-symmetric, so the training transform's flip and crop
keep every image in its own class and domain.

1. Pre-trains the tiny ResNet on the pre-training set.
2. Computes the class means of both sets under that backbone and ranks the pre-training
   classes with ``uotsel.select`` (UOT, the paper's settings).
3. Selects, with the same number of classes (``top_k``) and so the same number of images:
   the top of the UOT ranking; the bottom of it (the least similar classes); a random draw
   (a new one for every seed). Without labels: spherical k-means clusters of the pre-training
   features, ranked with UOT, taken from the top until they hold as many images.
4. Fine-tunes from the pre-trained backbone with the same schedule for every arm, once per
   seed: on the target set alone; with each class selection (eq. 6, labelled); with the
   cluster images, labels unused (eq. 7).
5. Prints the test accuracies per seed and on average, and how often UOT's classes did better
   than the random and the least similar ones; writes ``demo.json``.

:func:`domain_gap` measures how different the domains are for the skill the target needs: a
classifier of the pre-training shapes trained on one domain, tested on every domain.

Nothing is tuned to flatter a method: every arm has the same schedule and the same number of
pre-training images, the seeds are stated, and what is printed is what was measured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

__all__ = ["ARMS", "TARGET_DOMAINS", "DemoSettings", "domain_gap", "run", "target_domain"]

# The domains a target task is drawn on, cycled by the data seed: the textured ones ("plain"
# is a pre-training domain only).
TARGET_DOMAINS = ("checks", "stripes", "dots", "noise")

# arm name -> run folder
ARMS = {
    "target only": "target-only",
    "+ UOT classes": "uot-classes",
    "+ random classes": "random-classes",
    "+ least similar classes": "least-similar-classes",
    "+ UOT clusters, no labels": "uot-clusters-unlabelled",
}


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """The demonstration's sizes and schedules (``quick`` shrinks them for tests)."""

    data_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    top_k: int = 8
    image_size: int = 32
    pretrain_per_class: int = 100
    target_per_class: int = 8
    test_per_class: int = 200
    pretrain_test_per_class: int = 10
    pretrain_epochs: int = 30
    finetune_epochs: int = 30
    lam: float = 1.0
    pretrain_lr: float = 0.05
    finetune_lr: float = 0.03
    unlabelled: bool = True  # the eq. 7 arm
    domain: str = ""  # the target's domain; "" : TARGET_DOMAINS[data_seed % 4]

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(
            seeds=(0,),
            pretrain_per_class=12,
            test_per_class=10,
            pretrain_test_per_class=2,
            pretrain_epochs=2,
            finetune_epochs=3,
            unlabelled=False,
        )


def target_domain(settings: DemoSettings) -> str:
    """The domain of the target task of ``settings``."""
    return settings.domain or TARGET_DOMAINS[settings.data_seed % len(TARGET_DOMAINS)]


_COMMON = {"arch": "tiny", "crop_scale": "0.35,1", "workers": 0, "progress": False}


def _config(**settings: Any) -> Any:
    from uotsel_train import config

    cfg = config.override(
        config.default(), [f"{k}={v}" for k, v in {**_COMMON, **settings}.items()]
    )
    config.validate(cfg, check_files=False)
    return cfg


def _inputs(target: Any, test: Any, pretrain: Any = None, indices: Any = None, heads: int = 0):
    from uotsel_train import input_pipeline

    return input_pipeline.Inputs(
        target=target,
        train_indices=np.arange(len(target)),
        val_indices=np.zeros(0, np.int64),
        test=test,
        pretrain=pretrain,
        pretrain_indices=indices,
        num_source_classes=heads,
    )


def _train(
    source: Any,
    tests: dict[str, Any],
    num_classes: int,
    folder: str,
    *,
    epochs: int,
    lr: float,
    seed: int,
    size: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Train the tiny ResNet from scratch on the classes of ``source``; return its backbone
    variables and its top-1 on each of ``tests`` (the first one is also in the run's
    ``metrics.jsonl``)."""
    from uotsel_train import evaluate, initialise, models, train

    cfg = _config(
        objective="vanilla",
        lr=lr,
        epochs=epochs,
        milestones=max(1, epochs * 2 // 3),
        batch_size=96,
        eval_every=epochs,
        checkpoint_every=epochs,
        seed=seed,
        image_size=size,
    )
    first, *others = tests
    fresh = initialise.fresh(models.backbone("tiny"), seed, size)
    out = train.fit(cfg, _inputs(source, tests[first]), fresh, folder, log=lambda line: None)
    variables = {"params": out.state.params, "batch_stats": out.state.batch_stats}
    top1 = {first: out.last["test_top1"]}
    predict = evaluate.predictor(train.build_model(cfg, num_classes, 0))
    for name in others:
        top1[name] = evaluate.accuracy(predict, variables, tests[name], image_size=size)["top1"]
    params, stats = out.state.params, out.state.batch_stats
    return {"params": params["backbone"], "batch_stats": stats["backbone"]}, top1


def _finetune(
    s: DemoSettings,
    objective: str,
    seed: int,
    backbone: dict[str, Any],
    target: Any,
    test: Any,
    pretrain: Any,
    indices: np.ndarray | None,
    folder: str,
) -> dict[str, float]:
    """Fine-tune from ``backbone`` (fresh heads) with ``objective`` on ``target`` (+ the
    pre-training images at ``indices``); return the test top-1 and mean per-class accuracy."""
    from uotsel_train import train

    e = s.finetune_epochs
    cfg = _config(
        objective=objective,
        lr=s.finetune_lr,
        lam=s.lam,
        epochs=e,
        milestones=f"{max(1, e * 3 // 5)},{max(1, e * 4 // 5)}",
        batch_size=10,
        source_batch_size=30,
        eval_every=e,
        checkpoint_every=e,
        seed=seed,
        image_size=s.image_size,
    )
    inputs = _inputs(
        target,
        test,
        pretrain if indices is not None else None,
        indices,
        len(pretrain.classes) if indices is not None else 0,
    )
    out = train.fit(cfg, inputs, backbone, folder, log=lambda line: None)
    return {"top1": out.last["test_top1"], "mean_class_acc": out.last["test_mean_class_acc"]}


@contextlib.contextmanager
def _compilation_cache() -> Iterator[None]:
    """Every run of the demo compiles the same few steps; a persistent compilation cache in a
    temporary folder compiles each once (unless the caller set up a cache of their own). The
    previous settings are restored afterwards."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir:
        yield
        return
    names = {
        "jax_compilation_cache_dir": None,
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    before = {name: getattr(jax.config, name) for name in names}
    with tempfile.TemporaryDirectory(prefix="uotsel-demo-xla-") as folder:
        try:
            for name, value in names.items():
                jax.config.update(name, folder if value is None else value)
            compilation_cache.reset_cache()
            yield
        finally:
            for name, value in before.items():
                jax.config.update(name, value)
            compilation_cache.reset_cache()


def _first_images(ranking: np.ndarray, unit_ids: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` sample indices taken unit by unit down ``ranking`` (the last unit in part, a
    seeded subset of it), ascending."""
    position = np.empty(len(ranking), np.int64)
    position[ranking] = np.arange(len(ranking))
    tie = np.random.default_rng([seed, 3]).random(len(unit_ids))
    order = np.lexsort((tie, position[unit_ids]))
    return np.sort(order[:count])


def run(
    out_dir: str,
    settings: DemoSettings = DemoSettings(),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demonstration, writing every run under ``out_dir``, the class means to
    ``out_dir/means.npz`` and the figures to ``out_dir/demo.json``; returns that record."""
    with _compilation_cache():
        return _run(out_dir, settings, log)


class _World(NamedTuple):
    """The drawn data sets (as sources) and the target's domain."""

    pre: Any  # synthetic.Drawn of the pre-training set (with ``domain``)
    pretrain: Any
    target: Any
    test: Any
    held_out: Any
    domain: str


def _world(s: DemoSettings, log: Callable[[str], None]) -> _World:
    from uotsel_train import data, synthetic

    size, domain = s.image_size, target_domain(s)
    pre = synthetic.pretraining_set(s.pretrain_per_class, s.data_seed, size)
    target = synthetic.target_set(s.target_per_class, s.data_seed, size, domain=domain)
    test = synthetic.target_set(s.test_per_class, s.data_seed + 1000, size, domain=domain)
    held = synthetic.pretraining_set(s.pretrain_test_per_class, s.data_seed + 1000, size)
    world = _World(
        pre,
        data.ArraySource(pre.images, pre.labels, pre.classes),
        data.ArraySource(target.images, target.labels, target.classes),
        data.ArraySource(test.images, test.labels, test.classes),
        data.ArraySource(held.images, held.labels, held.classes),
        domain,
    )
    log(
        f"world (data seed {s.data_seed}): pre-training {len(world.pretrain)} images in "
        f"{len(pre.classes)} classes ({len(synthetic.SHAPES)} shapes x "
        f"{len(synthetic.DOMAINS)} domains: {', '.join(synthetic.DOMAINS)})"
    )
    log(
        f"target: {len(target.classes)} new shapes ({', '.join(target.classes)}) on {domain}, "
        f"{len(world.target)} training and {len(world.test)} test images; no target class is "
        f"a pre-training class, {len(synthetic.SHAPES)} pre-training classes share its domain"
    )
    return world


class _Selections(NamedTuple):
    uot: np.ndarray  # [k] class ids, best first
    least: np.ndarray  # [k] the bottom of the UOT ranking
    randoms: dict[int, np.ndarray]  # fine-tuning seed -> [k] class ids
    clusters: dict[str, Any] | None  # images of the UOT-ranked clusters, or None


def _describe(w: _World, k: int):
    """Functions of a class selection: names, how many on the target's domain, shapes, and
    one line saying all three."""
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


def _select(s: DemoSettings, w: _World, backbone: Any, out_dir: str, log) -> _Selections:
    """Class means under ``backbone``; UOT, least similar, random class selections and, with
    ``s.unlabelled``, the images of the UOT-ranked k-means clusters."""
    import uotsel
    from uotsel_train import extract, synthetic

    features = {"image_size": s.image_size, "resize": round(s.image_size * 256 / 224)}
    variables = {"backbone": backbone}
    pre_out = extract.extract(
        w.pretrain, variables, "tiny", keep_features=True, workers=0, **features
    )
    target_means = extract.extract(w.target, variables, "tiny", workers=0, **features).means
    np.savez(
        os.path.join(out_dir, "means.npz"),
        pretrain=pre_out.means,
        target=target_means,
        pretrain_classes=np.asarray(w.pre.classes),
        target_classes=np.asarray(w.target.classes),
    )
    k = s.top_k
    uot = uotsel.select(pre_out.means, target_means, top_k=k)
    randoms = {
        seed: uotsel.select(
            pre_out.means, target_means, strategy="random", top_k=k, seed=1000 * s.data_seed + seed
        ).selected
        for seed in s.seeds
    }
    line = _describe(w, k)[3]
    log(f"UOT selects {line(uot.selected)}")
    log(f"least similar (bottom of the UOT ranking): {line(uot.ranking[::-1][:k])}")
    for seed, units in randoms.items():
        log(f"random (seed {seed}) selects {line(units)}")
    clusters = None
    if s.unlabelled:
        # Without labels: spherical k-means clusters of the per-image features (twice as many
        # clusters as classes, as the paper's 2000 for ImageNet's 1000 classes), each
        # represented by its members' mean feature (section 3.2), ranked with UOT and taken
        # from the top until they hold as many images as a class arm.
        count = int(np.isin(w.pre.labels, uot.selected).sum())
        km = uotsel.kmeans(pre_out.features, 2 * len(w.pre.classes), seed=s.data_seed)
        ranked = uotsel.select(km.means, target_means, top_k=None)
        picked = _first_images(ranked.ranking, km.assignment, count, s.data_seed)
        used = [int(c) for c in ranked.ranking if np.any(km.assignment[picked] == c)]
        share = float(np.mean(w.pre.domain[picked] == synthetic.DOMAINS.index(w.domain)))
        clusters = {"indices": picked, "clusters": used, "share_on_domain": share}
        part = np.sum(km.assignment == used[-1]) > np.sum(km.assignment[picked] == used[-1])
        log(
            f"UOT ranks {2 * len(w.pre.classes)} k-means clusters (labels unused); the top "
            f"{len(used)}{' (the last in part)' if part else ''} give {picked.size} images, "
            f"{share:.0%} of them on {w.domain}"
        )
    return _Selections(uot.selected, uot.ranking[::-1][:k], randoms, clusters)


def _arms(w: _World, sel: _Selections) -> dict[str, tuple[str, Callable]]:
    """Arm name -> (objective, seed -> the pre-training images it trains on, or None)."""

    def images_of(units) -> np.ndarray:
        return np.flatnonzero(np.isin(w.pre.labels, np.asarray(units)))

    arms = {
        "target only": ("vanilla", lambda seed: None),
        "+ UOT classes": ("labelled", lambda seed: images_of(sel.uot)),
        "+ random classes": ("labelled", lambda seed: images_of(sel.randoms[seed])),
        "+ least similar classes": ("labelled", lambda seed: images_of(sel.least)),
    }
    if sel.clusters is not None:
        arms["+ UOT clusters, no labels"] = ("unlabelled", lambda seed: sel.clusters["indices"])
    return arms


def _versus(top1: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """UOT classes minus each other class arm, per seed, on average, and seeds better/worse."""
    uot_top1 = np.asarray(top1["+ UOT classes"])
    versus = {}
    for other in ("target only", "+ random classes", "+ least similar classes"):
        diff = uot_top1 - np.asarray(top1[other])
        versus[other] = {
            "differences": diff.tolist(),
            "mean_difference": float(diff.mean()),
            "seeds_better": int(np.sum(diff > 0)),
            "seeds_worse": int(np.sum(diff < 0)),
        }
    return versus


def _record(s, w: _World, sel: _Selections, pretrain_top1, results, seconds) -> dict[str, Any]:
    """Everything demo.json holds."""
    from uotsel_train import synthetic

    names, on_domain, shapes, _ = _describe(w, s.top_k)
    top1 = {arm: [r["top1"] for r in rs] for arm, rs in results.items()}
    kinds = {"uot": sel.uot, "least_similar": sel.least}

    def per_kind(fn):
        return {
            **{k: fn(v) for k, v in kinds.items()},
            "random": {seed: fn(u) for seed, u in sel.randoms.items()},
        }

    clusters = sel.clusters
    return {
        "settings": dataclasses.asdict(s),
        "world": {
            "pretrain_shapes": list(synthetic.SHAPES),
            "domains": list(synthetic.DOMAINS),
            "target_shapes": list(w.target.classes),
            "target_domain": w.domain,
            "pretrain_images": len(w.pretrain),
            "target_train_images": len(w.target),
            "target_test_images": len(w.test),
        },
        "pretrain_top1": pretrain_top1,
        "selected": per_kind(names) | {"uot_clusters": clusters and clusters["clusters"]},
        "on_target_domain": per_kind(on_domain)
        | {"uot_cluster_images": clusters and clusters["share_on_domain"]},
        "distinct_shapes": per_kind(shapes),
        "pretrain_images_per_arm": int(np.isin(w.pre.labels, sel.uot).sum()),
        "top1": top1,
        "mean_class_acc": {arm: [r["mean_class_acc"] for r in rs] for arm, rs in results.items()},
        "mean_top1": {arm: float(np.mean(v)) for arm, v in top1.items()},
        "uot_classes_versus": _versus(top1),
        "runs": {arm: [f"seed{seed}/{ARMS[arm]}" for seed in s.seeds] for arm in results},
        "seconds": seconds,
    }


def _table(s: DemoSettings, w: _World, record: dict, log: Callable[[str], None]) -> None:
    top1 = record["top1"]
    width = max(len(a) for a in top1)
    log("")
    log(
        f"test top-1 on {len(w.test)} target images ({len(w.target)} training images, "
        f"{s.finetune_epochs} epochs; {record['pretrain_images_per_arm']} pre-training images "
        "in every arm that uses them):"
    )
    log(f"{'':{width}}  {'  '.join(f'seed {x}' for x in s.seeds)}    mean")
    for arm, accs in top1.items():
        cells = "  ".join(f"{a:6.3f}" for a in accs)
        log(f"{arm:{width}}  {cells}  {np.mean(accs):6.3f}")
    for other, v in record["uot_classes_versus"].items():
        log(
            f"UOT classes - {other.removeprefix('+ ')}: {v['mean_difference']:+.3f} on average; "
            f"better on {v['seeds_better']}, worse on {v['seeds_worse']} of {len(s.seeds)} seeds"
        )
    log(
        f"seeds: data {s.data_seed} (images, pre-training, k-means); fine-tuning "
        f"{', '.join(map(str, s.seeds))} (heads, data order, augmentation, random draw)"
    )


def _run(out_dir: str, s: DemoSettings, log: Callable[[str], None]) -> dict[str, Any]:
    from uotsel.io import write_json

    start = time.perf_counter()
    w = _world(s, log)
    log(f"pre-training the tiny ResNet for {s.pretrain_epochs} epochs ...")
    backbone, accuracy = _train(
        w.pretrain,
        {"held-out": w.held_out},
        len(w.pre.classes),
        os.path.join(out_dir, "pretrain"),
        epochs=s.pretrain_epochs,
        lr=s.pretrain_lr,
        seed=s.data_seed,
        size=s.image_size,
    )
    log(f"pre-trained: top-1 {accuracy['held-out']:.3f} on {len(w.held_out)} held-out images")
    sel = _select(s, w, backbone, out_dir, log)
    arms = _arms(w, sel)
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    for seed in s.seeds:  # the same schedule for every arm
        for arm, (objective, chosen) in arms.items():
            folder = os.path.join(out_dir, f"seed{seed}", ARMS[arm])
            got = _finetune(
                s, objective, seed, backbone, w.target, w.test, w.pretrain, chosen(seed), folder
            )
            results[arm].append(got)
            log(f"seed {seed}: {arm}: test top-1 {got['top1']:.3f}")
    record = _record(s, w, sel, accuracy["held-out"], results, time.perf_counter() - start)
    write_json(os.path.join(out_dir, "demo.json"), record)
    _table(s, w, record, log)
    log(f"({record['seconds']:.0f} s; runs, means.npz and demo.json in {out_dir})")
    picture = _draw(out_dir, s.seeds[0], list(arms))
    if picture:
        log(f"curves of the seed {s.seeds[0]} runs: {picture}")
    return record


def _draw(out_dir: str, seed: int, arms: list[str]) -> str:
    """``curves.png`` of one seed's runs beside demo.json, when matplotlib is installed."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return ""
    from uotsel_train import plot

    path = os.path.join(out_dir, "curves.png")
    runs = [os.path.join(out_dir, f"seed{seed}", ARMS[arm]) for arm in arms]
    plot.curves(runs, path, names=[arm.removeprefix("+ ") for arm in arms])
    return path


def domain_gap(
    out_dir: str,
    *,
    per_class: int = 100,
    test_per_class: int = 50,
    epochs: int = 20,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """How far apart the domains are: for every domain, a tiny ResNet trained from scratch to
    tell the pre-training shapes apart on that domain alone (``per_class`` images per shape),
    tested on every domain (``test_per_class`` per shape). Returns (and writes to
    ``out_dir/domain_gap.json``) ``{trained on: {tested on: top-1}}``."""
    from uotsel.io import write_json
    from uotsel_train import data, synthetic

    def shapes_on(domain: str, count: int, offset: int) -> Any:
        drawn = synthetic.pretraining_set(count, seed + offset, domains=(domain,))
        return data.ArraySource(drawn.images, drawn.labels, list(synthetic.SHAPES))

    gap: dict[str, dict[str, float]] = {}
    with _compilation_cache():
        tests = {d: shapes_on(d, test_per_class, 1000) for d in synthetic.DOMAINS}
        for domain in synthetic.DOMAINS:
            _, top1 = _train(
                shapes_on(domain, per_class, 0),
                {domain: tests[domain], **tests},
                len(synthetic.SHAPES),
                os.path.join(out_dir, f"trained-on-{domain}"),
                epochs=epochs,
                lr=0.05,
                seed=seed,
                size=32,
            )
            gap[domain] = {d: top1[d] for d in synthetic.DOMAINS}
            cells = "  ".join(f"{d} {v:.3f}" for d, v in gap[domain].items())
            log(f"trained on {domain}: {cells}")
    write_json(os.path.join(out_dir, "domain_gap.json"), {"seed": seed, "top1": gap})
    return gap
