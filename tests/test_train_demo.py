import json

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

from uotsel_train import data, synthetic
from uotsel_train.cli import main


def test_synthetic_sets_are_seeded_and_labelled():
    a, b = synthetic.pretraining_set(3, seed=5), synthetic.pretraining_set(3, seed=5)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (3 * len(a.classes), 32, 32, 3) and a.images.dtype == np.uint8
    assert len(a.classes) == len(synthetic.SHAPES) * len(synthetic.BACKGROUNDS)
    np.testing.assert_array_equal(np.bincount(a.labels), np.full(len(a.classes), 3))
    assert not np.array_equal(a.images, synthetic.pretraining_set(3, seed=6).images)
    t = synthetic.target_set(4, seed=0, size=24)
    assert t.images.shape == (20, 24, 24, 3) and t.classes[0] == "disc"
    np.testing.assert_array_equal(np.bincount(t.labels), np.full(5, 4))
    # a disc covers its centre with one colour; the corners are background
    disc = synthetic.draw("disc", "plain", 1, np.random.default_rng(0), size=32)[0]
    centre = disc[13:19, 13:19].reshape(-1, 3).astype(float)
    assert centre.std(axis=0).max() < 25  # shape colour + pixel noise (10) only
    with pytest.raises(ValueError, match="shape: unknown 'blob'"):
        synthetic.draw("blob", "plain", 1, np.random.default_rng(0))


def test_array_source_checks_its_input():
    src = data.ArraySource(np.zeros((2, 4, 4, 3), np.uint8), [0, 1], ["a", "b"])
    img, label = src.load(1)
    assert img.size == (4, 4) and label == 1 and len(src) == 2
    with pytest.raises(ValueError, match="images: expected"):
        data.ArraySource(np.zeros((2, 4, 4), np.uint8), [0, 1])
    with pytest.raises(ValueError, match="labels: expected 2 integer labels"):
        data.ArraySource(np.zeros((2, 4, 4, 3), np.uint8), [0.5, 1])
    with pytest.raises(ValueError, match="classes: 1 names"):
        data.ArraySource(np.zeros((2, 4, 4, 3), np.uint8), [0, 1], ["a"])


def test_quick_demo_reports_what_the_runs_measured(tmp_path, capsys):
    assert main(["demo", "--quick", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "demo.json").read_text())
    arms = {
        "target only": "target-only",
        "+ UOT-selected classes": "uot-classes",
        "+ random classes": "random-classes",
        "+ UOT clusters, no labels": "uot-clusters-unlabelled",
    }
    assert set(record["top1"]) == set(arms)
    assert len(record["selected"]["uot"]) == 8 and list(record["selected"]["random"]) == ["0"]
    assert len(record["selected"]["uot_clusters"]) == 16
    for arm, folder in arms.items():
        lines = (tmp_path / "seed0" / folder / "metrics.jsonl").read_text().splitlines()
        assert (
            record["top1"] == record["top1"]
            and json.loads(lines[-1])["top1"] == (record["top1"][arm][0])
        )
        assert f"{record['mean_top1'][arm]:6.3f}" in out
    assert "seeds: data 0" in out
    assert main(["demo", "--quick", "--seeds", "x", "--out-dir", str(tmp_path)]) == 2
