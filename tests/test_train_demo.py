import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("orbax.checkpoint")

from uotsel_train import data, demo, synthetic
from uotsel_train.cli import main


def test_synthetic_sets_are_seeded_and_labelled():
    a, b = synthetic.pretraining_set(3, seed=5), synthetic.pretraining_set(3, seed=5)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (3 * len(a.classes), 32, 32, 3) and a.images.dtype == np.uint8
    assert len(a.classes) == len(synthetic.SHAPES) * len(synthetic.DOMAINS)
    np.testing.assert_array_equal(np.bincount(a.labels), np.full(len(a.classes), 3))
    named = [synthetic.DOMAINS.index(synthetic.class_domain(c)) for c in a.classes]
    np.testing.assert_array_equal(a.domain, np.asarray(named)[a.labels])
    assert not np.array_equal(a.images, synthetic.pretraining_set(3, seed=6).images)
    t = synthetic.target_set(4, seed=0, size=24, domain="dots")
    assert t.images.shape == (20, 24, 24, 3) and t.classes == list(synthetic.TARGET_SHAPES)
    np.testing.assert_array_equal(np.bincount(t.labels), np.full(5, 4))
    assert set(t.domain.tolist()) == {synthetic.DOMAINS.index("dots")}
    # a disc covers its centre with one colour; the corners are background
    disc = synthetic.draw("disc", "plain", 1, np.random.default_rng(0), size=32)[0]
    centre = disc[13:19, 13:19].reshape(-1, 3).astype(float)
    assert centre.std(axis=0).max() < 25  # shape colour + pixel noise (10) only
    with pytest.raises(ValueError, match="shape: unknown 'blob'"):
        synthetic.draw("blob", "plain", 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="domain: unknown 'waves'"):
        synthetic.target_set(1, seed=0, domain="waves")


def test_target_classes_are_not_pretraining_classes():
    pre = synthetic.pretraining_set(2, seed=0)
    target = synthetic.target_set(2, seed=0)
    pre_shapes = {c.partition("/")[0] for c in pre.classes}
    assert pre_shapes == set(synthetic.SHAPES)
    assert not pre_shapes & set(target.classes)
    # ... nor look like one: every target shape overlaps itself more than any
    # pre-training shape, even at its closest
    masks = {s: synthetic.shape_mask(s) for s in synthetic.SHAPES + synthetic.TARGET_SHAPES}

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    for shape in target.classes:
        assert max(iou(masks[shape], masks[p]) for p in synthetic.SHAPES) < 0.8


def _nearest(signature, signatures):
    return max(signatures, key=lambda name: signature @ signatures[name])


def test_the_training_flip_keeps_every_shape_and_domain():
    masks = {s: synthetic.shape_mask(s) for s in synthetic.SHAPES + synthetic.TARGET_SHAPES}
    for shape, mask in masks.items():
        assert np.array_equal(mask[:, ::-1], mask), shape
    rng = np.random.default_rng(0)
    signatures = {
        d: synthetic.texture_signature(synthetic.background(d, 100, rng)) for d in synthetic.DOMAINS
    }
    for domain in synthetic.DOMAINS:
        mirrored = synthetic.background(domain, 100, rng)[:, :, ::-1]
        assert _nearest(synthetic.texture_signature(mirrored), signatures) == domain

    # Through the training transform (random resized crop, then a flip half the time), as
    # both sets go through it in training: target images still look like pre-training
    # images of their own domain and of no other.
    def seen(images, seed):
        return synthetic.texture_signature(
            np.stack(
                [
                    data.random_resized_crop(
                        Image.fromarray(image), np.random.default_rng([seed, i]), 32, (0.35, 1.0)
                    )
                    for i, image in enumerate(images)
                ]
            )
        )

    pre = synthetic.pretraining_set(6, seed=0)
    by_domain = {
        d: seen(pre.images[pre.domain == synthetic.DOMAINS.index(d)], 0) for d in synthetic.DOMAINS
    }
    for domain in demo.TARGET_DOMAINS:
        target = synthetic.target_set(10, seed=0, domain=domain)
        assert _nearest(seen(target.images, 1), by_domain) == domain
    # The check can fail: stripes along one diagonal turn into the other diagonal's.
    y, x = np.mgrid[:32, :32]
    one = np.repeat(((np.sin(2 * np.pi * (x + y) / 5) > 0) * 100.0)[None, ..., None], 3, -1)
    other = one[:, :, ::-1]
    diagonal = {
        "one": synthetic.texture_signature(one),
        "other": synthetic.texture_signature(other),
    }
    assert _nearest(synthetic.texture_signature(one[:, :, ::-1]), diagonal) == "other"


