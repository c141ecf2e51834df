import inspect
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("PIL")

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from uotsel_train import augment, data

# The released RandAugment "MC" table, transcribed from the method note (section 3):
# name -> (max, bias, integer parameter, sign flipped with p 0.5, black fill).
TABLE = {
    "autocontrast": (None, None, False, False, False),
    "brightness": (0.9, 0.05, False, False, False),
    "color": (0.9, 0.05, False, False, False),
    "contrast": (0.9, 0.05, False, False, False),
    "equalize": (None, None, False, False, False),
    "identity": (None, None, False, False, False),
    "posterize": (4, 4, True, False, False),
    "rotate": (30, 0, False, True, True),
    "sharpness": (0.9, 0.05, False, False, False),
    "shear_x": (0.3, 0, False, True, True),
    "shear_y": (0.3, 0, False, True, True),
    "solarize": (256, 0, True, False, False),
    "translate_x": (0.3, 0, False, True, True),
    "translate_y": (0.3, 0, False, True, True),
}
ENHANCE = ("brightness", "color", "contrast", "sharpness")


def expected_parameter(name, v):
    top, bias, integer, _, _ = TABLE[name]
    if top is None:
        return None
    raw = v * top / 10
    return (int(raw) if integer else raw) + bias


def magnitudes_for(name, value):
    """The magnitudes 1..9 whose transcribed parameter is ``|value|``."""
    return [v for v in range(1, 10) if np.isclose(expected_parameter(name, v), abs(value))]


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(150, 120, 3), dtype=np.uint8))


def record_ops(monkeypatch):
    calls = []

    def spy(img, name, value, policy="released"):
        calls.append((name, value, policy))
        return img

    monkeypatch.setattr(augment, "apply_op", spy)
    return calls


def test_released_table_matches_the_transcription():
    assert sorted(augment.OP_NAMES) == sorted(TABLE) and len(augment.OP_NAMES) == 14
    for name, (top, bias, integer, signed, _) in TABLE.items():
        op = augment.RELEASED_OPS[name]
        assert op.max == top and op.signed == signed
        if top is not None:
            assert op.bias == bias and op.integer == integer
        for v in range(1, 10):
            got, want = augment.released_parameter(name, v), expected_parameter(name, v)
            assert (got is None) if want is None else got == pytest.approx(want, abs=1e-12)
    # spot values, by hand
    bits = [augment.released_parameter("posterize", v) for v in range(1, 10)]
    assert bits == [4, 4, 5, 5, 6, 6, 6, 7, 7]
    assert augment.released_parameter("solarize", 9) == 230
    assert augment.released_parameter("rotate", 7) == pytest.approx(21.0)
    with pytest.raises(ValueError, match=r"^name: unknown operation 'invert'"):
        augment.released_parameter("invert", 3)


