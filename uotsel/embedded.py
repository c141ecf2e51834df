"""The paper's released class-mean features, shipped inside the package (Apache-2.0).

``resnet18_supervised``: 512-d average-pool features of torchvision's supervised ResNet18 for
ImageNet and eight target data sets; ``mocov2_resnet50``: 128-d MLP-head outputs of the
800-epoch MoCo-v2 ResNet50 for ImageNet and CUB. See ``uotsel/data/NOTICE``.

Address them as ``embedded:<backbone>/<dataset>`` wherever a unit file is accepted, or load them
with :func:`load`.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

__all__ = [
    "BACKBONES",
    "DATASETS",
    "EmbeddedMeans",
    "available",
    "imagenet_classes",
    "load",
    "shape",
]

PREFIX = "embedded:"
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
BACKBONES = ("resnet18_supervised", "mocov2_resnet50")
DATASETS = {
    "resnet18_supervised": (
        "imagenet",
        "cub",
        "dogs",
        "cars",
        "pets",
        "sun397",
        "aircraft",
        "dtd",
        "caltech101",
    ),
    "mocov2_resnet50": ("imagenet", "cub"),
}


class EmbeddedMeans(NamedTuple):
    """Class means of one embedded data set.

    Attributes:
      means: ``[K, D]`` float32 unnormalised class means.
      counts: ``[K]`` int64 training images per class.
      names: ``[K]`` class names for ImageNet, else None.
    """

    means: np.ndarray
    counts: np.ndarray
    names: np.ndarray | None


def available() -> list[str]:
    """Every ``<backbone>/<dataset>`` that can be loaded."""
    return [f"{b}/{d}" for b in BACKBONES for d in DATASETS[b]]


def path_of(backbone: str, dataset: str) -> str:
    return os.path.join(DATA_DIR, f"{backbone}__{dataset}.npz")


def resolve(name: str, arg: str = "source") -> tuple[str, np.ndarray | None]:
    """File path (and ImageNet class names, when it is ImageNet) of ``<backbone>/<dataset>``."""
    backbone, _, dataset = name.partition("/")
    if backbone not in DATASETS or dataset not in DATASETS[backbone]:
        raise ValueError(
            f"{arg}: unknown embedded data {name!r}; available: {', '.join(available())}"
        )
    names = imagenet_classes()["name"] if dataset == "imagenet" else None
    return path_of(backbone, dataset), names


def load(backbone: str, dataset: str) -> EmbeddedMeans:
    """The embedded class means of ``dataset`` under ``backbone``.

    Example:
      >>> from uotsel import embedded
      >>> embedded.load("resnet18_supervised", "cub").means.shape
      (200, 512)
    """
    if not isinstance(backbone, str) or backbone not in DATASETS:
        raise ValueError(
            f"backbone: unknown backbone {backbone!r}; available: {', '.join(BACKBONES)}"
        )
    if not isinstance(dataset, str) or dataset not in DATASETS[backbone]:
        raise ValueError(
            f"dataset: unknown data set {dataset!r} for {backbone}; available: "
            f"{', '.join(DATASETS[backbone])}"
        )
    path, names = resolve(f"{backbone}/{dataset}", "dataset")
    with np.load(path, allow_pickle=False) as data:
        return EmbeddedMeans(data["means"], data["counts"], names)


def shape(backbone: str, dataset: str) -> tuple[int, int]:
    """``(units, dimension)`` of the embedded class means of ``dataset`` under ``backbone``.

    Example:
      >>> from uotsel import embedded
      >>> embedded.shape("mocov2_resnet50", "imagenet")
      (1000, 128)
    """
    means = load(backbone, dataset).means
    return int(means.shape[0]), int(means.shape[1])


def concept_ids(concept: str, arg: str = "matching") -> np.ndarray:
    """The ImageNet class ids ``[C]`` (ascending) of ``concept`` (``bird``: 59, ``dog``: 118,
    ...), the label-based selection of the paper's Table 1 for a target of that concept.

    Raises:
      ValueError: starting with ``arg`` for an unknown concept, listing the valid ones.
    """
    concepts = imagenet_classes()["concept"].astype(str)
    valid = sorted(set(concepts.tolist()))
    if concept not in valid:
        raise ValueError(f"{arg}: unknown ImageNet concept {concept!r}; valid: {', '.join(valid)}")
    return np.flatnonzero(concepts == concept).astype(np.int64)


def imagenet_classes() -> dict[str, np.ndarray]:
    """ImageNet class ``wnid``, ``name`` and coarse ``concept`` ``[1000]`` in label order.

    ``concept`` groups the classes into 11 concepts (dog 118, bird 59, ...), which give the
    known-matching classes of the paper's recall metric (Table 4).
    """
    with np.load(os.path.join(DATA_DIR, "imagenet_classes.npz"), allow_pickle=False) as data:
        return {k: data[k] for k in ("wnid", "name", "concept")}
