import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("orbax.checkpoint")

from uotsel_train import data, demo, demo_report, paired, synthetic
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


def test_the_target_domain_cycles_with_the_data_seed_unless_named():
    seeds = range(len(demo.TARGET_DOMAINS) + 1)
    drawn = [demo.target_domain(s) for s in seeds]
    assert drawn == [*demo.TARGET_DOMAINS, demo.TARGET_DOMAINS[0]]
    assert set(demo.TARGET_DOMAINS) < set(synthetic.DOMAINS)
    assert demo.target_domain(1, "plain") == "plain"
    # the default experiment runs every world it ships, with at least 5 fine-tuning seeds
    settings = demo.DemoSettings()
    assert sorted(demo.target_domain(s) for s in settings.data_seeds) == sorted(demo.TARGET_DOMAINS)
    assert len(settings.seeds) >= 5


def test_paired_differences_by_hand():
    # 2 worlds x 3 seeds
    d = paired.compare("b", [[0.10, -0.05, 0.20], [0.30, 0.00, 0.05]])
    assert d.mean == pytest.approx(0.60 / 6)
    assert (d.low, d.high) == (-0.05, 0.30)
    assert (d.positive, d.negative, d.n) == (4, 1, 6)
    # the tie drops out: 4 of 5 signs alike, p = 2 * (C(5,4) + C(5,5)) / 2^5 = 12 / 32
    assert d.sign_p == pytest.approx(0.375)
    assert d.world_means == pytest.approx([0.25 / 3, 0.35 / 3])
    assert d.low <= d.interval[0] <= d.mean <= d.interval[1] <= d.high
    assert d.verdict == "not shown"
    assert paired.sign_test(6, 0) == pytest.approx(2 / 64)
    assert paired.sign_test(0, 0) == 1.0
    with pytest.raises(ValueError, match="differences: expected"):
        paired.compare("b", [0.1, 0.2])


def test_the_claims_are_computed_from_the_runs():
    ahead = {  # arm -> [worlds][seeds]
        "target only": [[0.50, 0.52, 0.49, 0.50], [0.60, 0.58, 0.61, 0.60]],
        "+ UOT classes": [[0.70, 0.71, 0.69, 0.70], [0.75, 0.74, 0.76, 0.70]],
        "+ random classes": [[0.60, 0.62, 0.61, 0.69], [0.66, 0.65, 0.70, 0.61]],
    }
    claims = demo_report.compare(ahead)
    assert set(claims) == {
        "UOT classes - target only",
        "random classes - target only",
        "UOT classes - random classes",
    }
    uot_random = claims["UOT classes - random classes"]
    # 0.10 + 0.09 + 0.08 + 0.01 + 0.09 + 0.09 + 0.06 + 0.09 = 0.61 over 8 pairs, all positive:
    # p = 2 / 2^8, below 0.05 / 3 comparisons
    assert uot_random["mean"] == pytest.approx(0.61 / 8)
    assert uot_random["sign_p"] == pytest.approx(2 / 256)
    assert uot_random["level"] == pytest.approx(0.05 / 3)
    assert uot_random["verdict"] == "holds"
    assert uot_random["claim"].startswith("UOT classes beat random classes (mean +0.076,")
    assert "8 of 8 pairs positive" in uot_random["claim"]
    assert "ahead in 2 of 2 worlds" in uot_random["claim"]
    # the same runs with the two arms swapped: the claim turns round
    swapped = dict(ahead, **{"+ UOT classes": ahead["+ random classes"]})
    swapped["+ random classes"] = ahead["+ UOT classes"]
    turned = demo_report.compare(swapped)["UOT classes - random classes"]
    assert turned["verdict"] == "reversed" and "did worse than random classes" in turned["claim"]
    # half the pairs ahead, half behind: not shown
    mixed = dict(ahead, **{"+ random classes": [[0.60, 0.62, 0.61, 0.69], [0.80] * 4]})
    split = demo_report.compare(mixed)["UOT classes - random classes"]
    assert split["verdict"] == "not shown" and "not shown at this size" in split["claim"]
    # 7 of 8 ahead gives p = 0.07: not shown either, though the mean is well above 0
    almost = dict(
        ahead, **{"+ random classes": [[0.60, 0.62, 0.61, 0.75], [0.66, 0.65, 0.70, 0.61]]}
    )
    assert demo_report.compare(almost)["UOT classes - random classes"]["verdict"] == "not shown"