def test_released_draws_ops_magnitudes_probability_and_signs(image, monkeypatch):
    calls = record_ops(monkeypatch)
    drawn = []  # (name, magnitude) of every parameter the policy asked for
    real_parameter = augment.released_parameter

    def parameter_spy(name, magnitude):
        drawn.append((name, magnitude))
        return real_parameter(name, magnitude)

    monkeypatch.setattr(augment, "released_parameter", parameter_spy)
    tiny = image.resize((8, 8))
    rng = np.random.default_rng(11)
    draws = 4000
    for _ in range(draws):
        augment.rand_augment(tiny, rng)
    assert {policy for _, _, policy in calls} == {"released"}
    # Each of the 2 * 4000 drawn operations is applied with probability 0.5.
    assert abs(len(calls) - draws) < 200
    # Uniform over the 14 operations: about 286 applied each.
    per_op = Counter(name for name, _, _ in calls)
    assert set(per_op) == set(TABLE)
    assert all(200 < n < 370 for n in per_op.values()), per_op
    # Every applied parameter is the transcribed one for its drawn magnitude, sign aside.
    parametric = [(n, v) for n, v, _ in calls if TABLE[n][0] is not None]
    drawn = [(n, m) for n, m in drawn if TABLE[n][0] is not None]
    assert [n for n, _ in drawn] == [n for n, _ in parametric]
    for (name, value), (_, magnitude) in zip(parametric, drawn, strict=True):
        assert 1 <= magnitude <= 9
        assert abs(value) == pytest.approx(expected_parameter(name, magnitude), abs=1e-12)
    # Magnitudes uniform on 1..9 (recovered from the applied values, whose map is one-to-one
    # for every parametric operation except posterize).
    recovered = []
    for name, value in parametric:
        legal = magnitudes_for(name, value)
        assert legal, (name, value)
        if name != "posterize":
            assert len(legal) == 1
            recovered.append(legal[0])
    freq = np.bincount(recovered, minlength=11) / len(recovered)
    assert freq[0] == freq[10] == 0
    np.testing.assert_allclose(freq[1:10], 1 / 9, atol=0.025)
    bits = Counter(v for n, v in parametric if n == "posterize")
    total = sum(bits.values())
    for b, share in {4: 2 / 9, 5: 2 / 9, 6: 3 / 9, 7: 2 / 9}.items():
        assert abs(bits[b] / total - share) < 0.07, bits
    # Signs: flipped half the time for the geometric operations, never for the others.
    signed = [v for n, v in parametric if TABLE[n][3]]
    assert 0.45 < np.mean(np.asarray(signed) < 0) < 0.55
    assert all(v > 0 for n, v in parametric if not TABLE[n][3])
    # Enhancement factors always weaken: 0.14..0.86.
    factors = np.asarray([v for n, v in parametric if n in ENHANCE])
    assert factors.min() == pytest.approx(0.14) and factors.max() == pytest.approx(0.86)


def test_released_ops_against_direct_pixel_references(image):
    arr = np.asarray(image)
    h, w = arr.shape[:2]
    for value in (0.27, -0.27):
        s = int(value * w)
        want = np.zeros_like(arr)
        if s >= 0:
            want[:, : w - s] = arr[:, s:]
        else:
            want[:, -s:] = arr[:, : w + s]
        got = np.asarray(augment.apply_op(image, "translate_x", value))
        np.testing.assert_array_equal(got, want)  # whole pixels, black fill
    s = int(0.15 * h)
    want = np.zeros_like(arr)
    want[: h - s] = arr[s:]
    np.testing.assert_array_equal(np.asarray(augment.apply_op(image, "translate_y", 0.15)), want)
    for bits in (4, 7):
        mask = np.uint8(256 - 2 ** (8 - bits))
        got = np.asarray(augment.apply_op(image, "posterize", bits))
        np.testing.assert_array_equal(got, arr & mask)
    for p in (25, 230):
        got = np.asarray(augment.apply_op(image, "solarize", p))
        np.testing.assert_array_equal(got, np.where(arr >= 256 - p, 255 - arr, arr))
    np.testing.assert_array_equal(np.asarray(augment.apply_op(image, "identity", None)), arr)
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Color, ImageEnhance.Contrast)
    enhancers += (ImageEnhance.Sharpness,)
    for name, enhancer in zip(ENHANCE, enhancers, strict=True):
        np.testing.assert_array_equal(
            np.asarray(augment.apply_op(image, name, 0.41)),
            np.asarray(enhancer(image).enhance(0.41)),
        )
    np.testing.assert_array_equal(
        np.asarray(augment.apply_op(image, "autocontrast", None)),
        np.asarray(ImageOps.autocontrast(image)),
    )
    np.testing.assert_array_equal(
        np.asarray(augment.apply_op(image, "equalize", None)),
        np.asarray(ImageOps.equalize(image)),
    )
    np.testing.assert_array_equal(
        np.asarray(augment.apply_op(image, "rotate", -12.0)), np.asarray(image.rotate(-12.0))
    )
    # Geometric operations fill black under the released policy and grey under "wide".
    white = Image.new("RGB", (60, 40), (255, 255, 255))
    for name, value in [("rotate", 27.0), ("shear_x", 0.3), ("shear_y", -0.3)]:
        assert TABLE[name][4]
        released = np.asarray(augment.apply_op(white, name, value))
        wide = np.asarray(augment.apply_op(white, name, value, policy="wide"))
        filled = np.any(released != 255, axis=-1)
        assert filled.sum() > 50
        assert np.all(released[filled] == 0)
        assert np.any(np.all(released == 0, axis=-1))
        assert np.any(np.all(wide == 127, axis=-1)) and not np.any(np.all(wide == 0, axis=-1))


