"""The training objectives (paper eq. 6 and 7) as a registry: each names the pre-training views
it needs, whether it needs the source head, and its loss in :mod:`uotsel_train.losses`.

- ``vanilla``: cross-entropy of the target head on the target batch;
- ``labelled`` (eq. 6): that plus ``lam`` times the source head's cross-entropy on the selected
  pre-training batch (one forward pass over the concatenated batch);
- ``unlabelled`` (eq. 7, FixMatch-style): that plus ``lam`` times the soft cross-entropy between
  the target head's prediction on the strong view and its softmax on the weak view (gradient
  stopped, temperature 1); with ``min_confidence`` > 0 only samples whose pseudo-label
  reaches it count, and an empty mask contributes 0 instead of NaN.

A new objective is one loss function in :mod:`uotsel_train.losses` and one :data:`REGISTRY`
entry: the input pipeline makes the views it lists, the step concatenates them after the target
batch, and the model gets a source head when ``source_head`` is set. This module imports no JAX,
so settings are checked before JAX loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

__all__ = ["REGISTRY", "Objective", "Settings", "get"]


class Settings(NamedTuple):
    """The objectives' hyper-parameters: ``lam`` (weight of the pre-training term) and
    ``min_confidence`` (eq. 7: least pseudo-label confidence a sample needs; 0 keeps every
    sample)."""

    lam: float = 1.0
    min_confidence: float = 0.0


class Objective(NamedTuple):
    """One objective.

    Attributes:
      name: its registry key.
      source_views: the views of each selected pre-training image a step needs, in batch
        order (``()``: no pre-training stream). ``train``: the training crop; ``weak`` and
        ``strong``: the two views of eq. 7 (:mod:`uotsel_train.augment`).
      source_head: whether the model needs the source head (pre-training labels).
      loss: the name of a function of :mod:`uotsel_train.losses`, ``(logits, batch,
        settings) -> (loss, metrics)``; ``logits[part]`` is the pair ``(target_head [n, C_t],
        source_head [n, C_s] or None)`` of each part of :attr:`parts`; ``batch`` holds
        ``target_labels`` and, with a source head, ``source_labels``.
    """

    name: str
    source_views: tuple[str, ...]
    source_head: bool
    loss: str

    @property
    def parts(self) -> tuple[str, ...]:
        """The image parts of a step's batch, in order: ``target``, then ``source_<view>``."""
        return ("target",) + tuple(f"source_{v}" for v in self.source_views)

    @property
    def needs_source(self) -> bool:
        return bool(self.source_views)

    def loss_fn(self) -> Callable:
        from uotsel_train import losses

        return getattr(losses, self.loss)


REGISTRY: dict[str, Objective] = {
    "vanilla": Objective("vanilla", (), False, "vanilla"),
    "labelled": Objective("labelled", ("train",), True, "labelled"),
    "unlabelled": Objective("unlabelled", ("weak", "strong"), False, "unlabelled"),
}


def get(name: str) -> Objective:
    """The registered objective ``name``.

    Raises:
      ValueError: an unknown name (the valid ones listed).
    """
    if name not in REGISTRY:
        raise ValueError(f"objective: unknown {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]
