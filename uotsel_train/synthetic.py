"""Procedurally drawn image data sets for the CPU demonstration and the tests.

A *world* of small RGB images, each one shape in a random colour on a background texture (a
*domain*, :data:`DOMAINS`), with random position, size, rotation and pixel noise.

- The pre-training set labels every pair of a pre-training shape (:data:`SHAPES`) and a
  domain: class ``"shape/domain"``.
- A target task is a few *other* shapes (:data:`TARGET_SHAPES`, never drawn in the
  pre-training set) on one of the domains. Its classes are therefore no pre-training class;
  what it shares with some pre-training classes is the domain only.

Every shape and every domain looks the same in a mirror (the shapes are symmetric about the
vertical axis and their rotation is drawn symmetrically; the textures have no handedness), so
the horizontal flip of the training transform keeps each image in its own class and domain,
and the random resized crop (at most a 1.7x zoom with the demo's crop scale) cannot turn one
texture into another: they differ in kind, not in scale.

Everything is a pure function of a seed; nothing is read from or written to disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "DOMAINS",
    "HUES",
    "SHAPES",
    "TARGET_SHAPES",
    "Drawn",
    "background",
    "class_domain",
    "draw",
    "pretraining_set",
    "shape_mask",
    "target_set",
    "texture_signature",
]

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "hbar", "vbar")
TARGET_SHAPES = ("star", "tee", "arch", "hourglass", "frame")
DOMAINS = ("plain", "stripes", "checks", "dots", "noise")


class Drawn(NamedTuple):
    """``images`` ``[N, size, size, 3]`` uint8, ``labels`` ``[N]`` int64, ``classes`` names,
    ``domain`` ``[N]`` the domain of every image (an index into :data:`DOMAINS`)."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    domain: np.ndarray


def class_domain(name: str) -> str:
    """The domain of a pre-training class name ``"shape/domain"``."""
    return name.rpartition("/")[2]


def _mask(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Inside-the-shape mask on rotated, centred coordinates ``u`` (right), ``v`` (down) and
    radius ``r``, all broadcastable. Every shape is symmetric in ``u``."""
    width = 0.35 * r
    d = np.sqrt(u**2 + v**2)
    if shape == "disc":
        return d < r
    if shape == "square":
        return np.maximum(abs(u), abs(v)) < 0.85 * r
    if shape == "triangle":
        return (v < 0.6 * r) & (v > 1.9 * abs(u) - r)
    if shape == "cross":
        return ((abs(u) < width) & (abs(v) < r)) | ((abs(v) < width) & (abs(u) < r))
    if shape == "ring":
        return (d < r) & (d > 0.55 * r)
    if shape == "diamond":
        return abs(u) + abs(v) < 1.1 * r
    if shape == "hbar":
        return (abs(v) < width) & (abs(u) < 1.1 * r)
    if shape == "vbar":
        return (abs(u) < width) & (abs(v) < 1.1 * r)
    if shape == "star":  # five points, one pointing up
        phi = np.arctan2(u, -v)
        return d < r * (0.7 + 0.3 * np.cos(5 * phi))
    if shape == "tee":
        top = (abs(v + 0.7 * r) < 0.3 * r) & (abs(u) < r)
        return top | ((abs(u) < 0.3 * r) & (v > -r) & (v < r))
    if shape == "arch":  # an upside-down U
        legs = (abs(u) > 0.45 * r) & (abs(u) < r) & (v > -0.3 * r) & (v < r)
        return legs | ((d < r) & (d > 0.45 * r) & (v <= -0.3 * r + 0.01))
    if shape == "hourglass":
        return (abs(u) < 0.9 * abs(v) + 0.1 * r) & (abs(v) < r)
    if shape == "frame":
        box = np.maximum(abs(u), abs(v))
        return (box < 0.9 * r) & (box > 0.55 * r)
    valid = ", ".join(SHAPES + TARGET_SHAPES)
    raise ValueError(f"shape: unknown {shape!r}; valid: {valid}")


def shape_mask(shape: str, size: int = 32) -> np.ndarray:
    """``[size, size]`` bool: ``shape`` centred, upright, radius ``0.3 * size``."""
    grid = np.arange(size, dtype=np.float64) + 0.5 - size / 2
    v, u = np.meshgrid(grid, grid, indexing="ij")
    return _mask(shape, u, v, np.asarray(0.3 * size))


# Each domain's background colours lie around its own hue (evenly spaced on the colour wheel).
HUES = {"plain": 0.8, "stripes": 0.6, "checks": 0.4, "noise": 0.2, "dots": 0.0}


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``[..., 3]`` RGB in 0-255 from hue, saturation and value in 0-1."""
    k = (np.array([5.0, 3.0, 1.0]) + 6 * h[..., None]) % 6
    rgb = v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)
    return 255 * rgb


