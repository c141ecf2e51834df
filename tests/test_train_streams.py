import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("flax")

from uotsel_train import loader, streams


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
    from uotsel_train import selected

    good = {"format": "uotsel.selection/1", "selected": [1, 2], "ranking": [2, 1, 0]}
    (tmp_path / "s.json").write_text(json.dumps({**good, "groups": [[2], [1, 0]]}))
    assert selected.read(str(tmp_path / "s.json"))["selected"] == [1, 2]
    (tmp_path / "nogroups.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text("{}")
    (tmp_path / "floats.json").write_text(json.dumps({**good, "selected": [1.5]}))
    (tmp_path / "cut.json").write_text(json.dumps(good)[:20])
    for name, message in [
        ("bad.json", "not a uotsel selection file"),
        ("none.json", "selection: file not found"),
        ("nogroups.json", "selection: .* has no list of score groups"),
        ("floats.json", "selection: .* has no valid list 'selected' of unit ids"),
        ("cut.json", r"selection: .*cut.json is not a uotsel selection file \(not JSON: "),
        ("", "selection: is a folder"),
    ]:
        with pytest.raises(ValueError, match=message):
            selected.read(str(tmp_path / name))


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_class_fraction_counts(fraction):
    labels = np.repeat(np.arange(10), [30, 31, 32, 33, 34, 35, 36, 37, 38, 3])
    idx = streams.class_fraction(labels, fraction, seed=1)
    counts = np.bincount(labels[idx], minlength=10)
    expected = [max(1, round(fraction * n)) for n in np.bincount(labels)]
    assert counts.tolist() == expected
    np.testing.assert_array_equal(idx, streams.class_fraction(labels, fraction, seed=1))
    assert not np.array_equal(idx, streams.class_fraction(labels, fraction, seed=2))


def test_class_fraction_rejects_bad_fractions():
    labels = np.repeat(np.arange(3), 5)
    for bad in (float("nan"), "0.5", None, True, 0, 1.5, -0.1, [0.5]):
        with pytest.raises(ValueError, match=r"^fraction: must be a number in \(0, 1\]"):
            streams.class_fraction(labels, bad, seed=0)
    assert streams.class_fraction(labels, np.float32(0.4), seed=0).size == 6


def exponential_counts(sizes_by_rank, imbalance, ranks=None):
    """Cui et al. 2019: rank r of C keeps imbalance ** (-r / (C - 1)) of its samples; the
    counts in rank order, or in the order of ``ranks`` when given."""
    c = len(sizes_by_rank)
    counts = [max(1, round(n * imbalance ** (-r / (c - 1)))) for r, n in enumerate(sizes_by_rank)]
    return counts if ranks is None else [counts[r] for r in ranks]


def test_long_tail_is_exponential_by_default():
    labels = np.repeat(np.arange(20), 100)
    idx = streams.long_tail(labels, seed=3)
    assert np.all(np.diff(idx) > 0) and idx.dtype == np.int64
    counts = np.bincount(labels[idx], minlength=20)
    # by hand: 100 * 10 ** (-r / 19) for r = 0..19
    assert sorted(counts.tolist(), reverse=True) == [
        100, 89, 78, 70, 62, 55, 48, 43, 38, 34, 30, 26, 23, 21, 18, 16, 14, 13, 11, 10,
    ]  # fmt: skip
    assert sorted(counts.tolist(), reverse=True) == exponential_counts([100] * 20, 10.0)
    assert counts.max() / counts.min() == 10
    np.testing.assert_array_equal(idx, streams.long_tail(labels, 10.0, seed=3))
    other = np.bincount(labels[streams.long_tail(labels, 10.0, seed=4)], minlength=20)
    assert not np.array_equal(counts, other)  # the class order is seeded


def test_long_tail_shares_for_uneven_classes():
    sizes = np.array([40, 25, 60, 7, 33, 90])
    labels = np.repeat(np.array([5, 2, 9, 0, 7, 3]), sizes)
    idx = streams.long_tail(labels, imbalance=5.0, seed=1, profile="exponential")
    classes, counts = np.unique(labels[idx], return_counts=True)
    _, totals = np.unique(labels, return_counts=True)
    assert classes.tolist() == [0, 2, 3, 5, 7, 9]
    # Some assignment of the ranks 0..5 to the classes gives exactly the formula's counts.
    matches = [
        ranks
        for ranks in itertools.permutations(range(6))
        if counts.tolist() == exponential_counts(totals[np.argsort(ranks)], 5.0, ranks)
    ]
    assert len(matches) >= 1


def test_long_tail_power_profile_and_tiny_classes():
    labels = np.repeat(np.arange(20), 100)
    idx = streams.long_tail(labels, imbalance=10.0, seed=3, profile="power")
    counts = np.sort(np.bincount(labels[idx], minlength=20))[::-1]
    alpha = np.log(10) / np.log(20)
    assert counts.tolist() == [round(100 * (1 + r) ** -alpha) for r in range(20)]
    assert counts[0] == 100 and counts[-1] == 10
    assert not np.array_equal(counts, np.sort(exponential_counts([100] * 20, 10.0))[::-1])
    few = np.repeat(np.arange(4), [3, 1, 2, 5])
    assert np.all(np.bincount(few[streams.long_tail(few, 100.0, seed=0)]) >= 1)
    assert streams.long_tail(np.zeros(6, int), seed=0).tolist() == list(range(6))


def test_long_tail_rejects_bad_arguments():
    labels = np.repeat(np.arange(3), 5)
    assert streams.LONG_TAIL_PROFILES == ("exponential", "power")
    for bad in (0.5, float("nan"), float("inf"), "10", None, True):
        with pytest.raises(ValueError, match=r"^imbalance: must be a finite number >= 1"):
            streams.long_tail(labels, bad)
    with pytest.raises(ValueError, match=r"^profile: unknown long-tail profile 'pareto'"):
        streams.long_tail(labels, profile="pareto")
    with pytest.raises(ValueError, match=r"^labels: no samples"):
        streams.long_tail([])


def _take(order, start, count):
    return np.asarray([order[p] for p in range(start, start + count)])


def test_a_stream_reshuffles_at_each_of_its_epochs_and_resumes_at_any_position():
    indices = np.arange(100, 110)
    order = loader.stream_order(indices, seed=5)
    first = _take(order, 0, 30)
    for e in range(3):  # every epoch a permutation of the stream's samples
        assert sorted(first[10 * e : 10 * e + 10].tolist()) == indices.tolist()
    assert first[:10].tolist() != first[10:20].tolist() != first[20:30].tolist()
    resumed = loader.stream_order(indices, seed=5)  # a new process, the same positions
    np.testing.assert_array_equal(_take(resumed, 13, 12), first[13:25])
    assert _take(loader.stream_order(indices, seed=6), 0, 10).tolist() != first[:10].tolist()


@settings(max_examples=60, deadline=None)
@given(
    unit_ids=st.lists(st.integers(0, 12), min_size=1, max_size=80),
    pick=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 9),
)
def test_the_pretraining_stream_yields_only_and_all_samples_of_the_selected_units(
    unit_ids, pick, seed, batch
):
    unit_ids = np.asarray(unit_ids)
    present = np.unique(unit_ids)
    chosen = np.random.default_rng(seed).choice(present, min(pick, present.size), replace=False)
    samples = streams.selected_samples(unit_ids, chosen)
    order = loader.stream_order(samples, seed)
    taken = _take(order, 0, batch * -(-2 * samples.size // batch))
    assert np.isin(unit_ids[taken], chosen).all()  # only samples of the selected units
    first_epoch = np.sort(taken[: samples.size])  # every selected sample once per epoch
    np.testing.assert_array_equal(first_epoch, np.flatnonzero(np.isin(unit_ids, chosen)))
