import numpy as np
import pytest

import uotsel


def _reference(features, labels, k):
    return np.stack([features[labels == c].astype(np.float64).mean(0) for c in range(k)])


def test_class_means_match_direct_computation(rng):
    features = rng.normal(size=(1000, 12)).astype(np.float32)
    labels = rng.integers(0, 7, size=1000)
    cm = uotsel.class_means(features, labels)
    np.testing.assert_allclose(cm.means, _reference(features, labels, 7), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(cm.counts, np.bincount(labels, minlength=7))
    assert cm.means.dtype == np.float32 and cm.counts.dtype == np.int64


@pytest.mark.parametrize("chunk", [1, 3, 64, 999, 5000])
def test_chunking_does_not_change_the_result(rng, chunk):
    features = rng.normal(size=(999, 4))
    labels = rng.integers(0, 5, size=999)
    whole = uotsel.class_means(features, labels, 5)
    chunked = uotsel.class_means(features, labels, 5, chunk_size=chunk)
    np.testing.assert_allclose(chunked.means, whole.means, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(chunked.counts, whole.counts)


def test_memory_mapped_features(tmp_path, rng):
    features = rng.normal(size=(500, 8)).astype(np.float32)
    labels = rng.integers(0, 3, size=500)
    np.save(tmp_path / "f.npy", features)
    mm = np.load(tmp_path / "f.npy", mmap_mode="r")
    cm = uotsel.class_means(mm, labels, chunk_size=64)
    np.testing.assert_allclose(cm.means, _reference(features, labels, 3), rtol=1e-6, atol=1e-6)


def test_accumulator_merges_shards_by_count(rng):
    features = rng.normal(size=(300, 6))
    labels = rng.integers(0, 4, size=300)
    shards = [uotsel.class_means(features[i::3], labels[i::3], 4) for i in range(3)]
    acc = uotsel.ClassMeanAccumulator(4)
    for shard in shards:
        acc.update_means(shard.means, shard.counts)
    merged = acc.result()
    whole = uotsel.class_means(features, labels, 4)
    np.testing.assert_allclose(merged.means, whole.means, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(merged.counts, whole.counts)


def test_empty_classes_raise_unless_allowed():
    features = np.ones((3, 2))
    labels = np.array([0, 0, 2])
    with pytest.raises(ValueError, match=r"labels: 1 of 3 classes have no samples \(first: 1\)"):
        uotsel.class_means(features, labels)
    cm = uotsel.class_means(features, labels, allow_empty=True)
    assert cm.counts.tolist() == [2, 0, 1] and cm.means[1].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "labels, kwargs, match",
    [
        (np.array([0, 1, 5]), {"num_classes": 3}, "labels: class id 5 is out of range"),
        (np.array([0, -1, 1]), {}, "labels: contains a negative class id"),
        (np.array([0, 1]), {}, "labels: has 2 entries but features has 3 rows"),
        (np.array([0.5, 1, 2]), {}, "labels: 0.5 is not a whole number"),
        (np.array([0.0, 1, np.nan]), {}, "labels: nan is not a whole number"),
        (np.array(["0", "1", "2"]), {}, "labels: expected integer class ids"),
        (np.array([0, 1, 10**12]), {}, r"labels: at least 999999999998 of 1000000000001 classes"),
        (np.array([[0, 1, 2]]), {}, "labels: expected a 1-d array"),
    ],
)
def test_bad_labels(labels, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        uotsel.class_means(np.ones((3, 2)), labels, **kwargs)


def test_whole_float_labels_are_accepted():
    cm = uotsel.class_means(np.ones((3, 2)), np.array([0.0, 1.0, 1.0]))
    assert cm.counts.tolist() == [1, 2]


def test_huge_labels_are_refused_before_allocating():
    labels = np.array([0, 1, 10**15])
    with pytest.raises(ValueError, match="labels: class id 1000000000000000 implies"):
        uotsel.class_means(np.ones((3, 2)), labels, allow_empty=True)
    with pytest.raises(ValueError, match="num_classes: 1000000000000001 classes of dimension 2"):
        uotsel.class_means(np.ones((3, 2)), labels, 10**15 + 1, allow_empty=True)


def test_bad_features():
    with pytest.raises(ValueError, match="features: contains 1 NaN"):
        uotsel.class_means(np.array([[1.0, np.nan]]), np.array([0]))
    with pytest.raises(ValueError, match="features: is empty"):
        uotsel.class_means(np.ones((0, 2)), np.array([], int))
    with pytest.raises(
        ValueError, match=r"features: expected a 2-d array \[N, D\], got shape \(5,\)"
    ):
        uotsel.class_means(np.ones(5), np.zeros(5, int))
    with pytest.raises(ValueError, match="features: has dimension 0"):
        uotsel.class_means(np.ones((3, 0)), np.zeros(3, int))
