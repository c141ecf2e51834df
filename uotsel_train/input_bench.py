"""How fast the host feeds a config's training steps, without a model (``uotsel-train
input-bench``): run it before a long run to see whether the host can keep the accelerator busy.
"""

from __future__ import annotations

import time
from typing import Any

from uotsel_train import input_pipeline, objectives, parallel

__all__ = ["measure"]


def measure(cfg: Any, steps: int, inputs: input_pipeline.Inputs | None = None) -> dict:
    """Iterate the training pipeline of ``cfg`` (a validated config) for one warm-up step and
    then ``steps`` steps, every image decoded and cropped as in training and the batches placed
    on the devices.

    Returns:
      ``images_per_s`` (images of both streams a second, each image counted once whatever its
      number of views), ``steps``, ``workers``, ``prefetch``, ``images_per_step``,
      ``views_per_step`` (crops made a step), ``seconds`` (after the warm-up) and ``replaced``
      (unreadable images replaced within their batch).

    Raises:
      ValueError: as :func:`uotsel_train.input_pipeline.load_inputs`, before any work.
      uotsel_train.loader.WorkerDied: a worker process died.
    """
    inputs = inputs if inputs is not None else input_pipeline.load_inputs(cfg)
    objective = objectives.get(cfg.objective)
    mesh = parallel.data_mesh()
    source = cfg.source_batch_size if objective.needs_source else 0
    with input_pipeline.Pipeline(cfg, inputs, mesh, 0, steps + 1) as pipeline:
        batch, _ = pipeline.next()  # warm-up: worker start, first batch
        _wait(batch)
        start = time.perf_counter()
        for _ in range(steps):
            batch, _ = pipeline.next()
        _wait(batch)
        seconds = time.perf_counter() - start
        replaced = pipeline.skipped
        del batch
    return {
        "images_per_s": (cfg.batch_size + source) * steps / seconds,
        "steps": steps,
        "workers": cfg.workers,
        "prefetch": cfg.prefetch,
        "images_per_step": cfg.batch_size + source,
        "views_per_step": cfg.batch_size + source * len(objective.source_views),
        "seconds": seconds,
        "replaced": replaced,
    }


def _wait(batch: dict) -> None:
    for value in batch.values():
        value.block_until_ready()
