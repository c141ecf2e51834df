"""Features of a data set under a backbone, reduced to the class means ``uotsel select`` reads.

As in the paper: evaluation transform (resize 256, centre crop 224), model in evaluation mode,
unnormalised features summed per class and divided by the count; ResNet18 gives the 512-d
pooled features, MoCo-v2 the 128-d output of its projection head.

Every batch is split over all of the process's devices. Under ``jax.distributed`` each process
takes its own contiguous share of the images (:func:`uotsel_train.parallel.process_share`) and
the per-class sums and counts are added across processes at the end, so every process returns
the class means of the whole data set.

An image that cannot be decoded is left out of the class means (with a warning); its row of
the per-sample features is zeros and its per-sample unit id (:func:`unit_ids`, the
``assignment`` the command writes) is -1, in no unit, so that ``uotsel select`` never counts,
scores or selects it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from uotsel import ClassMeanAccumulator
from uotsel.progress import Progress
from uotsel_train import data, initialise, loader, models, parallel

__all__ = ["Extracted", "extract", "unit_ids"]


class Extracted(NamedTuple):
    """``means`` ``[K, D]`` float32, ``counts`` ``[K]`` int64, ``skipped`` ascending indices of
    the unreadable images of the whole data (every process's), and per-sample ``features``
    ``[S, D]`` of the images this process extracted (``rows``, ``[S]`` indices into the data,
    contiguous and in order; all N images from one process); None unless asked for; rows of
    skipped images are zeros."""

    means: np.ndarray
    counts: np.ndarray
    skipped: list[int]
    features: np.ndarray | None
    rows: np.ndarray


@functools.partial(jax.jit, static_argnames=("arch", "moco"))
def _embed(variables: Any, images: jax.Array, arch: str, moco: bool) -> jax.Array:
    feats = models.backbone(arch).apply(
        variables["backbone"], models.normalise(images), train=False
    )
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
    features_into: Callable[[tuple[int, int]], np.ndarray] | None = None,
    allow_empty: bool = False,
    progress: bool = False,
) -> Extracted:
    """Class means of ``source`` (an :class:`~uotsel_train.data.ImageFolder` or any object with
    ``__len__``, ``load(i) -> (PIL image, label)`` and ``labels``) under ``variables`` as
    returned by :func:`uotsel_train.convert.load_variables` (``backbone``, and ``moco_head``
    when ``moco_head``). ``progress``: a bar with images per second and the time left on a
    terminal, a line every 30 s otherwise (:class:`uotsel.progress.Progress`).
    ``keep_features``: also return the per-sample features, in memory; ``features_into``:
    instead, write them into ``features_into((S, D))``, an array of zeros that need not fit in
    memory (a memory map, as :meth:`uotsel.outputs.Outputs.array` gives), returned as
    ``features``.

    Raises:
      ValueError: starting with ``weights:`` when the weights lack a part, hold NaN/inf, or give
        non-finite features or a class mean of all zeros (the index of the first image or class
        is named); starting with ``data:`` when there is no image, none could be read, or a
        class has no readable image and ``allow_empty`` is false. Means are never returned
        with NaN/inf, and a class whose mean is all zeros has no sample (count 0, only with
        ``allow_empty``).
    """
    if variables.get("backbone") is None:
        raise ValueError("weights: the weights have no backbone")
    if moco_head and variables.get("moco_head") is None:
        raise ValueError("weights: moco_head requested but the weights have no MoCo head")
    _check_finite_weights(variables, ("backbone", "moco_head") if moco_head else ("backbone",))
    initialise.check_fits(variables["backbone"], arch)
    if len(source) == 0:
        raise ValueError("data: holds no images")
    labels = np.asarray(source.labels)
    classes = getattr(source, "classes", None)
    num_classes = len(classes) if classes is not None else int(labels.max()) + 1
    transform = functools.partial(_eval, size=image_size, resize=resize)
    dim = _feature_dim(variables, arch, moco_head, image_size)
    acc = ClassMeanAccumulator(num_classes, dim)
    skipped: list[int] = []
    done = 0
    share = parallel.process_share(len(source))
    features = None
    if features_into is not None:
        features = features_into((len(share), dim))
    elif keep_features:
        features = np.zeros((len(share), dim), np.float32)
    bar = Progress(len(share), "extracting", unit="img", enabled=progress)
    batches = loader.batches(source, share, transform, batch_size, workers=workers, skipped=skipped)
    mesh = parallel.local_mesh()
    placed = parallel.replicate(mesh, variables)
    for batch in batches:
        emb = _embed_split(placed, batch.images, arch, moco_head, mesh)
        bad = ~np.all(np.isfinite(emb), axis=1)
        if bad.any():
            raise ValueError(
                f"weights: non-finite features for {int(bad.sum())} image(s) of the data "
                f"(first: image {int(np.asarray(batch.indices)[bad][0])}); the weights or the "
                "images are broken"
            )
        acc.update(emb, batch.labels)
        if features is not None:
            features[batch.indices - share[0]] = emb
        done += len(batch.indices)
        bar.update(len(batch.indices))
    bar.close()
    done = int(parallel.sum_over_processes(np.asarray([done]))[0])
    skipped = _skipped_everywhere(skipped, len(source))
    if done == 0:
        raise ValueError(f"data: none of the {len(source)} images could be read")
    if jax.process_count() > 1:
        sums, counts = acc.totals()
        acc = ClassMeanAccumulator(num_classes)
        acc.add_totals(parallel.sum_over_processes(sums), parallel.sum_over_processes(counts))
    result = acc.result(allow_empty=True)
    empty = np.flatnonzero(result.counts == 0)
    if empty.size and not allow_empty:
        first = f"{int(empty[0])} ({classes[empty[0]]})" if classes is not None else int(empty[0])
        raise ValueError(
            f"data: {empty.size} of {num_classes} classes have no readable image (first: "
            f"{first}); pass --allow-empty-classes (allow_empty=True) to keep them as zero "
            "rows with count 0"
        )
    if not np.all(np.isfinite(result.means)):
        raise ValueError("weights: the class means hold non-finite values (features too large)")
    zero = np.flatnonzero((result.counts > 0) & ~np.any(result.means != 0, axis=1))
    if zero.size:
        raise ValueError(
            f"weights: the mean feature of {zero.size} class(es) is all zeros (first: class "
            f"{int(zero[0])}); the weights give zero features for the data"
        )
    return Extracted(result.means, result.counts, skipped, features, share)


def unit_ids(labels: np.ndarray, skipped: list[int]) -> np.ndarray:
    """``[N]`` int64 per-sample unit ids: the ``labels`` ``[N]``, with -1 (in no unit,
    ``uotsel._checks.NO_UNIT``, which every reader of unit ids honours or refuses) for the
    ``skipped`` images, which are in no class mean.

    Example:
      >>> unit_ids(np.array([0, 0, 1, 1]), [2]).tolist()
      [0, 0, -1, 1]
    """
    ids = np.array(labels, np.int64)
    ids[np.asarray(skipped, np.int64)] = -1
    return ids


def _skipped_everywhere(skipped: list[int], size: int) -> list[int]:
    """The ascending indices of the images any process skipped (of ``size``): this process's
    ``skipped`` with one process."""
    if jax.process_count() == 1:
        return sorted(skipped)
    mask = np.zeros(size, np.int32)
    mask[np.asarray(skipped, np.int64)] = 1
    return np.flatnonzero(parallel.sum_over_processes(mask)).tolist()


def _feature_dim(variables: Any, arch: str, moco: bool, image_size: int) -> int:
    """The feature dimension of the model, from shapes alone."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.uint8)
    return int(jax.eval_shape(_embed, variables, images, arch, moco).shape[1])


def _embed_split(variables: Any, images: np.ndarray, arch: str, moco: bool, mesh: Any):
    """``[b, C]`` float64 features of ``images`` ``[b, H, W, 3]``, the batch split over the
    devices of ``mesh`` (padded with blank images to a multiple of them)."""
    b = images.shape[0]
    pad = -b % mesh.size
    if pad:
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    split = jax.device_put(images, NamedSharding(mesh, PartitionSpec("data")))
    return np.asarray(_embed(variables, split, arch, moco), np.float64)[:b]


def _check_finite_weights(variables: dict[str, Any], parts: tuple[str, ...]) -> None:
    for part in parts:
        leaves, _ = jax.tree_util.tree_flatten_with_path(variables[part])
        for path, leaf in leaves:
            value = np.asarray(leaf)
            name = "/".join([part, *(str(getattr(k, "key", k)) for k in path)])
            if value.dtype.kind not in "fiub":
                raise ValueError(f"weights: {name} is not a numeric array ({value.dtype})")
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise ValueError(f"weights: non-finite values in {name}")


def _eval(img: Any, index: int, size: int, resize: int) -> np.ndarray:
    return data.eval_transform(img, size=size, resize=resize)
