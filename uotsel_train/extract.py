"""Features of a data set under a backbone, reduced to the class means ``uotsel select`` reads.

As in the paper: evaluation transform (resize 256, centre crop 224), model in evaluation mode,
unnormalised features summed per class and divided by the count; ResNet18 gives the 512-d
pooled features, MoCo-v2 the 128-d output of its projection head.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import ClassMeanAccumulator
from uotsel_train import data, models

__all__ = ["Extracted", "extract"]


class Extracted(NamedTuple):
    """``means`` ``[K, D]`` float32, ``counts`` ``[K]`` int64, ``skipped`` indices of unreadable
    images, and per-sample ``features`` ``[N, D]`` (None unless asked for; rows of skipped
    images are zeros)."""

    means: np.ndarray
    counts: np.ndarray
    skipped: list[int]
    features: np.ndarray | None


@functools.partial(jax.jit, static_argnames=("arch", "moco"))
def _embed(variables: Any, images: jax.Array, arch: str, moco: bool) -> jax.Array:
    feats = models.backbone(arch).apply(variables["backbone"], images, train=False)
    if moco:
        feats = models.MocoHead().apply({"params": variables["moco_head"]}, feats)
    return feats


def extract(
    source: Any,
    variables: dict[str, Any],
    arch: str,
    *,
    moco_head: bool = False,
    image_size: int = 224,
    resize: int = 256,
    batch_size: int = 64,
    workers: int = 4,
    keep_features: bool = False,
    allow_empty: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Extracted:
    """Class means of ``source`` (an :class:`~uotsel_train.data.ImageFolder` or any object with
    ``__len__``, ``load(i) -> (PIL image, label)`` and ``labels``) under ``variables`` as
    returned by :func:`uotsel_train.convert.load_variables` (``backbone``, and ``moco_head``
    when ``moco_head``)."""
    if moco_head and variables.get("moco_head") is None:
        raise ValueError("weights: moco_head requested but the weights have no MoCo head")
    labels = np.asarray(source.labels)
    classes = getattr(source, "classes", None)
    num_classes = len(classes) if classes is not None else int(labels.max()) + 1
    transform = functools.partial(_eval, size=image_size, resize=resize)
    acc = ClassMeanAccumulator(num_classes)
    skipped: list[int] = []
    features = None
    start = time.perf_counter()
    done = 0
    for batch in data.batches(
        source, range(len(source)), transform, batch_size, workers=workers, skipped=skipped
    ):
        emb = np.asarray(_embed(variables, jnp.asarray(batch.images), arch, moco_head), np.float64)
        acc.update(emb, batch.labels)
        if keep_features:
            if features is None:
                features = np.zeros((len(source), emb.shape[1]), np.float32)
            features[batch.indices] = emb
        done += len(batch.indices)
        if progress is not None:
            progress(f"{done}/{len(source)} images, {time.perf_counter() - start:.1f} s")
    result = acc.result(allow_empty=allow_empty)
    return Extracted(result.means, result.counts, skipped, features)


def _eval(img: Any, index: int, size: int, resize: int) -> np.ndarray:
    return data.eval_transform(img, size=size, resize=resize)
