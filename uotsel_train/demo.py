"""``uotsel-train demo``: the whole method on CPU in a few minutes, on generated images.

1. Draws a pre-training set (every shape x background pair of :mod:`uotsel_train.synthetic` is
   a class) and a small target set (a few of the shapes on a background of its own, close to
   one pre-training background).
2. Pre-trains the tiny ResNet on the pre-training set.
3. Computes the class means of both sets under that backbone and selects pre-training classes
   with ``uotsel.select`` (UOT, the paper's settings), and as many at random (a new draw for
   every seed).
4. Clusters the pre-training features with spherical k-means and selects clusters with UOT,
   as for unlabelled pre-training data.
5. Fine-tunes from the pre-trained backbone, once per seed: on the target set alone; with the
   UOT-selected classes (eq. 6, labelled); with the random classes (eq. 6); with the images of
   the UOT-selected clusters, labels unused (eq. 7).
6. Prints the test accuracies side by side, per seed and on average.

Nothing is tuned to flatter a method: every arm has the same schedule, the seeds are stated,
and what is printed is what was measured.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["DemoSettings", "run"]


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """The demonstration's sizes and schedules (``quick`` shrinks them for tests)."""

    data_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    top_k: int = 8
    image_size: int = 32
    pretrain_per_class: int = 100
    target_per_class: int = 8
    test_per_class: int = 60
    pretrain_test_per_class: int = 10
    pretrain_epochs: int = 30
    finetune_epochs: int = 30
    lam: float = 1.0
    pretrain_lr: float = 0.05
    finetune_lr: float = 0.03

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(
            seeds=(0,),
            pretrain_per_class=12,
            test_per_class=10,
            pretrain_test_per_class=2,
            pretrain_epochs=2,
            finetune_epochs=3,
        )


def _backbone_variables(state: Any) -> dict[str, Any]:
    return {
        "params": state.params["backbone"],
        "batch_stats": state.batch_stats["backbone"],
    }