def _background(kind: str, count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``[count, S, S, 3]`` float64 background of domain ``kind``: a gradient between two
    colours of the domain's hue, darkened by the domain's texture."""
    if kind not in DOMAINS:
        raise ValueError(f"domain: unknown {kind!r}; valid: {', '.join(DOMAINS)}")
    grid = np.arange(size, dtype=np.float64) + 0.5
    y, x = np.meshgrid(grid, grid, indexing="ij")
    hue = (HUES[kind] + rng.uniform(-0.05, 0.05, size=(2, count))) % 1
    a, b = _hsv_to_rgb(
        hue, rng.uniform(0.35, 0.8, size=(2, count)), rng.uniform(0.3, 0.8, size=(2, count))
    )[:, :, None, None, :]
    direction = rng.uniform(0, 2 * np.pi, size=count)[:, None, None]
    t = ((np.cos(direction) * x + np.sin(direction) * y) / size + 1) / 2
    base = a + (b - a) * t[..., None]
    if kind == "plain":
        return base
    if kind == "stripes":  # horizontal: a mirror image is the same texture
        period = rng.uniform(4, 7, size=count)[:, None, None]
        phase = rng.uniform(0, 1, size=count)[:, None, None]
        light = np.sin(2 * np.pi * (y[None] / period + phase)) > 0
    elif kind == "checks":
        cell = rng.integers(3, 6, size=count)[:, None, None]
        light = ((x[None] // cell + y[None] // cell) % 2) == 0
    elif kind == "dots":
        step = rng.integers(4, 7, size=count)[:, None, None]
        light = ((x[None] % step) - step / 2) ** 2 + ((y[None] % step) - step / 2) ** 2 > 2.0
    else:  # noise
        blocks = rng.random((count, size // 2 + 1, size // 2 + 1)) > 0.5
        light = blocks[:, (y // 2).astype(int), (x // 2).astype(int)]
    return base * np.where(light, 1.0, 0.65)[..., None]


def _finish(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    images = images + rng.normal(0, 10, size=images.shape)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def background(domain: str, count: int, rng: np.random.Generator, *, size: int = 32):
    """``count`` images ``[count, size, size, 3]`` uint8 of ``domain`` without a shape."""
    return _finish(_background(domain, count, size, rng), rng)


def draw(
    shape: str,
    domain: str,
    count: int,
    rng: np.random.Generator,
    *,
    size: int = 32,
) -> np.ndarray:
    """``count`` images ``[count, size, size, 3]`` uint8 of ``shape`` on ``domain``."""
    grid = np.arange(size, dtype=np.float64) + 0.5
    y, x = np.meshgrid(grid, grid, indexing="ij")
    centre = rng.uniform(0.35 * size, 0.65 * size, size=(count, 2))
    radius = rng.uniform(0.2 * size, 0.32 * size, size=count)
    angle = rng.uniform(-0.35, 0.35, size=count)
    dx, dy = x[None] - centre[:, 0, None, None], y[None] - centre[:, 1, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    inside = _mask(shape, cos * dx + sin * dy, -sin * dx + cos * dy, radius[:, None, None])
    colour = rng.uniform(0, 255, size=(count, 1, 1, 3))
    images = np.where(inside[..., None], colour, _background(domain, count, size, rng))
    return _finish(images, rng)


def pretraining_set(
    per_class: int,
    seed: int,
    size: int = 32,
    shapes: Sequence[str] = SHAPES,
    domains: Sequence[str] = DOMAINS,
) -> Drawn:
    """Every (shape, domain) pair as a class, ``per_class`` images each; class
    ``"shape/domain"``."""
    rng = np.random.default_rng([seed, 1])
    images, labels, classes, domain = [], [], [], []
    for shape in shapes:
        for kind in domains:
            labels.append(np.full(per_class, len(classes)))
            domain.append(np.full(per_class, DOMAINS.index(kind)))
            classes.append(f"{shape}/{kind}")
            images.append(draw(shape, kind, per_class, rng, size=size))
    return Drawn(
        np.concatenate(images),
        np.concatenate(labels).astype(np.int64),
        classes,
        np.concatenate(domain).astype(np.int64),
    )


def target_set(
    per_class: int,
    seed: int,
    size: int = 32,
    shapes: Sequence[str] = TARGET_SHAPES,
    domain: str = "checks",
) -> Drawn:
    """A target task: ``shapes`` (classes named by shape) on ``domain``; ``per_class`` images
    each, shuffled."""
    if domain not in DOMAINS:
        raise ValueError(f"domain: unknown {domain!r}; valid: {', '.join(DOMAINS)}")
    rng = np.random.default_rng([seed, 2])
    images = np.concatenate([draw(shape, domain, per_class, rng, size=size) for shape in shapes])
    labels = np.repeat(np.arange(len(shapes)), per_class)
    order = rng.permutation(len(labels))
    return Drawn(
        images[order],
        labels[order].astype(np.int64),
        list(shapes),
        np.full(len(labels), DOMAINS.index(domain), np.int64),
    )


def texture_signature(images: np.ndarray) -> np.ndarray:
    """A texture descriptor of a set of images ``[N, S, S, 3]``: the mean power spectrum of
    their grey levels (per-image mean removed), weighted as by a difference filter so that the
    fine texture outweighs the shape and the colour gradient; flattened, unit length. It
    ignores where a pattern lies but not which way it runs: a mirror image mirrors the
    spectrum."""
    grey = np.asarray(images, np.float64).mean(axis=-1)
    grey = grey - grey.mean(axis=(1, 2), keepdims=True)
    fy, fx = np.fft.fftfreq(grey.shape[1]), np.fft.fftfreq(grey.shape[2])
    weight = np.sin(np.pi * fy[:, None]) ** 2 + np.sin(np.pi * fx[None, :]) ** 2
    power = (np.abs(np.fft.fft2(grey)) ** 2 * weight).mean(axis=0)
    power = np.fft.fftshift(power).ravel()
    return power / np.linalg.norm(power)
