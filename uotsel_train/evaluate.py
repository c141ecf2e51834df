"""Evaluation of the target head: top-1 and mean per-class accuracy (the mean of per-class
recall), on every device of every process.

Each process scores its share of the samples on its own devices with the evaluation transform
(shorter side to ``image_size * 256 / 224``, centre crop); the per-class counts are summed over
processes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from uotsel_train import data, loader, models, parallel

__all__ = ["accuracy", "predictor"]


def predictor(model: Any) -> Callable:
    """A compiled ``(variables, images [B, S, S, 3] uint8) -> labels [B]`` of the target
    head."""

    @jax.jit
    def predict(variables, images):
        logits, _, _ = model.apply(variables, models.normalise(images), train=False)
        return jnp.argmax(logits, axis=1)

    return predict


def accuracy(
    predict: Callable,
    variables: Any,
    source: Any,
    indices: Any = None,
    *,
    image_size: int = 224,
    batch_size: int = 64,
    workers: int = 0,
) -> dict[str, float]:
    """``{"top1", "mean_class_acc"}`` of ``predict`` (from :func:`predictor`) on ``source``
    (the samples ``indices`` ``[N]``, all when None), decoded by ``workers`` processes
    (:func:`uotsel_train.loader.batches`; 0: in this process). Unreadable images are left out
    with a warning.

    Raises:
      ValueError: when no image could be read.
    """
    local = Mesh(np.asarray(jax.local_devices()), ("data",))
    variables = jax.device_put(
        parallel.local_copy(variables), NamedSharding(local, PartitionSpec())
    )
    split = NamedSharding(local, PartitionSpec("data"))
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    num_classes = len(source.classes)
    mine = np.array_split(indices, jax.process_count())[jax.process_index()]
    counts = np.zeros((2, num_classes), np.int64)  # correct, total
    resize = round(image_size * 256 / 224)
    batch_size = -(-batch_size // local.size) * local.size
    crop = functools.partial(_crop, size=image_size, resize=resize)
    for b in loader.batches(source, mine, crop, batch_size, workers=workers):
        n = len(b.labels)
        padded = -(-n // local.size) * local.size
        images = np.concatenate([b.images, np.zeros((padded - n, *b.images.shape[1:]), np.uint8)])
        p = np.asarray(predict(variables, jax.device_put(images, split)))[:n]
        np.add.at(counts[0], b.labels, p == b.labels)
        np.add.at(counts[1], b.labels, 1)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        counts = np.asarray(multihost_utils.process_allgather(counts)).sum(axis=0)
    seen = counts[1] > 0
    if not seen.any():
        raise ValueError("test: no readable images to evaluate")
    return {
        "top1": float(counts[0].sum() / counts[1].sum()),
        "mean_class_acc": float(np.mean(counts[0][seen] / counts[1][seen])),
    }


def _crop(img: Any, index: int, size: int, resize: int) -> np.ndarray:
    return data.eval_transform(img, size, resize)
