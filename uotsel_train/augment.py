"""The two views of an unlabelled pre-training image for the paper's eq. 7 (FixMatch-style).

- weak view: random resized crop + horizontal flip (:func:`uotsel_train.data.train_transform`);
- strong view: its own, independent random resized crop + flip, then RandAugment, then a
  cutout (a ``(127, 127, 127)`` square of side half the crop, 112 px at 224, centred at a
  uniformly drawn pixel and clipped at the border).

Views are ``[size, size, 3]`` uint8; the normalisation happens on the device.

Two RandAugment policies (:data:`POLICIES`):

- ``"released"`` (default): RandAugment "MC" of the paper's released unlabelled-training code.
  Two operations are drawn uniformly with replacement from the 14 of :data:`RELEASED_OPS`; for
  each, a magnitude ``v`` is drawn uniformly from the integers 1..9 and the operation is applied
  with probability 0.5. Its parameter is ``v * max / 10 + bias`` (integer operations truncate
  ``v * max / 10`` before adding ``bias``); rotations, shears and translations flip their sign
  with probability 0.5 and fill with black (PIL's default). The enhancements (brightness,
  colour, contrast, sharpness) get factors 0.14..0.86, so they always weaken the image.
  Translations move by ``int(fraction * width)`` (or height) whole pixels.
- ``"wide"``: this project's own, earlier variant, not the paper's. Both operations are always
  applied, at a magnitude drawn uniformly in 1..10 (of 10); enhancement factors are
  ``1 +- 0.9 * level`` (0.1..1.9, weakening or strengthening), posterize keeps 4..8 bits,
  translations move by fractional pixels, and rotations, shears and translations fill grey.

The crop and flip are :func:`uotsel_train.data.random_resized_crop` (crop, then flip: the same
distribution as the released flip-then-crop). All randomness comes from the ``numpy`` generator
passed in, so views are reproducible per sample whatever the thread that makes them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from uotsel_train import data

__all__ = [
    "OP_NAMES",
    "POLICIES",
    "RELEASED_OPS",
    "Op",
    "apply_op",
    "cutout",
    "rand_augment",
    "released_parameter",
    "strong_view",
    "view",
    "VIEW_NUMBERS",
    "weak_view",
]

POLICIES = ("released", "wide")
GREY = (127, 127, 127)
BLACK = (0, 0, 0)

# The order in which an operation index is drawn (for both policies).
OP_NAMES = (
    "identity",
    "autocontrast",
    "equalize",
    "rotate",
    "solarize",
    "posterize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)


class Op(NamedTuple):
    """One row of the released operator table: ``max`` (None: no parameter), ``bias``,
    ``integer`` (truncate ``v * max / 10`` to an int) and ``signed`` (sign flipped with
    probability 0.5)."""

    max: float | None
    bias: float
    integer: bool
    signed: bool


_NONE = Op(None, 0, False, False)
_ENHANCE = Op(0.9, 0.05, False, False)

RELEASED_OPS: dict[str, Op] = {
    "identity": _NONE,
    "autocontrast": _NONE,
    "equalize": _NONE,
    "rotate": Op(30, 0, False, True),
    "solarize": Op(256, 0, True, False),
    "posterize": Op(4, 4, True, False),
    "color": _ENHANCE,
    "contrast": _ENHANCE,
    "brightness": _ENHANCE,
    "sharpness": _ENHANCE,
    "shear_x": Op(0.3, 0, False, True),
    "shear_y": Op(0.3, 0, False, True),
    "translate_x": Op(0.3, 0, False, True),
    "translate_y": Op(0.3, 0, False, True),
}

RELEASED_MAGNITUDES = (1, 10)  # numpy ``integers(1, 10)``: 1..9
WIDE_MAGNITUDES = (1, 11)  # 1..10
MAGNITUDE_SCALE = 10

_ENHANCERS = {
    "color": ImageEnhance.Color,
    "contrast": ImageEnhance.Contrast,
    "brightness": ImageEnhance.Brightness,
    "sharpness": ImageEnhance.Sharpness,
}


def _check_policy(policy: str, caller: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"{caller}: unknown policy {policy!r}; valid: {', '.join(POLICIES)}")


def released_parameter(name: str, magnitude: int) -> float | int | None:
    """The unsigned parameter of operation ``name`` at ``magnitude`` (1..9) under the released
    table: ``magnitude * max / 10 + bias``, truncated before the bias for integer operations;
    None for operations without a parameter.

    Raises:
      ValueError: for an unknown ``name``.
    """
    if name not in RELEASED_OPS:
        raise ValueError(f"name: unknown operation {name!r}; valid: {', '.join(RELEASED_OPS)}")
    op = RELEASED_OPS[name]
    if op.max is None:
        return None
    if op.integer:
        return int(magnitude * op.max / MAGNITUDE_SCALE) + int(op.bias)
    return float(magnitude) * op.max / MAGNITUDE_SCALE + op.bias


def _affine(img: Image.Image, coeffs: tuple, fill: tuple[int, int, int]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, coeffs, fillcolor=fill)


def apply_op(
    img: Image.Image, name: str, value: float | None, policy: str = "released"
) -> Image.Image:
    """Operation ``name`` with its final (signed) parameter ``value``; same size and mode out.

    ``value`` means: degrees (rotate), shear coefficient (shear_x/y), fraction of the width or
    height (translate_x/y), enhancement factor (color, contrast, brightness, sharpness), bits
    kept (posterize), amount taken off 256 for the threshold (solarize); ignored otherwise.
    ``policy`` sets the fill of geometric operations (``"released"``: black; ``"wide"``: grey)
    and whether translations round down to whole pixels (``"released"``).

    Raises:
      ValueError: for an unknown ``name`` or ``policy``.
    """
    _check_policy(policy, "apply_op")
    fill = BLACK if policy == "released" else GREY
    if name == "identity":
        return img
    if name == "autocontrast":
        return ImageOps.autocontrast(img)
    if name == "equalize":
        return ImageOps.equalize(img)
    if name == "rotate":
        return img.rotate(value, fillcolor=fill)
    if name == "solarize":
        return ImageOps.solarize(img, 256 - value)
    if name == "posterize":
        return ImageOps.posterize(img, value)
    if name in _ENHANCERS:
        return _ENHANCERS[name](img).enhance(value)
    if name == "shear_x":
        return _affine(img, (1, value, 0, 0, 1, 0), fill)
    if name == "shear_y":
        return _affine(img, (1, 0, 0, value, 1, 0), fill)
    if name in ("translate_x", "translate_y"):
        axis = 0 if name == "translate_x" else 1
        shift = value * img.size[axis]
        if policy == "released":
            shift = int(shift)
        coeffs = (1, 0, shift, 0, 1, 0) if axis == 0 else (1, 0, 0, 0, 1, shift)
        return _affine(img, coeffs, fill)
    raise ValueError(f"name: unknown operation {name!r}; valid: {', '.join(OP_NAMES)}")


def _signed(rng: np.random.Generator, value: float) -> float:
    return value if rng.random() < 0.5 else -value


def _released_step(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    name = OP_NAMES[int(rng.integers(len(OP_NAMES)))]
    magnitude = int(rng.integers(*RELEASED_MAGNITUDES))
    if rng.random() >= 0.5:
        return img
    value = released_parameter(name, magnitude)
    if RELEASED_OPS[name].signed:
        value = _signed(rng, value)
    return apply_op(img, name, value, "released")


def _wide_value(name: str, level: float, rng: np.random.Generator) -> float | None:
    if name in ("identity", "autocontrast", "equalize"):
        return None
    if name == "rotate":
        return _signed(rng, 30 * level)
    if name == "solarize":
        return int(256 * level)
    if name == "posterize":
        return 8 - int(4 * level)
    if name in _ENHANCERS:
        return 1.0 + _signed(rng, 0.9 * level)
    return _signed(rng, 0.3 * level)  # shears and translations


def _wide_step(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    name = OP_NAMES[int(rng.integers(len(OP_NAMES)))]
    level = int(rng.integers(*WIDE_MAGNITUDES)) / MAGNITUDE_SCALE
    return apply_op(img, name, _wide_value(name, level, rng), "wide")


def rand_augment(
    img: Image.Image, rng: np.random.Generator, num_ops: int = 2, policy: str = "released"
) -> Image.Image:
    """RandAugment under ``policy`` (one of :data:`POLICIES`): ``num_ops`` operations drawn
    uniformly with replacement; an image of the same size and mode comes out.

    Raises:
      ValueError: for an unknown ``policy`` or a negative ``num_ops``.
    """
    _check_policy(policy, "rand_augment")
    if isinstance(num_ops, bool) or not isinstance(num_ops, (int, np.integer)) or num_ops < 0:
        raise ValueError(f"num_ops: must be an int >= 0, got {num_ops!r}")
    step = _released_step if policy == "released" else _wide_step
    for _ in range(int(num_ops)):
        img = step(img, rng)
    return img


def cutout(img: Image.Image, rng: np.random.Generator, size: int = 112) -> Image.Image:
    """Cutout as the paper's release draws it (``CutoutAbs``): a centre ``(cx, cy)`` uniform
    over the image (continuous), the corner ``x0 = int(max(0, cx - size / 2))`` (rows alike),
    the far side ``x1 = int(min(w, x0 + size))``, and every pixel from ``x0`` to ``x1``
    *inclusive* (PIL's ``rectangle``) set to ``(127, 127, 127)``: a full box is ``size + 1``
    pixels wide, a box over the left or top edge is moved inward, one over the right or bottom
    edge is clipped. A copy of ``img`` comes out.

    Raises:
      ValueError: for a negative ``size``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
        raise ValueError(f"size: must be an int >= 0, got {size!r}")
    w, h = img.size
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    x0, y0 = int(max(0.0, cx - size / 2)), int(max(0.0, cy - size / 2))
    x1, y1 = int(min(w, x0 + size)), int(min(h, y0 + size))
    img = img.copy()
    img.paste(GREY, (x0, y0, min(w, x1 + 1), min(h, y1 + 1)))
    return img


def weak_view(
    img: Image.Image,
    rng: np.random.Generator,
    size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
) -> np.ndarray:
    """The training crop + flip: ``[size, size, 3]`` uint8."""
    return data.train_transform(img, rng, size=size, scale=scale)


def strong_view(
    img: Image.Image,
    rng: np.random.Generator,
    size: int = 224,
    cutout_size: int | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
    policy: str = "released",
) -> np.ndarray:
    """Crop + flip, RandAugment (2 operations under ``policy``), cutout of side
    ``cutout_size`` (None: ``size // 2``, 112 px at 224 as in the paper):
    ``[size, size, 3]`` uint8.

    Raises:
      ValueError: for an unknown ``policy`` (one of :data:`POLICIES`) or a negative
        ``cutout_size``.

    Example:
      >>> import numpy as np
      >>> from PIL import Image
      >>> img = Image.new("RGB", (80, 60), (200, 30, 90))
      >>> strong_view(img, np.random.default_rng(0), size=32).shape
      (32, 32, 3)
    """
    _check_policy(policy, "strong_view")
    cutout_size = size // 2 if cutout_size is None else cutout_size
    if (
        isinstance(cutout_size, bool)
        or not isinstance(cutout_size, (int, np.integer))
        or cutout_size < 0
    ):
        raise ValueError(f"cutout_size: must be an int >= 0 or None, got {cutout_size!r}")
    crop = data.random_resized_crop(img, rng, size, scale)
    crop = rand_augment(crop, rng, policy=policy)
    return np.asarray(cutout(crop, rng, cutout_size))


# view name -> its number in the seed of a sample's draws (``[seed, step, stream, sample, n]``)
VIEW_NUMBERS = {"train": 0, "weak": 1, "strong": 2}


def view(
    name: str,
    size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
    policy: str = "released",
) -> tuple[str, int, Callable]:
    """``(name, number, make)`` of view ``name`` (one of :data:`VIEW_NUMBERS`): ``make(image,
    rng) -> [size, size, 3]`` uint8. ``train`` and ``weak`` (eq. 7's weak view) are the
    training crop + flip, ``strong`` is :func:`strong_view` under ``policy``.

    Raises:
      ValueError: for an unknown ``name`` or ``policy``.
    """
    if name not in VIEW_NUMBERS:
        raise ValueError(f"view: unknown view {name!r}; valid: {', '.join(VIEW_NUMBERS)}")
    if name == "strong":
        _check_policy(policy, "view")
        make = functools.partial(strong_view, size=size, scale=scale, policy=policy)
    else:
        make = functools.partial(weak_view, size=size, scale=scale)
    return name, VIEW_NUMBERS[name], make
