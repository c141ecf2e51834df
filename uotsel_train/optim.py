"""The paper's optimiser: SGD with Nesterov momentum 0.9, weight decay coupled as in torch
(added to the gradient) on every parameter, heads at 10x the backbone learning rate, and the
learning rate x0.1 at epochs 60 and 80, where an epoch is one pass over the target set.

The schedule counts optimiser steps of the *global* batch, so it is the same at every device
count (the released code's schedule never decays on one GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax

__all__ = ["HEAD_MODULES", "learning_rate", "param_groups", "sgd"]

HEAD_MODULES = ("target_head", "source_head")


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


def param_groups(params: Any) -> Any:
    """``"head"`` for the parameters of the target and source heads, ``"backbone"`` for the rest
    (a label tree for ``optax.multi_transform``)."""
    labels = {}
    for name, sub in params.items():
        group = "head" if name in HEAD_MODULES else "backbone"
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
) -> optax.GradientTransformation:
    """The paper's optimiser for a parameter tree whose top level holds ``target_head`` /
    ``source_head`` next to the backbone."""

    def group(multiplier: float) -> optax.GradientTransformation:
        schedule = learning_rate(base_lr * multiplier, steps_per_epoch, milestones, lr_decay)
        return optax.chain(
            optax.add_decayed_weights(weight_decay),  # coupled: g + wd * p, as torch does
            optax.sgd(schedule, momentum=momentum, nesterov=nesterov),
        )

    return optax.multi_transform(
        {"backbone": group(1.0), "head": group(head_lr_multiplier)}, param_groups
    )
