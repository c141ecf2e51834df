"""``uotsel-train demo``: the whole method on CPU in a few minutes, on generated images, as an
experiment whose claims are stated with their spread.

The world (:mod:`uotsel_train.synthetic`): a pre-training set that labels every pair of 8
shapes and 5 *domains* (a background texture and a colour range), and a small target task of 5
*other* shapes, never drawn in pre-training, on one of those domains. No target class is a
pre-training class; what the target shares with 8 of the 40 pre-training classes is its domain
only. Every shape and texture is mirror-symmetric, so the training transform's flip and crop
keep every image in its own class and domain. Each data seed draws one world (its images,
and the target's domain, cycled through :data:`TARGET_DOMAINS`).

In every world:

1. Pre-trains the tiny ResNet on the pre-training set.
2. Computes the class means of both sets under that backbone and ranks the pre-training
   classes with ``uotsel.select`` (UOT, the paper's settings).
3. Selects, with the same number of classes (``top_k``) and so the same number of images:
   the top of the UOT ranking; the bottom of it (the least similar classes); a random draw
   of one class per shape on random domains (a new one for every seed). With ``unlabelled``:
   spherical k-means clusters of the pre-training features, ranked with UOT, taken from the
   top until they hold as many images.
4. Fine-tunes from the pre-trained backbone with the same schedule for every arm, once per
   fine-tuning seed: on the target set alone; with each class selection (eq. 6, labelled);
   with the cluster images, labels unused (eq. 7).

Then it compares UOT's classes with every other arm pair by pair (same world, same seed;
:mod:`uotsel_train.paired`), prints the paired differences with their spread and the claims
that hold beyond it, and writes ``demo.json`` and ``curves.png``
(:mod:`uotsel_train.demo_report`).

Nothing is tuned to flatter a method: every arm has the same schedule and the same number of
pre-training images, the seeds are stated, and what is printed is what was measured.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from uotsel_train import demo_report
from uotsel_train.demo_runs import Schedule, compilation_cache, domain_gap, finetune, pretrain

__all__ = [
    "ARMS",
    "TARGET_DOMAINS",
    "DemoSettings",
    "domain_gap",
    "progress_total",
    "run",
    "target_domain",
]

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
UOT_ARM = "+ UOT classes"
PRETRAIN_BATCH = 96


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """The demonstration's worlds, seeds, sizes and schedules (``quick`` shrinks them for
    tests)."""

    data_seeds: tuple[int, ...] = (0, 1, 2, 3)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    top_k: int = 8
    image_size: int = 32
    pretrain_per_class: int = 50
    target_per_class: int = 8
    test_per_class: int = 200
    pretrain_test_per_class: int = 10
    pretrain_epochs: int = 20
    finetune_epochs: int = 15
    evaluations: int = 3  # test evaluations per fine-tuning run, evenly spaced
    lam: float = 1.0
    pretrain_lr: float = 0.05
    finetune_lr: float = 0.03
    unlabelled: bool = False  # the eq. 7 arm
    domain: str = ""  # the target's domain in every world; "" : cycled by the data seed

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(
            data_seeds=(0,),
            seeds=(0,),
            pretrain_per_class=12,
            test_per_class=10,
            pretrain_test_per_class=2,
            pretrain_epochs=2,
            finetune_epochs=3,
        )

    def schedule(self) -> Schedule:
        return Schedule(
            self.finetune_epochs, self.evaluations, self.finetune_lr, self.lam, self.image_size
        )


def target_domain(data_seed: int, domain: str = "") -> str:
    """The domain of the target task of world ``data_seed`` (``domain`` when given)."""
    return domain or TARGET_DOMAINS[data_seed % len(TARGET_DOMAINS)]


def arm_names(s: DemoSettings) -> list[str]:
    """The arms ``s`` runs, in order."""
    return [a for a in ARMS if s.unlabelled or a != "+ UOT clusters, no labels"]


def _images_per_epoch(s: DemoSettings) -> tuple[int, dict[str, int]]:
    """Training images per epoch: of pre-training, and of fine-tuning in each arm."""
    sched = s.schedule()
    from uotsel_train import synthetic

    classes = len(synthetic.SHAPES) * len(synthetic.DOMAINS)
    pre = s.pretrain_per_class * classes // PRETRAIN_BATCH * PRETRAIN_BATCH
    steps = s.target_per_class * len(synthetic.TARGET_SHAPES) // sched.batch_size
    arms = {
        arm: steps * (sched.batch_size + (sched.source_batch_size if arm != "target only" else 0))
        for arm in arm_names(s)
    }
    return pre, arms


def progress_total(s: DemoSettings) -> int:
    """The training images of the whole demo (every world, seed, arm and epoch): the progress
    bar's total."""
    pre, arms = _images_per_epoch(s)
    per_world = s.pretrain_epochs * pre + len(s.seeds) * s.finetune_epochs * sum(arms.values())
    return len(s.data_seeds) * per_world