def run(
    out_dir: str,
    settings: DemoSettings = DemoSettings(),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demonstration, writing every run under ``out_dir`` and the figures to
    ``out_dir/demo.json``; returns that record."""
    import jax
    import jax.numpy as jnp

    import uotsel
    from uotsel.io import write_json
    from uotsel_train import data, extract, loop, models, synthetic

    start = time.perf_counter()
    s = settings
    size = s.image_size
    pre = synthetic.pretraining_set(s.pretrain_per_class, s.data_seed, size)
    target = synthetic.target_set(s.target_per_class, s.data_seed, size)
    test = synthetic.target_set(s.test_per_class, s.data_seed + 1000, size)
    pre_src = data.ArraySource(pre.images, pre.labels, pre.classes)
    target_src = data.ArraySource(target.images, target.labels, target.classes)
    test_src = data.ArraySource(test.images, test.labels, test.classes)
    log(
        f"data (seed {s.data_seed}): pre-training {len(pre_src)} images in "
        f"{len(pre.classes)} classes; target {len(target_src)} training and {len(test_src)} "
        f"test images in {len(target.classes)} classes ({', '.join(target.classes)})"
    )
    common = {
        "arch": "tiny",
        "image_size": size,
        "crop_scale": (0.35, 1.0),
        "workers": 2,
        "progress": False,
    }

    # 1. pre-training: the tiny network learns the pre-training classes.
    model = models.FineTuner("tiny", num_target=len(pre.classes))
    init = model.init(jax.random.key(s.data_seed), jnp.zeros((1, size, size, 3)))
    e = s.pretrain_epochs
    cfg = loop.Config(
        objective="vanilla",
        lr=s.pretrain_lr,
        weight_decay=1e-4,
        epochs=e,
        milestones=(max(1, e * 2 // 3),),
        batch_size=96,
        eval_every=e,
        checkpoint_every=e,
        seed=s.data_seed,
        **common,
    )
    log(f"pre-training the tiny ResNet for {e} epochs ...")
    held_out = synthetic.pretraining_set(s.pretrain_test_per_class, s.data_seed + 1000, size)
    pretrained = loop.fit(
        cfg,
        model,
        init,
        pre_src,
        os.path.join(out_dir, "pretrain"),
        target_test=data.ArraySource(held_out.images, held_out.labels, held_out.classes),
        log=lambda line: None,
    )
    pretrain_top1 = pretrained["eval"]["top1"]
    log(f"pre-trained: top-1 {pretrain_top1:.3f} on {len(held_out.labels)} held-out images")
    backbone = _backbone_variables(pretrained["state"])

    # 2. class means under the pre-trained backbone, and the selections.
    resize = round(size * 256 / 224)
    pre_out = extract.extract(
        pre_src,
        {"backbone": backbone},
        "tiny",
        image_size=size,
        resize=resize,
        workers=2,
        keep_features=True,
    )
    means = {
        "pretrain": pre_out.means,
        "target": extract.extract(
            target_src, {"backbone": backbone}, "tiny", image_size=size, resize=resize, workers=2
        ).means,
    }
    related = {f"{shape}/stripes" for shape in target.classes}

    def describe(units) -> str:
        names = [pre.classes[u] for u in units]
        hits = sum(n in related for n in names)
        return f"{', '.join(names)} ({hits} of the {len(related)} target shapes on stripes)"

    uot = uotsel.select(means["pretrain"], means["target"], top_k=s.top_k)
    log(f"UOT selects {describe(uot.selected)}")
    randoms = {
        seed: uotsel.select(
            means["pretrain"], means["target"], strategy="random", top_k=s.top_k, seed=seed
        ).selected
        for seed in s.seeds
    }
    for seed, units in randoms.items():
        log(f"random (seed {seed}) selects {describe(units)}")
    # Without labels: spherical k-means clusters of the per-image features (twice as many
    # clusters as classes, and twice as many selected, as the paper's 2000 and 200).
    clusters = uotsel.kmeans(pre_out.features, 2 * len(pre.classes), seed=s.data_seed)
    by_cluster = uotsel.select(
        clusters.centroids,
        means["target"],
        top_k=2 * s.top_k,
        unit_ids=clusters.assignment,
    )
    picked = pre.labels[by_cluster.sample_indices]
    share = np.mean([pre.classes[c] in related for c in picked])
    log(
        f"UOT selects {2 * s.top_k} of {2 * len(pre.classes)} k-means clusters (labels "
        f"unused): {picked.size} images, {share:.0%} of them target shapes on stripes"
    )

    def images_of(units) -> np.ndarray:
        return np.flatnonzero(np.isin(pre.labels, np.asarray(units)))

    # 3. fine-tuning: the same schedule for every arm.
    arms = {  # name: (run folder, objective, selected images for a seed)
        "target only": ("target-only", "vanilla", lambda seed: None),
        "+ UOT-selected classes": (
            "uot-classes",
            "labelled",
            lambda seed: images_of(uot.selected),
        ),
        "+ random classes": ("random-classes", "labelled", lambda seed: images_of(randoms[seed])),
        "+ UOT clusters, no labels": (
            "uot-clusters-unlabelled",
            "unlabelled",
            lambda seed: by_cluster.sample_indices,
        ),
    }
    e = s.finetune_epochs
    results: dict[str, list[float]] = {arm: [] for arm in arms}
    for seed in s.seeds:
        for arm, (slug, objective, chosen) in arms.items():
            indices = chosen(seed)
            num_source = len(pre.classes) if objective == "labelled" else 0
            net = models.FineTuner("tiny", num_target=len(target.classes), num_source=num_source)
            fresh = net.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
            variables = {
                "params": {**fresh["params"], "backbone": backbone["params"]},
                "batch_stats": {"backbone": backbone["batch_stats"]},
            }
            cfg = loop.Config(
                objective=objective,
                lr=s.finetune_lr,
                weight_decay=1e-4,
                lam=s.lam,
                epochs=e,
                milestones=(max(1, e * 3 // 5), max(1, e * 4 // 5)),
                batch_size=10,
                source_batch_size=30,
                eval_every=e,
                checkpoint_every=e,
                seed=seed,
                **common,
            )
            folder = os.path.join(out_dir, f"seed{seed}", slug)
            out = loop.fit(
                cfg,
                net,
                variables,
                target_src,
                folder,
                target_test=test_src,
                pretrain=pre_src,
                pretrain_indices=indices,
                log=lambda line: None,
            )
            results[arm].append(out["eval"]["top1"])
            log(f"seed {seed}: {arm}: test top-1 {out['eval']['top1']:.3f}")

    record = {
        "settings": dataclasses.asdict(s),
        "selected": {
            "uot": [pre.classes[u] for u in uot.selected],
            "random": {seed: [pre.classes[u] for u in units] for seed, units in randoms.items()},
            "uot_clusters": by_cluster.selected.tolist(),
            "uot_cluster_images_on_target_shapes_and_stripes": float(share),
        },
        "pretrain_top1": pretrain_top1,
        "top1": results,
        "mean_top1": {arm: float(np.mean(v)) for arm, v in results.items()},
        "seconds": time.perf_counter() - start,
    }
    write_json(os.path.join(out_dir, "demo.json"), record)
    width = max(len(a) for a in arms)
    seeds = "  ".join(f"seed {x}" for x in s.seeds)
    log("")
    log(
        f"test top-1 on {len(test_src)} target images ({len(target_src)} training images, "
        f"{e} epochs):"
    )
    log(f"{'':{width}}  {seeds}    mean")
    for arm, accs in results.items():
        cells = "  ".join(f"{a:6.3f}" for a in accs)
        log(f"{arm:{width}}  {cells}  {np.mean(accs):6.3f}")
    log(
        f"seeds: data {s.data_seed} (images, pre-training); fine-tuning "
        f"{', '.join(map(str, s.seeds))} (heads, data order, augmentation, random draw)"
    )
    log(f"({record['seconds']:.0f} s; runs and demo.json in {out_dir})")
    return record
