"""Images to uint8 batches on grain, decoded in worker processes.

Two kinds of data sets, both grain ``MapDataset`` s whose elements are whole batches:

- :func:`ordered`: the samples at ``indices`` in order, ``batch_size`` at a time, through one
  transform (evaluation and feature extraction); unreadable images are left out and counted.
- :func:`training`: the batch of every training step as a pure function of the step number:
  a target and a pre-training stream, each a seeded order reshuffled at each of its epochs
  (grain's ``shuffle`` then ``repeat``), every view of every image drawn from
  ``(seed, step, stream, sample, view)``; an unreadable image is replaced by a readable one of
  the same batch.

:func:`iterate` runs either in ``workers`` processes (grain's ``mp_prefetch``; each worker makes
whole batches, worker ``k % workers`` the ``k``-th) or, with ``workers=0``, in the calling
process. Workers write what they are reading into a small file, so that a worker that dies
(killed, out of memory) is reported with the file it was reading (:class:`WorkerDied`).

Nothing here imports JAX: worker processes import this module and start in well under a second.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np
from absl import flags
from grain._src.python.ipc import shared_memory_array
from PIL import Image

from uotsel_train.errors import WorkerDied

__all__ = [
    "Batch",
    "StepPlan",
    "WorkerDied",
    "batches",
    "iterate",
    "ordered",
    "stream_order",
    "training",
]

# What a broken image file raises while it is decoded.
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_SLOT = 512  # bytes per worker in the file of what each worker reads


class Batch(NamedTuple):
    """``images`` ``[B, ...]`` uint8, ``labels`` ``[B]`` int64, ``indices`` ``[B]`` int64
    (positions in the source; unreadable images are left out), ``bad``: ``(index, where,
    error)`` of each unreadable image."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    bad: tuple = ()


# --- what each worker is reading -------------------------------------------------------------

_WATCH: dict[str, Any] = {}


def _open_watch(path: str, worker: int, count: int) -> None:
    """In a worker (``worker_init_fn``): note where this worker's slot is."""
    del count
    _WATCH["fd"] = os.open(path, os.O_WRONLY)
    _WATCH["offset"] = worker * _SLOT


def _note(where: str) -> None:
    fd = _WATCH.get("fd")
    if fd is not None:
        os.pwrite(
            fd, where.encode("utf-8", "replace")[: _SLOT - 1].ljust(_SLOT, b"\0"), _WATCH["offset"]
        )


