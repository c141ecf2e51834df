"""Co-Tuning's category relationship ``p(y_s | y_t)`` (You, Kou, Long, Wang, NeurIPS 2020).

Co-Tuning keeps the pre-trained 1000-way classifier and, beside the target cross-entropy,
trains it on the target images against soft ImageNet labels: the image of target class ``y``
gets the distribution ``p(y_s | y_t = y)`` over the pre-training classes
(:func:`uotsel_train.losses.co_tuning_loss`). This module estimates that relationship by the
paper's *direct* approach: row ``y`` is the mean, over the target training images of class
``y``, of the pre-trained classifier's softmax (temperature 1, no calibration). Images go
through the evaluation transform (shorter side to ``image_size * 256 / 224``, centre crop)
with BatchNorm in evaluation mode, so the relationship depends only on the weights and the
data. The paper also gives a calibrated variant and a *reverse* approach (a classifier from
source probabilities to target labels); neither is implemented here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uotsel_train import data, loader, models

__all__ = ["class_sums", "estimate", "from_sums", "probabilities_fn", "relationship"]


def class_sums(probabilities: Any, labels: Any, num_target: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class sums ``[C_t, C_s]`` (float64) of ``probabilities`` ``[N, C_s]`` and per-class
    counts ``[C_t]`` (int64) of the integer ``labels`` ``[N]``.

    Raises:
      ValueError: starting with ``co_tuning:`` for shapes that disagree or a label outside
        ``0 ... num_target - 1``.
    """
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or labels.shape != probabilities.shape[:1]:
        raise ValueError(
            f"co_tuning: expected probabilities [N, C_s] and labels [N], got "
            f"{list(probabilities.shape)} and {list(labels.shape)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_target):
        raise ValueError(f"co_tuning: labels must lie in 0 ... {num_target - 1}")
    sums = np.zeros((num_target, probabilities.shape[1]), np.float64)
    np.add.at(sums, labels, probabilities)
    return sums, np.bincount(labels, minlength=num_target).astype(np.int64)


def from_sums(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``p(y_s | y_t)`` ``[C_t, C_s]`` (float32): each class's sum divided by its count.

    Raises:
      ValueError: starting with ``co_tuning:`` naming the first class without an image.
    """
    empty = np.flatnonzero(np.asarray(counts) == 0)
    if empty.size:
        raise ValueError(
            f"co_tuning: target class {int(empty[0])} has no training image, so its "
            "relationship p(y_s | y_t) cannot be estimated"
        )
    return (sums / counts[:, None]).astype(np.float32)


def relationship(probabilities: Any, labels: Any, num_target: int) -> np.ndarray:
    """The direct estimate of ``p(y_s | y_t)``: ``[C_t, C_s]``, row ``y`` the mean of
    ``probabilities`` ``[N, C_s]`` (each row a softmax over the pre-training classes) over the
    samples whose label (``labels`` ``[N]``) is ``y``.

    Example:
      >>> relationship([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]], [0, 0, 1], 2).tolist()
      [[0.75, 0.25], [0.25, 0.75]]

    Raises:
      ValueError: see :func:`class_sums` and :func:`from_sums`.
    """
    return from_sums(*class_sums(probabilities, labels, num_target))


def probabilities_fn(arch: str) -> Callable:
    """A compiled ``(backbone {"params", "batch_stats"}, head {"kernel" [D, C_s], "bias"
    [C_s]}, images [B, S, S, 3] uint8) -> [B, C_s]`` softmax of the pre-trained classifier,
    BatchNorm in evaluation mode."""
    model = models.backbone(arch)

    @jax.jit
    def probabilities(backbone, head, images):
        features = model.apply(backbone, models.normalise(images), train=False)
        return jax.nn.softmax(features @ head["kernel"] + head["bias"])

    return probabilities


def _crop(img: Any, index: int, size: int, resize: int) -> np.ndarray:
    return data.eval_transform(img, size, resize)


def estimate(
    backbone: dict[str, Any],
    head: dict[str, Any],
    arch: str,
    source: Any,
    indices: Any,
    *,
    image_size: int = 224,
    batch_size: int = 64,
    workers: int = 0,
) -> np.ndarray:
    """``p(y_s | y_t)`` ``[C_t, C_s]`` from the pre-trained ``backbone`` (``{"params",
    "batch_stats"}``) and classifier ``head`` on the samples ``indices`` ``[N]`` of the target
    ``source`` (:func:`relationship`), decoded by ``workers`` processes with the evaluation
    transform; unreadable images are left out with a warning.

    Raises:
      ValueError: starting with ``co_tuning:`` when a target class has no readable image.
    """
    probabilities = probabilities_fn(arch)
    num_target = len(source.classes)
    sums = np.zeros((num_target, np.shape(head["bias"])[0]), np.float64)
    counts = np.zeros(num_target, np.int64)
    variables = {"params": backbone["params"], "batch_stats": backbone["batch_stats"]}
    crop = functools.partial(_crop, size=image_size, resize=round(image_size * 256 / 224))
    for b in loader.batches(source, np.asarray(indices), crop, batch_size, workers=workers):
        p = np.asarray(probabilities(variables, head, jnp.asarray(b.images)))
        batch_sums, batch_counts = class_sums(p, b.labels, num_target)
        sums += batch_sums
        counts += batch_counts
    return from_sums(sums, counts)