@pytest.mark.parametrize("policy", augment.POLICIES)
@pytest.mark.parametrize("name", augment.OP_NAMES)
def test_every_op_keeps_size_and_mode(image, name, policy):
    top = TABLE[name][0]
    for v in (1, 9):
        value = None if top is None else expected_parameter(name, v)
        out = augment.apply_op(image, name, value, policy=policy)
        assert out.size == image.size and out.mode == "RGB"


def grey_box(arr):
    grey = np.all(arr == 127, axis=-1)
    rows, cols = np.flatnonzero(grey.any(1)), np.flatnonzero(grey.any(0))
    assert grey.sum() == rows.size * cols.size  # one filled rectangle
    assert np.all(grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def cutout_abs(img, v, cx, cy):
    """A transcription of the release's ``CutoutAbs`` at a given centre (ImageDraw fills the
    rectangle's both ends)."""
    w, h = img.size
    x0, y0 = int(max(0, cx - v / 2.0)), int(max(0, cy - v / 2.0))
    x1, y1 = min(w, x0 + v), min(h, y0 + v)
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), (127, 127, 127))
    return img


@pytest.mark.parametrize("side", [10, 11, 112])
def test_cutout_is_the_releases(side):
    w, h = 150, 120
    black = Image.new("RGB", (w, h))
    widths = []
    for seed in range(300):
        rng = np.random.default_rng(seed)
        out = np.asarray(augment.cutout(black, rng, size=side))
        again = np.random.default_rng(seed)
        cx, cy = again.uniform(0, w), again.uniform(0, h)
        np.testing.assert_array_equal(out, np.asarray(cutout_abs(black, side, cx, cy)))
        _, _, left, right = grey_box(out)
        assert np.all(out[np.any(out != 127, axis=-1)] == 0)  # nothing else changed
        widths.append(right - left)
        if cx < side / 2:  # over the left edge: moved inward, not trimmed
            assert left == 0 and right == min(w, side + 1)
    assert max(widths) == min(side + 1, w)
    with pytest.raises(ValueError, match=r"^size: must be an int >= 0"):
        augment.cutout(black, np.random.default_rng(0), size=-1)


def test_cutout_box_centred_near_the_left_edge_spans_113_columns():
    # the example of the release's behaviour: a box centred at x = 10 covers columns 0-112
    class Centre:
        def __init__(self, *values):
            self.values = list(values)

        def uniform(self, low, high):
            return self.values.pop(0)

    black = Image.new("RGB", (224, 224))
    for cx, span in ((10.0, (0, 112)), (100.0, (44, 156)), (220.0, (164, 223))):
        out = np.asarray(augment.cutout(black, Centre(cx, 100.0), 112))
        cols = np.flatnonzero(np.all(out == 127, axis=-1).any(0))
        assert (cols[0], cols[-1]) == span


def test_strong_view_cutout_is_half_the_crop_and_grey():
    # the release's box: side 112, drawn with both ends (113 pixels), clipped on the right and
    # bottom edges only (at least 57 pixels left)
    black = Image.new("RGB", (224, 224))
    sides = []
    for seed in range(12):
        view = augment.strong_view(black, np.random.default_rng(seed))
        assert view.shape == (224, 224, 3)
        mask = np.all(view == 127, axis=-1)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert mask.sum() == rows.size * cols.size
        sides += [rows.size, cols.size]
    assert max(sides) == 113 and min(sides) >= 57


