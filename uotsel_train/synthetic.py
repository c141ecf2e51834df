"""Procedurally drawn image data sets for the CPU demonstration and the tests.

A *world* of small RGB images, each one shape (``SHAPES``) in a random colour on a background
texture (``BACKGROUNDS``), with random position, size, rotation and pixel noise. Every (shape,
background) pair is a class of the pre-training set. A target set is a few of the shapes on a
background of its own, close to one of the pre-training backgrounds (stripes, in the other
diagonal direction), so that only some pre-training classes are related to it: the same shapes
on stripes.

Everything is a pure function of a seed; nothing is read from or written to disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["BACKGROUNDS", "SHAPES", "Drawn", "draw", "pretraining_set", "target_set"]

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "hbar", "vbar")
BACKGROUNDS = ("plain", "stripes", "checks", "dots", "noise")


class Drawn(NamedTuple):
    """``images`` ``[N, size, size, 3]`` uint8, ``labels`` ``[N]`` int64, ``classes`` names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]


def _mask(shape: str, u: np.ndarray, v: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Inside-the-shape mask on rotated, centred coordinates ``u, v`` ``[N, S, S]``."""
    r = radius[:, None, None]
    width = 0.35 * r
    if shape == "disc":
        return u**2 + v**2 < r**2
    if shape == "square":
        return np.maximum(abs(u), abs(v)) < 0.85 * r
    if shape == "triangle":
        return (v < 0.6 * r) & (v > 1.9 * abs(u) - r)
    if shape == "cross":
        return ((abs(u) < width) & (abs(v) < r)) | ((abs(v) < width) & (abs(u) < r))
    if shape == "ring":
        d = np.sqrt(u**2 + v**2)
        return (d < r) & (d > 0.55 * r)
    if shape == "diamond":
        return abs(u) + abs(v) < 1.1 * r
    if shape == "hbar":
        return (abs(v) < width) & (abs(u) < 1.1 * r)
    if shape == "vbar":
        return (abs(u) < width) & (abs(v) < 1.1 * r)
    raise ValueError(f"shape: unknown {shape!r}; valid: {', '.join(SHAPES)}")


def _background(kind: str, count: int, x, y, size: int, rng: np.random.Generator):
    """``[count, S, S, 3]`` float64 background of ``kind`` (or ``"stripes-reversed"``)."""
    a, b = rng.uniform(60, 190, size=(2, count, 1, 1, 3))
    direction = rng.uniform(0, 2 * np.pi, size=count)[:, None, None]
    t = ((np.cos(direction) * x + np.sin(direction) * y) / size + 1) / 2
    base = a + (b - a) * t[..., None]
    if kind == "plain":
        return base
    if kind in ("stripes", "stripes-reversed"):
        period = rng.uniform(4, 7, size=count)[:, None, None]
        diagonal = x + y if kind == "stripes" else x - y
        light = np.sin(2 * np.pi * diagonal[None] / period) > 0
    elif kind == "checks":
        cell = rng.integers(3, 6, size=count)[:, None, None]
        light = ((x[None] // cell + y[None] // cell) % 2) == 0
    elif kind == "dots":
        step = rng.integers(4, 7, size=count)[:, None, None]
        light = ((x[None] % step) - step / 2) ** 2 + ((y[None] % step) - step / 2) ** 2 > 2.0
    elif kind == "noise":
        blocks = rng.random((count, size // 2 + 1, size // 2 + 1)) > 0.5
        light = blocks[:, (y // 2).astype(int), (x // 2).astype(int)]
    else:
        raise ValueError(f"background: unknown {kind!r}; valid: {', '.join(BACKGROUNDS)}")
    return base * np.where(light, 1.0, 0.65)[..., None]


def draw(
    shape: str,
    background: str,
    count: int,
    rng: np.random.Generator,
    *,
    size: int = 32,
) -> np.ndarray:
    """``count`` images ``[count, size, size, 3]`` uint8 of ``shape`` on ``background``."""
    grid = np.arange(size, dtype=np.float64) + 0.5
    y, x = np.meshgrid(grid, grid, indexing="ij")
    centre = rng.uniform(0.35 * size, 0.65 * size, size=(count, 2))
    radius = rng.uniform(0.2 * size, 0.32 * size, size=count)
    angle = rng.uniform(-0.35, 0.35, size=count)
    dx, dy = x[None] - centre[:, 0, None, None], y[None] - centre[:, 1, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    inside = _mask(shape, cos * dx + sin * dy, -sin * dx + cos * dy, radius)
    colour = rng.uniform(0, 255, size=(count, 1, 1, 3))
    images = np.where(inside[..., None], colour, _background(background, count, x, y, size, rng))
    images += rng.normal(0, 10, size=images.shape)
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def pretraining_set(per_class: int, seed: int, size: int = 32) -> Drawn:
    """Every (shape, background) pair as a class, ``per_class`` images each; class
    ``"shape/background"``."""
    rng = np.random.default_rng([seed, 1])
    images, labels, classes = [], [], []
    for shape in SHAPES:
        for background in BACKGROUNDS:
            labels.append(np.full(per_class, len(classes)))
            classes.append(f"{shape}/{background}")
            images.append(draw(shape, background, per_class, rng, size=size))
    return Drawn(np.concatenate(images), np.concatenate(labels).astype(np.int64), classes)


def target_set(
    per_class: int,
    seed: int,
    size: int = 32,
    shapes: Sequence[str] = ("disc", "square", "triangle", "cross", "ring"),
) -> Drawn:
    """A target task: ``shapes`` on stripes running along the other diagonal than the
    pre-training set's stripes; ``per_class`` images each, shuffled."""
    rng = np.random.default_rng([seed, 2])
    images = np.concatenate(
        [draw(shape, "stripes-reversed", per_class, rng, size=size) for shape in shapes]
    )
    labels = np.repeat(np.arange(len(shapes)), per_class)
    order = rng.permutation(len(labels))
    return Drawn(images[order], labels[order].astype(np.int64), list(shapes))
