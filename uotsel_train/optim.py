"""The paper's optimiser: SGD with Nesterov momentum 0.9, weight decay coupled as in torch
(added to the gradient) on every parameter, freshly drawn heads at 10x the backbone learning
rate, and the learning rate x0.1 at epochs 60 and 80, where an epoch is one pass over the
target set.

A head loaded pre-trained (Co-Tuning's kept 1000-way classifier, an objective's
``pretrained_head``) learns at the backbone's rate, as in the Co-Tuning release (thuml/CoTuning,
``train.py``: the backbone and the kept classifier at the base lr, only the new head at 10x).
:func:`param_groups` is the one place that decides which group a parameter belongs to.

The schedule counts optimiser steps of the *global* batch, so it is the same at every device
count (the released code's schedule never decays on one GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax

__all__ = ["HEAD_MODULES", "PRETRAINED_HEAD", "learning_rate", "param_groups", "schedules", "sgd"]

HEAD_MODULES = ("target_head", "source_head")
# The head an objective with ``pretrained_head`` loads from the weights instead of drawing.
PRETRAINED_HEAD = "source_head"


def learning_rate(
    base: float, steps_per_epoch: int, milestones: Sequence[int] = (60, 80), lr_decay: float = 0.1
) -> optax.Schedule:
    """``base * lr_decay ** (number of milestones <= epoch)`` at step ``s``, epoch ``s //
    steps_per_epoch`` (torch's MultiStepLR stepped once per epoch)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch: must be >= 1, got {steps_per_epoch}")
    return optax.piecewise_constant_schedule(
        base, {int(m) * steps_per_epoch: lr_decay for m in milestones}
    )


def schedules(
    base_lr: float,
    steps_per_epoch: int,
    *,
    head_lr_multiplier: float = 10.0,
    milestones: Sequence[int] = (60, 80),
    lr_decay: float = 0.1,
) -> dict[str, optax.Schedule]:
    """The learning-rate schedule of each parameter group: ``"backbone"`` at ``base_lr``,
    ``"head"`` at ``base_lr * head_lr_multiplier`` (see :func:`learning_rate`)."""
    rates = {"backbone": 1.0, "head": head_lr_multiplier}
    return {
        group: learning_rate(base_lr * m, steps_per_epoch, milestones, lr_decay)
        for group, m in rates.items()
    }


def param_groups(params: Any, pretrained_head: bool = False) -> Any:
    """A label tree for ``optax.multi_transform`` over ``params`` (a dict of modules):
    ``"head"`` for the parameters of the freshly drawn target and source heads, ``"backbone"``
    for the rest, including the source head when ``pretrained_head`` (it was loaded
    pre-trained, so it learns at the backbone's rate)."""
    fresh = tuple(h for h in HEAD_MODULES if not (pretrained_head and h == PRETRAINED_HEAD))
    labels = {}
    for name, sub in params.items():
        group = "head" if name in fresh else "backbone"
        labels[name] = jax.tree.map(lambda _, g=group: g, sub)
    return labels


def sgd(
    base_lr: float,
    weight_decay: float,
    steps_per_epoch: int,
    *,
    head_lr_multiplier: float = 10.0,
    momentum: float = 0.9,
    nesterov: bool = True,
    milestones: Sequence[int] = (60, 80),
    lr_decay: float = 0.1,
    pretrained_head: bool = False,
) -> optax.GradientTransformation:
    """The paper's optimiser for a parameter tree whose top level holds ``target_head`` /
    ``source_head`` next to the backbone; with ``pretrained_head`` (the objective's flag) the
    source head learns at the backbone's rate (:func:`param_groups`)."""
    rates = schedules(
        base_lr,
        steps_per_epoch,
        head_lr_multiplier=head_lr_multiplier,
        milestones=milestones,
        lr_decay=lr_decay,
    )

    def group(schedule: optax.Schedule) -> optax.GradientTransformation:
        return optax.chain(
            optax.add_decayed_weights(weight_decay),  # coupled: g + wd * p, as torch does
            optax.sgd(schedule, momentum=momentum, nesterov=nesterov),
        )

    return optax.multi_transform(
        {name: group(schedule) for name, schedule in rates.items()},
        lambda params: param_groups(params, pretrained_head),
    )
