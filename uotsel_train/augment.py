"""The two views of an unlabelled pre-training image for the paper's eq. 7 (FixMatch-style).

- weak view: random resized crop + horizontal flip (:func:`uotsel_train.data.train_transform`);
- strong view: an independent random resized crop + flip, then RandAugment (2 operations drawn
  from the 14 below, each at a magnitude drawn uniformly in 1..10 of 10), then a 112-pixel
  cutout (a grey square at a uniformly drawn centre, clipped at the border).

All randomness comes from the ``numpy`` generator passed in, so views are reproducible per
sample whatever the thread that makes them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from uotsel_train import data

__all__ = ["OPS", "cutout", "rand_augment", "strong_view", "weak_view"]

MAX_MAGNITUDE = 10
GREY = (127, 127, 127)


def _signed(rng: np.random.Generator, value: float) -> float:
    return value if rng.random() < 0.5 else -value


def _shear(axis: int) -> Callable:
    def op(img, level, rng):
        s = _signed(rng, 0.3 * level)
        coeffs = (1, s, 0, 0, 1, 0) if axis == 0 else (1, 0, 0, s, 1, 0)
        return img.transform(img.size, Image.AFFINE, coeffs, fillcolor=GREY)

    return op


def _translate(axis: int) -> Callable:
    def op(img, level, rng):
        shift = _signed(rng, 0.3 * level * img.size[axis])
        coeffs = (1, 0, shift, 0, 1, 0) if axis == 0 else (1, 0, 0, 0, 1, shift)
        return img.transform(img.size, Image.AFFINE, coeffs, fillcolor=GREY)

    return op


def _enhance(kind) -> Callable:
    return lambda img, level, rng: kind(img).enhance(1.0 + _signed(rng, 0.9 * level))


# name -> op(image, level in [0, 1], rng)
OPS: dict[str, Callable] = {
    "identity": lambda img, level, rng: img,
    "autocontrast": lambda img, level, rng: ImageOps.autocontrast(img),
    "equalize": lambda img, level, rng: ImageOps.equalize(img),
    "rotate": lambda img, level, rng: img.rotate(_signed(rng, 30 * level), fillcolor=GREY),
    "solarize": lambda img, level, rng: ImageOps.solarize(img, 256 - int(256 * level)),
    "posterize": lambda img, level, rng: ImageOps.posterize(img, 8 - int(4 * level)),
    "color": _enhance(ImageEnhance.Color),
    "contrast": _enhance(ImageEnhance.Contrast),
    "brightness": _enhance(ImageEnhance.Brightness),
    "sharpness": _enhance(ImageEnhance.Sharpness),
    "shear_x": _shear(0),
    "shear_y": _shear(1),
    "translate_x": _translate(0),
    "translate_y": _translate(1),
}


def rand_augment(img: Image.Image, rng: np.random.Generator, num_ops: int = 2) -> Image.Image:
    """``num_ops`` operations drawn uniformly (with replacement), each at a magnitude drawn
    uniformly in ``1..10`` (of 10)."""
    names = list(OPS)
    for _ in range(num_ops):
        name = names[int(rng.integers(len(names)))]
        level = int(rng.integers(1, MAX_MAGNITUDE + 1)) / MAX_MAGNITUDE
        img = OPS[name](img, level, rng)
    return img


def cutout(img: Image.Image, rng: np.random.Generator, size: int = 112) -> Image.Image:
    """A grey ``size`` x ``size`` square at a uniformly drawn centre, clipped at the border."""
    w, h = img.size
    cx, cy = int(rng.integers(w)), int(rng.integers(h))
    box = (
        max(0, cx - size // 2),
        max(0, cy - size // 2),
        min(w, cx + size // 2),
        min(h, cy + size // 2),
    )
    img = img.copy()
    img.paste(GREY, box)
    return img


def weak_view(
    img: Image.Image,
    rng: np.random.Generator,
    size: int = 224,
    scale: tuple[float, float] = (0.08, 1.0),
) -> np.ndarray:
    """The training crop + flip: ``[size, size, 3]`` normalised."""
    return data.train_transform(img, rng, size=size, scale=scale)


def strong_view(
    img: Image.Image,
    rng: np.random.Generator,
    size: int = 224,
    cutout_size: int | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
) -> np.ndarray:
    """Crop + flip, RandAugment(2, up to 10), cutout (``cutout_size``: half the crop, 112 px
    at 224 as in the paper, when None); ``[size, size, 3]`` normalised."""
    crop = data.random_resized_crop(img, rng, size, scale)
    crop = rand_augment(crop, rng)
    cutout_size = size // 2 if cutout_size is None else cutout_size
    return data.normalise(cutout(crop, rng, cutout_size))