def _first_images(ranking: np.ndarray, unit_ids: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` sample indices taken unit by unit down ``ranking`` (the last unit in part, a
    seeded subset of it), ascending."""
    position = np.empty(len(ranking), np.int64)
    position[ranking] = np.arange(len(ranking))
    tie = np.random.default_rng([seed, 3]).random(len(unit_ids))
    order = np.lexsort((tie, position[unit_ids]))
    return np.sort(order[:count])


class _World(NamedTuple):
    """The drawn data sets (as sources) and the target's domain."""

    pre: Any  # synthetic.Drawn of the pre-training set (with ``domain``)
    pretrain: Any
    target: Any
    test: Any
    held_out: Any
    domain: str
    data_seed: int


def _world(s: DemoSettings, data_seed: int, log: Callable[[str], None]) -> _World:
    from uotsel_train import data, synthetic

    size, domain = s.image_size, target_domain(data_seed, s.domain)
    pre = synthetic.pretraining_set(s.pretrain_per_class, data_seed, size)
    target = synthetic.target_set(s.target_per_class, data_seed, size, domain=domain)
    test = synthetic.target_set(s.test_per_class, data_seed + 1000, size, domain=domain)
    held = synthetic.pretraining_set(s.pretrain_test_per_class, data_seed + 1000, size)
    world = _World(
        pre,
        data.ArraySource(pre.images, pre.labels, pre.classes),
        data.ArraySource(target.images, target.labels, target.classes),
        data.ArraySource(test.images, test.labels, test.classes),
        data.ArraySource(held.images, held.labels, held.classes),
        domain,
        data_seed,
    )
    log(
        f"world (data seed {data_seed}): pre-training {len(world.pretrain)} images in "
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


def _random_classes(w: _World, k: int, seed: int) -> np.ndarray:
    """``k`` pre-training classes drawn at random, of ``k`` different shapes (each shape on a
    random domain), so that the random arm teaches as many shapes as UOT's selection usually
    does and differs from it by the domain; a new draw per fine-tuning ``seed``."""
    rng = np.random.default_rng([w.data_seed, seed, 7])
    by_shape: dict[str, list[int]] = {}
    for unit, name in enumerate(w.pre.classes):
        by_shape.setdefault(name.partition("/")[0], []).append(unit)
    shapes = list(by_shape.values())
    if k > len(shapes):
        raise ValueError(f"top_k: at most {len(shapes)} (one class per shape), got {k}")
    return np.asarray([rng.choice(shapes[i]) for i in rng.permutation(len(shapes))[:k]])


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
    randoms = {seed: _random_classes(w, k, seed) for seed in s.seeds}
    line = demo_report.describe(w, k)[3]
    log(f"UOT selects {line(uot.selected)}")
    log(f"least similar (bottom of the UOT ranking): {line(uot.ranking[::-1][:k])}")
    for seed, units in randoms.items():
        log(f"random (seed {seed}; one class per shape) selects {line(units)}")
    clusters = None
    if s.unlabelled:
        # Without labels: spherical k-means clusters of the per-image features (twice as many
        # clusters as classes, as the paper's 2000 for ImageNet's 1000 classes), each
        # represented by its members' mean feature (section 3.2), ranked with UOT and taken
        # from the top until they hold as many images as a class arm.
        count = int(np.isin(w.pre.labels, uot.selected).sum())
        km = uotsel.kmeans(pre_out.features, 2 * len(w.pre.classes), seed=w.data_seed)
        ranked = uotsel.select(km.means, target_means, top_k=None)
        picked = _first_images(ranked.ranking, km.assignment, count, w.data_seed)
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


class _Outcome(NamedTuple):
    """One world's runs: its data, selections, pre-trained top-1 and each arm's results (one
    per fine-tuning seed)."""

    world: _World
    selections: _Selections
    pretrain_top1: float
    results: dict[str, list[dict[str, float]]]


def run(
    out_dir: str,
    settings: DemoSettings = DemoSettings(),
    log: Callable[[str], None] = print,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demonstration, writing every world's runs and class means (``means.npz``) under
    ``out_dir/world<data seed>``, and the record to ``out_dir/demo.json``; returns that
    record. ``progress`` shows a bar (on stderr) over the training images of every world,
    seed, arm and epoch, with its ETA."""
    with compilation_cache():
        return _run(out_dir, settings, log, progress)


def _ticker(bar: Any, images: int, **fields: Any) -> Callable[[str], None]:
    """The per-epoch callback of a run: ``images`` more done on ``bar``."""
    shown = {k: str(v) for k, v in fields.items()}
    return lambda line: bar.update(images, **shown)


def _one_world(s: DemoSettings, data_seed: int, folder: str, say, bar) -> _Outcome:
    w = _world(s, data_seed, say)
    pre_images, arm_images = _images_per_epoch(s)
    say(f"pre-training the tiny ResNet for {s.pretrain_epochs} epochs ...")
    backbone, accuracy = pretrain(
        w.pretrain,
        {"held-out": w.held_out},
        len(w.pre.classes),
        os.path.join(folder, "pretrain"),
        epochs=s.pretrain_epochs,
        lr=s.pretrain_lr,
        seed=data_seed,
        size=s.image_size,
        on_epoch=_ticker(bar, pre_images, world=data_seed, run="pre-training"),
    )
    say(f"pre-trained: top-1 {accuracy['held-out']:.3f} on {len(w.held_out)} held-out images")
    sel = _select(s, w, backbone, folder, say)
    arms = _arms(w, sel)
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
    for seed in s.seeds:  # the same schedule for every arm
        for arm, (objective, chosen) in arms.items():
            tick = _ticker(bar, arm_images[arm], world=data_seed, run=f"seed {seed} {ARMS[arm]}")
            run_dir = os.path.join(folder, f"seed{seed}", ARMS[arm])
            sets = (w.target, w.test, w.pretrain)
            got = finetune(
                s.schedule(), objective, seed, backbone, sets, chosen(seed), run_dir, tick
            )
            results[arm].append(got)
    means = ", ".join(f"{a} {np.mean([r['top1'] for r in rs]):.3f}" for a, rs in results.items())
    seeds = f"{len(s.seeds)} seed{'s' * (len(s.seeds) > 1)}"
    say(f"world {data_seed} ({w.domain}), mean test top-1 over {seeds}: {means}")
    return _Outcome(w, sel, accuracy["held-out"], results)


def _run(out_dir: str, s: DemoSettings, log: Callable[[str], None], progress: bool):
    from uotsel.io import write_json
    from uotsel.progress import Progress

    start = time.perf_counter()
    bar = Progress(progress_total(s), "demo", unit="img", enabled=progress)

    def say(line: str) -> None:
        bar.clear()
        log(line)

    with bar:
        outcomes = [
            _one_world(s, ds, os.path.join(out_dir, f"world{ds}"), say, bar) for ds in s.data_seeds
        ]
    record = demo_report.record(s, outcomes, time.perf_counter() - start, ARMS)
    write_json(os.path.join(out_dir, "demo.json"), record)
    demo_report.report(record, log)
    log(f"({record['seconds']:.0f} s; runs, means.npz and demo.json in {out_dir})")
    picture = demo_report.draw(out_dir, record)
    if picture:
        log(f"curves of every run, by arm: {picture}")
    else:
        log("no curves.png: drawing needs matplotlib (pip install 'uotsel[plot]')")
    return record
