import numpy as np
import pytest

pytest.importorskip("PIL")

from PIL import Image

from uotsel_train import augment, data


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(150, 120, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", list(augment.OPS))
def test_every_op_keeps_size_and_mode(image, name):
    for level in (0.1, 1.0):
        out = augment.OPS[name](image, level, np.random.default_rng(1))
        assert out.size == image.size and out.mode == "RGB"


def test_cutout_paints_a_clipped_grey_square(image):
    rng = np.random.default_rng(3)
    out = np.asarray(augment.cutout(image, rng, size=40))
    grey = np.all(out == 127, axis=-1)
    rows, cols = np.flatnonzero(grey.any(1)), np.flatnonzero(grey.any(0))
    assert 20 <= rows.size <= 40 and 20 <= cols.size <= 40
    changed = np.any(out != np.asarray(image), axis=-1)
    assert np.all(grey[changed])  # nothing outside the square changed


def test_views_are_seeded_independent_and_shaped(image):
    weak_a = augment.weak_view(image, np.random.default_rng(7), size=64)
    weak_b = augment.weak_view(image, np.random.default_rng(7), size=64)
    np.testing.assert_array_equal(weak_a, weak_b)
    strong = augment.strong_view(image, np.random.default_rng(8), size=64, cutout_size=32)
    assert strong.shape == weak_a.shape == (64, 64, 3) and strong.dtype == np.float32
    assert not np.array_equal(strong, weak_a)
    grey = (127 / 255 - data.IMAGENET_MEAN) / data.IMAGENET_STD
    assert np.any(np.all(np.isclose(strong, grey, atol=1e-5), axis=-1))  # the cutout


def test_rand_augment_draws_two_ops_with_magnitudes_up_to_ten(image, monkeypatch):
    calls = []

    def spy(name):
        return lambda img, level, rng: calls.append((name, level)) or img

    monkeypatch.setattr(augment, "OPS", {n: spy(n) for n in augment.OPS})
    for seed in range(50):
        augment.rand_augment(image, np.random.default_rng(seed))
    assert len(calls) == 100
    levels = {level for _, level in calls}
    assert min(levels) >= 0.1 and max(levels) <= 1.0 and len(levels) > 5
    assert len({name for name, _ in calls}) > 10