def test_the_progress_total_counts_every_training_image():
    s = demo.DemoSettings.quick()
    # pre-training: 40 classes x 12 images = 480, 5 batches of 96, 2 epochs; fine-tuning:
    # 3 epochs of 4 steps, 10 target images per step (+ 30 pre-training images in the three
    # labelled arms)
    assert demo.progress_total(s) == 2 * 480 + 3 * 4 * (10 + 3 * 40)
    bigger = demo.DemoSettings(data_seeds=(0, 1), seeds=(0, 1, 2), unlabelled=True)
    pre = 2000 // 96 * 96
    assert demo.progress_total(bigger) == 2 * (20 * pre + 3 * 15 * 4 * (10 + 4 * 40))


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


@pytest.mark.slow
def test_quick_demo_reports_what_the_runs_measured(tmp_path, capsys):
    import uotsel
    from uotsel_train import metrics

    assert main(["demo", "--quick", "--out-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    settings = demo.DemoSettings.quick()
    total = demo.progress_total(settings)
    assert f"demo {total}/{total} (100%)" in captured.err  # the bar reached its total
    assert f"curves of every run, by arm: {tmp_path / 'curves.png'}" in out
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((tmp_path / "demo.json").read_text())
    (world,) = record["worlds"]
    domain = world["target_domain"]
    assert domain == demo.target_domain(0)
    assert not set(world["target_shapes"]) & set(world["pretrain_shapes"])

    # The selections, from the class names: UOT finds the target's domain, the bottom of its
    # ranking avoids it.
    uot, least = world["selected"]["uot"], world["selected"]["least_similar"]
    assert len(uot) == len(least) == 8 and not set(uot) & set(least)
    assert all(synthetic.class_domain(c) == domain for c in uot)
    assert not any(synthetic.class_domain(c) == domain for c in least)
    # ... and they are what UOT makes of the class means the run computed.
    means = np.load(tmp_path / "world0" / "means.npz")
    classes = means["pretrain_classes"].tolist()
    again = uotsel.select(means["pretrain"], means["target"], top_k=8)
    assert [classes[u] for u in again.selected] == uot
    assert [classes[u] for u in again.ranking[::-1][:8]] == least

    # Every arm that uses pre-training data had the same number of images.
    pre = synthetic.pretraining_set(settings.pretrain_per_class, 0)
    for names in (uot, least, world["selected"]["random"]["0"]):
        count = np.isin(pre.labels, [pre.classes.index(c) for c in names]).sum()
        assert count == world["pretrain_images_per_arm"] == 8 * settings.pretrain_per_class
    assert world["distinct_shapes"]["random"]["0"] == 8  # one class per shape

    # The figures are the ones the runs wrote, evaluated several times, on one schedule.
    pretrain_evals = metrics.read(str(tmp_path / "world0" / "pretrain"), "eval")
    assert pretrain_evals[-1]["test_top1"] == world["pretrain_top1"]
    assert record["arms"] == demo.arm_names(settings) and len(record["arms"]) == 4
    schedules = set()
    for arm in record["arms"]:
        run = tmp_path / "world0" / "seed0" / demo.ARMS[arm]
        evals = metrics.read(str(run), "eval")
        assert [e["epoch"] for e in evals] == [1, 2, 3]
        assert evals[-1]["test_top1"] == record["top1"][arm][0][0]
        assert evals[-1]["test_mean_class_acc"] == record["mean_class_acc"][arm][0][0]
        config = json.loads((run / "config.json").read_text())["config"]
        schedules.add(tuple(str(config[k]) for k in ("epochs", "lr", "lam", "batch_size", "seed")))
    assert len(schedules) == 1

    # The paired differences and claims are those of the recorded accuracies.
    top1 = record["top1"]
    uot_random = record["paired"]["UOT classes - random classes"]
    diff = top1["+ UOT classes"][0][0] - top1["+ random classes"][0][0]
    assert uot_random["differences"] == [[pytest.approx(diff)]]
    assert uot_random["verdict"] == "not shown"  # one pair shows nothing
    assert record["paired"] == json.loads(json.dumps(demo_report.compare(top1)))
    for d in record["paired"].values():
        assert f"- {d['claim']}" in out
    assert "seeds: data 0" in out
    assert main(["demo", "--quick", "--seeds", "x", "--out-dir", str(tmp_path)]) == 2
    assert main(["demo", "--quick", "--data-seeds", "1,1", "--out-dir", str(tmp_path)]) == 2
