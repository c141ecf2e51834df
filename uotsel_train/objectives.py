"""The training objectives (paper eq. 6 and 7) as a registry: each names the pre-training views
it needs, whether it needs the source head, and its loss in :mod:`uotsel_train.losses`.

- ``vanilla``: cross-entropy of the target head on the target batch;
- ``labelled`` (eq. 6): that plus ``lam`` times the source head's cross-entropy on the selected
  pre-training batch (one forward pass over the concatenated batch);
- ``unlabelled`` (eq. 7, FixMatch-style): that plus ``lam`` times the soft cross-entropy between
  the target head's prediction on the strong view and its softmax on the weak view (gradient
  stopped, temperature 1); with ``min_confidence`` > 0 only samples whose pseudo-label
  reaches it count, and an empty mask contributes 0 instead of NaN;
- ``co_tuning`` (You et al. 2020, the baseline of the paper's Table 1): the target
  cross-entropy plus ``lam`` times the soft cross-entropy of the *pre-trained* 1000-way head on
  the target images against ``p(y_s | y_t)`` of each image's label (:mod:`uotsel_train.cotuning`);
  no pre-training stream, the source head loaded from the weights file, not drawn.

A new objective is one loss function in :mod:`uotsel_train.losses` and one :data:`REGISTRY`
entry: the input pipeline makes the views it lists, the step concatenates them after the target
batch, and the model gets a source head when ``source_head`` is set. This module imports no JAX,
so settings are checked before JAX loads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["REGISTRY", "Objective", "Settings", "get"]


class Settings(NamedTuple):
    """The objectives' hyper-parameters: ``lam`` (weight of the pre-training term),
    ``min_confidence`` (eq. 7: least pseudo-label confidence a sample needs; 0 keeps every
    sample) and ``relationship`` (``co_tuning``: ``p(y_s | y_t)`` as an array ``[C_t, C_s]``
    whose rows sum to 1; None for the other objectives)."""

    lam: float = 1.0
    min_confidence: float = 0.0
    relationship: Any = None


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
        ``target_labels`` and, with a pre-training stream and a source head,
        ``source_labels``.
      pretrained_head: whether the source head is the pre-trained classifier of the weights
        file (its ``fc``), loaded rather than drawn, as wide as that classifier.
    """

    name: str
    source_views: tuple[str, ...]
    source_head: bool
    loss: str
    pretrained_head: bool = False

    @property
    def parts(self) -> tuple[str, ...]:
        """The image parts of a step's batch, in order: ``target``, then ``source_<view>``."""
        return ("target",) + tuple(f"source_{v}" for v in self.source_views)

    @property
    def needs_source(self) -> bool:
        return bool(self.source_views)

    @property
    def source_labels(self) -> bool:
        """Whether a step's batch holds ``source_labels``: a pre-training stream read for a
        source head (not Co-Tuning's, whose head sees the target images)."""
        return self.source_head and self.needs_source

    def loss_fn(self) -> Callable:
        from uotsel_train import losses

        return getattr(losses, self.loss)


REGISTRY: dict[str, Objective] = {
    "vanilla": Objective("vanilla", (), False, "vanilla"),
    "labelled": Objective("labelled", ("train",), True, "labelled"),
    "unlabelled": Objective("unlabelled", ("weak", "strong"), False, "unlabelled"),
    "co_tuning": Objective("co_tuning", (), True, "co_tuning", pretrained_head=True),
}


def get(name: str) -> Objective:
    """The registered objective ``name``.

    Raises:
      ValueError: an unknown name (the valid ones listed).
    """
    if name not in REGISTRY:
        raise ValueError(f"objective: unknown {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]