def test_strong_view_composes_crop_randaugment_cutout(image):
    for seed in range(5):
        rng = np.random.default_rng(seed)
        crop = data.random_resized_crop(image, rng, 64, (0.08, 1.0))
        want = np.asarray(augment.cutout(augment.rand_augment(crop, rng), rng, 32))
        got = augment.strong_view(image, np.random.default_rng(seed), size=64)
        np.testing.assert_array_equal(got, want)


def test_views_are_seeded_independent_and_shaped(image):
    weak_a = augment.weak_view(image, np.random.default_rng(7), size=64)
    weak_b = augment.weak_view(image, np.random.default_rng(7), size=64)
    np.testing.assert_array_equal(weak_a, weak_b)
    for policy in augment.POLICIES:
        strong = augment.strong_view(
            image, np.random.default_rng(8), size=64, cutout_size=32, policy=policy
        )
        again = augment.strong_view(
            image, np.random.default_rng(8), size=64, cutout_size=32, policy=policy
        )
        np.testing.assert_array_equal(strong, again)
        assert strong.shape == weak_a.shape == (64, 64, 3) and strong.dtype == np.uint8
        assert not np.array_equal(strong, weak_a)


def test_released_is_the_default_and_unknown_policies_are_refused(image, monkeypatch):
    assert augment.POLICIES[0] == "released" and set(augment.POLICIES) == {"released", "wide"}
    for fn in (augment.strong_view, augment.rand_augment):
        assert inspect.signature(fn).parameters["policy"].default == "released"
    calls = record_ops(monkeypatch)
    for seed in range(20):
        augment.strong_view(image, np.random.default_rng(seed), size=32)
    assert calls and {policy for _, _, policy in calls} == {"released"}
    with pytest.raises(ValueError, match=r"^strong_view: unknown policy 'paper'; valid: released"):
        augment.strong_view(image, np.random.default_rng(0), policy="paper")
    with pytest.raises(ValueError, match=r"^rand_augment: unknown policy 'x'; valid: released"):
        augment.rand_augment(image, np.random.default_rng(0), policy="x")
    with pytest.raises(ValueError, match=r"^num_ops: must be an int >= 0"):
        augment.rand_augment(image, np.random.default_rng(0), num_ops=-1)
    with pytest.raises(ValueError, match=r"^cutout_size: must be an int >= 0"):
        augment.strong_view(image, np.random.default_rng(0), cutout_size=2.5)


def test_wide_policy_always_applies_both_ops_up_to_magnitude_ten(image, monkeypatch):
    calls = record_ops(monkeypatch)
    rng = np.random.default_rng(5)
    for _ in range(500):
        augment.rand_augment(image, rng, policy="wide")
    assert len(calls) == 1000 and {policy for _, _, policy in calls} == {"wide"}
    assert len({name for name, _, _ in calls}) == 14
    degrees = np.asarray([v for n, v, _ in calls if n == "rotate"])
    levels = np.round(np.abs(degrees) / 3).astype(int)
    np.testing.assert_allclose(np.abs(degrees), 3 * levels)
    assert set(levels.tolist()) == set(range(1, 11))
    assert 0 < np.mean(degrees < 0) < 1
    factors = np.asarray([v for n, v, _ in calls if n in ENHANCE])
    assert factors.min() >= 0.1 - 1e-9 and factors.max() <= 1.9 + 1e-9
    assert factors.min() < 0.5 and factors.max() > 1.5  # weaker and stronger
    bits = {v for n, v, _ in calls if n == "posterize"}
    assert bits <= {4, 5, 6, 7, 8} and 4 in bits