def test_cluster_images_are_taken_down_the_ranking():
    unit_ids = np.array([2, 0, 1, 2, 0, 2, 1, 1])
    picked = demo._first_images(np.array([2, 1, 0]), unit_ids, 5, seed=0)
    assert picked.tolist() == sorted(picked.tolist()) and picked.size == 5
    assert set(unit_ids[picked]) == {1, 2} and np.sum(unit_ids[picked] == 2) == 3


def test_quick_demo_reports_what_the_runs_measured(tmp_path, capsys):
    import uotsel

    assert main(["demo", "--quick", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"curves of the seed 0 runs: {tmp_path / 'curves.png'}" in out
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((tmp_path / "demo.json").read_text())
    settings = demo.DemoSettings.quick()
    domain = record["world"]["target_domain"]
    assert domain == demo.target_domain(settings)
    assert not set(record["world"]["target_shapes"]) & set(record["world"]["pretrain_shapes"])

    # The selections, from the class names: UOT finds the target's domain, the bottom of its
    # ranking avoids it.
    uot, least = record["selected"]["uot"], record["selected"]["least_similar"]
    assert len(uot) == len(least) == 8 and not set(uot) & set(least)
    assert all(synthetic.class_domain(c) == domain for c in uot)
    assert not any(synthetic.class_domain(c) == domain for c in least)
    # ... and they are what UOT makes of the class means the run computed.
    means = np.load(tmp_path / "means.npz")
    classes = means["pretrain_classes"].tolist()
    again = uotsel.select(means["pretrain"], means["target"], top_k=8)
    assert [classes[u] for u in again.selected] == uot
    assert [classes[u] for u in again.ranking[::-1][:8]] == least

    # Every arm that uses pre-training data had the same number of images.
    pre = synthetic.pretraining_set(settings.pretrain_per_class, settings.data_seed)
    for names in (uot, least, record["selected"]["random"]["0"]):
        count = np.isin(pre.labels, [pre.classes.index(c) for c in names]).sum()
        assert count == record["pretrain_images_per_arm"] == 8 * settings.pretrain_per_class

    # The figures are the ones the runs wrote, and the runs had the same schedule.
    from uotsel_train import metrics

    assert (
        metrics.read(str(tmp_path / "pretrain"), "eval")[-1]["test_top1"] == record["pretrain_top1"]
    )
    schedules = set()
    assert set(record["top1"]) == set(demo.ARMS) - {"+ UOT clusters, no labels"}
    for arm, folder in demo.ARMS.items():
        if arm not in record["top1"]:
            continue
        run = tmp_path / "seed0" / folder
        last = metrics.read(str(run), "eval")[-1]
        assert last["test_top1"] == record["top1"][arm][0]
        assert last["test_mean_class_acc"] == record["mean_class_acc"][arm][0]
        config = json.loads((run / "config.json").read_text())["config"]
        schedules.add(tuple(str(config[k]) for k in ("epochs", "lr", "lam", "batch_size", "seed")))
        assert f"{arm}" in out and f"{record['mean_top1'][arm]:6.3f}" in out
    assert len(schedules) == 1
    assert "seeds: data 0" in out
    assert main(["demo", "--quick", "--seeds", "x", "--out-dir", str(tmp_path)]) == 2