def _read_slot(path: str, worker: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(worker * _SLOT)
            return fh.read(_SLOT).split(b"\0", 1)[0].decode("utf-8", "replace")
    except OSError:
        return ""


# --- decoding ---------------------------------------------------------------------------------


def _where(source: Any, index: int) -> str:
    where = getattr(source, "where", None)
    return where(index) if where is not None else f"sample {index}"


def read(
    source: Any, indices: Sequence[int], make: Callable[[Image.Image, int], np.ndarray]
) -> Batch:
    """Decode ``source`` at ``indices`` and apply ``make(image, index)`` to each: the readable
    ones in order, and the unreadable ones in ``bad``."""
    images, labels, kept, bad = [], [], [], []
    for i in (int(x) for x in indices):
        where = _where(source, i)
        _note(where)
        try:
            img, label = source.load(i)
            images.append(make(img, i))
        except UNREADABLE as err:
            bad.append((i, where, f"{type(err).__name__}: {err}"))
            continue
        labels.append(label)
        kept.append(i)
    _note("")
    if not images:
        return Batch(
            np.zeros((0,), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), tuple(bad)
        )
    return Batch(
        np.stack(images), np.asarray(labels, np.int64), np.asarray(kept, np.int64), tuple(bad)
    )


def _chunk(source: Any, make: Callable, chunk: np.ndarray) -> Batch:
    return read(source, chunk, make)


def ordered(
    source: Any,
    indices: Sequence[int],
    make: Callable[[Image.Image, int], np.ndarray],
    batch_size: int,
) -> grain.MapDataset:
    """The batches of ``source`` at ``indices`` (in order, ``batch_size`` at a time, the last
    one shorter) through ``make(image, index) -> uint8 array``: a ``MapDataset`` of
    :class:`Batch`."""
    indices = np.asarray(indices, np.int64)
    chunks = [indices[lo : lo + batch_size] for lo in range(0, indices.size, batch_size)]
    return grain.MapDataset.source(chunks).map(functools.partial(_chunk, source, make))


# --- training steps ---------------------------------------------------------------------------


class StepPlan(NamedTuple):
    """What every step's batch is made of.

    Attributes:
      seed: the run's seed (orders: ``seed`` and ``seed + 1``; views: ``[seed, step, stream,
        sample, view]``).
      batch_size, source_batch_size: global images per step of each stream.
      target_rows, source_rows: this process's rows of each global batch (``slice``).
      target_views, source_views: ``((name, number, make), ...)``: each view's name, its
        number in the seed and ``make(image, rng) -> [S, S, 3] uint8``.
      source_labels: whether the pre-training labels are part of the batch.
    """

    seed: int
    batch_size: int
    source_batch_size: int
    target_rows: slice
    source_rows: slice
    target_views: tuple
    source_views: tuple
    source_labels: bool


def stream_order(indices: Any, seed: int) -> grain.MapDataset:
    """An endless order of ``indices`` ``[N]``: element ``p`` is the sample at stream position
    ``p``; each pass over ``indices`` (an epoch of the stream) is its own seeded permutation."""
    return grain.MapDataset.source(np.asarray(indices, np.int64)).shuffle(seed=seed).repeat()


def _views(views: tuple, seed: int, step: int, stream: int, img: Image.Image, index: int):
    crops = [
        make(img, np.random.default_rng([seed, step, stream, index, num])) for _, num, make in views
    ]
    return crops[0][None] if len(crops) == 1 else np.stack(crops)


def _filled(batch: Batch, count: int, first: int) -> Batch:
    """``batch`` with its unreadable images replaced by readable ones of the same batch."""
    if not batch.indices.size:
        raise ValueError(
            f"data: all {count} images of a training batch are unreadable "
            f"(first: {batch.bad[0][1] if batch.bad else first})"
        )
    if batch.indices.size < count:
        fill = np.resize(np.arange(batch.indices.size), count)
        batch = Batch(batch.images[fill], batch.labels[fill], batch.indices[fill], batch.bad)
    return batch


class _Step:
    """``(step, (target indices, pre-training indices)) -> the step's batch``: a dict of the
    parts (``target_images`` ``[b, S, S, 3]`` uint8, ``target_labels`` ``[b]`` int32,
    ``source_<view>_images``, ``source_labels``), plus ``bad`` (unreadable images)."""

    def __init__(self, target: Any, pretrain: Any, plan: StepPlan):
        self.target, self.pretrain, self.plan = target, pretrain, plan

    def _part(self, source, idx, step, stream, views) -> Batch:
        make = functools.partial(_views, views, self.plan.seed, step, stream)
        return _filled(read(source, idx, make), len(idx), int(idx[0]))

    def __call__(self, step: int, pair: tuple) -> dict:
        plan = self.plan
        t_idx, s_idx = pair
        tb = self._part(self.target, t_idx, step, 0, plan.target_views)
        out = {"target_images": tb.images[:, 0], "target_labels": tb.labels.astype(np.int32)}
        bad = list(tb.bad)
        if self.pretrain is not None:
            sb = self._part(self.pretrain, s_idx, step, 1, plan.source_views)
            for i, (name, _, _) in enumerate(plan.source_views):
                out[f"source_{name}_images"] = np.ascontiguousarray(sb.images[:, i])
            if plan.source_labels:
                out["source_labels"] = sb.labels.astype(np.int32)
            bad += list(sb.bad)
        out["bad"] = tuple(bad)
        return out


def _rows(order: grain.MapDataset, size: int, rows: slice) -> grain.MapDataset:
    return order.batch(size).map(functools.partial(_take, rows))


def _take(rows: slice, batch: np.ndarray) -> np.ndarray:
    return batch[rows]


def training(
    target: Any,
    train_indices: Any,
    pretrain: Any,
    pretrain_indices: Any,
    plan: StepPlan,
) -> grain.MapDataset:
    """Element ``s`` is the batch of step ``s`` on this process (see :class:`_Step`): the
    target stream's positions ``s * batch_size + target_rows`` and, with ``pretrain``, the
    pre-training stream's ``s * source_batch_size + source_rows``."""
    t = _rows(stream_order(train_indices, plan.seed), plan.batch_size, plan.target_rows)
    if pretrain is None:
        s = t.map(_none_like)
    else:
        s = stream_order(pretrain_indices, plan.seed + 1)
        s = _rows(s, plan.source_batch_size, plan.source_rows)
    n = min(len(t), len(s))  # both endless; zip needs equal lengths
    pairs = grain.experimental.ZipMapDataset([t[:n], s[:n]])
    return pairs.map_with_index(_Step(target, pretrain, plan))


def _none_like(_: Any) -> None:
    return None


# --- iteration --------------------------------------------------------------------------------


def _warn_bad(bad: Sequence[tuple], skipped: list | None, verb: str) -> None:
    for index, where, error in bad:
        if skipped is not None:
            skipped.append(index)
        warnings.warn(f"{verb} unreadable image {where}: {error}", stacklevel=3)


@contextlib.contextmanager
def iterate(ds: grain.MapDataset, workers: int = 0, prefetch: int = 2) -> Iterator[Iterator[Any]]:
    """A context holding an iterator over ``ds`` made by ``workers`` processes (each keeping up
    to ``prefetch`` elements ready), or in this process when ``workers == 0``. The worker
    processes end when the context does, whatever the reason.

    Raises (from the iterator):
      WorkerDied: a worker process ended without a result, naming the image it was reading.
    """
    if workers <= 0:
        it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0)))
        try:
            yield it
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        return
    if not flags.FLAGS.is_parsed():  # grain reads absl flags; this program defines none
        flags.FLAGS.mark_as_parsed()
    fd, watch = tempfile.mkstemp(prefix="uotsel-workers-")
    try:
        os.ftruncate(fd, workers * _SLOT)
        os.close(fd)
        options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch)
        stream = ds.to_iter_dataset(grain.ReadOptions(num_threads=0)).mp_prefetch(
            options, worker_init_fn=functools.partial(_open_watch, watch)
        )
        it = iter(stream)
        try:
            yield _Watched(it, watch, workers)
        finally:
            it.close()
            del it, stream
            _drain_unlinks()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(watch)


