import json

import numpy as np
import pytest

pytest.importorskip("flax")

from uotsel_train import streams


def test_selected_samples_keep_exactly_the_selected_units():
    rng = np.random.default_rng(0)
    units = rng.integers(0, 50, size=2000)
    chosen = [3, 17, 42]
    idx = streams.selected_samples(units, chosen)
    assert set(units[idx].tolist()) == set(chosen)
    assert idx.size == np.isin(units, chosen).sum() and np.all(np.diff(idx) > 0)
    with pytest.raises(ValueError, match=r"selection: 1 selected unit\(s\) have no sample here"):
        streams.selected_samples(units, [3, 99])


def test_read_selection(tmp_path):
    good = {"format": "uotsel.selection/1", "selected": [1, 2]}
    (tmp_path / "s.json").write_text(json.dumps(good))
    assert streams.read_selection(str(tmp_path / "s.json"))["selected"] == [1, 2]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a uotsel selection file"):
        streams.read_selection(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="selection: file not found"):
        streams.read_selection(str(tmp_path / "none.json"))


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_class_fraction_counts(fraction):
    labels = np.repeat(np.arange(10), [30, 31, 32, 33, 34, 35, 36, 37, 38, 3])
    idx = streams.class_fraction(labels, fraction, seed=1)
    counts = np.bincount(labels[idx], minlength=10)
    expected = [max(1, round(fraction * n)) for n in np.bincount(labels)]
    assert counts.tolist() == expected
    np.testing.assert_array_equal(idx, streams.class_fraction(labels, fraction, seed=1))
    assert not np.array_equal(idx, streams.class_fraction(labels, fraction, seed=2))


def test_long_tail_has_a_tenfold_imbalance():
    labels = np.repeat(np.arange(20), 100)
    idx = streams.long_tail(labels, imbalance=10.0, seed=3)
    counts = np.sort(np.bincount(labels[idx], minlength=20))[::-1]
    assert counts[0] == 100 and counts[-1] == 10
    assert np.all(np.diff(counts) <= 0)
    np.testing.assert_array_equal(idx, streams.long_tail(labels, 10.0, seed=3))


def test_epoch_order_reshuffles_and_resumes_exactly():
    order = streams.EpochOrder(np.arange(10), seed=5)
    first = order.take(25)
    assert sorted(first[:10].tolist()) == list(range(10))
    assert first[:10].tolist() != first[10:20].tolist()  # a new order every epoch
    resumed = streams.EpochOrder(np.arange(10), seed=5, position=13)
    np.testing.assert_array_equal(resumed.take(12), first[13:])
    assert resumed.position == order.position == 25