def _drain_unlinks() -> None:
    """Wait until the shared memory of the batches released so far is unlinked. grain unlinks
    it in a background thread of its own; a process that exits before that thread has run
    leaves the unlinking to Python's resource tracker, which warns about "leaked" objects."""
    gc.collect()
    shm_array = getattr(shared_memory_array, "SharedMemoryArray", None)
    pool = getattr(shm_array, "_del_thread_pool", None)
    if pool is None or not hasattr(pool, "join"):
        return
    shm_array._del_thread_pool = None  # later releases unlink at once, or in a new pool
    pool.close()
    pool.join()


class _Watched:
    """An iterator over ``mp_prefetch`` output that reports a dead worker with its file."""

    def __init__(self, it: Iterator, watch: str, workers: int):
        self.it, self.watch, self.workers, self.count = it, watch, workers, 0

    def __iter__(self) -> _Watched:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self.it)
        except RuntimeError as err:
            found = re.search(r"terminated unexpectedly with exit code (-?\d+)", str(err))
            if not found:
                raise
            worker = self.count % self.workers
            reading = _read_slot(self.watch, worker) or "no image (between images)"
            raise WorkerDied(
                f"data worker process {worker} of {self.workers} died (exit code "
                f"{found.group(1)}) while reading {reading}"
            ) from None
        self.count += 1
        return item


def batches(
    source: Any,
    indices: Sequence[int],
    make: Callable[[Image.Image, int], np.ndarray],
    batch_size: int,
    *,
    workers: int = 0,
    prefetch: int = 2,
    skipped: list[int] | None = None,
) -> Iterator[Batch]:
    """The :func:`ordered` batches of ``source``, made by ``workers`` processes (0: here).
    Unreadable images are left out with a warning naming the file; their indices are appended
    to ``skipped`` when a list is given. Batches with no readable image are not yielded."""
    with iterate(ordered(source, indices, make, batch_size), workers, prefetch) as it:
        for batch in it:
            _warn_bad(batch.bad, skipped, "skipping")
            if batch.indices.size:
                yield batch
