"""One training step as a pure function of a :class:`TrainState` and a batch.

The batch parts of the objective (the target images, then one part per pre-training view; see
:class:`uotsel_train.objectives.Objective`) go through the network in one forward pass. With
``bn_groups = G > 1`` the parts are laid out group-major before that pass: group ``g`` holds the
``g``-th ``1/G`` of every part, so each BatchNorm group sees a share of the target and of the
pre-training images, like one replica of the released multi-GPU runs (64 + 64 images on each of 4
GPUs at 256 + 256). With ``G = 1`` statistics span the whole step batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from uotsel_train import models, objectives

__all__ = ["TrainState", "init_state", "interleave", "train_step", "uninterleave"]


class TrainState(NamedTuple):
    """``step`` (int32), ``params``, ``batch_stats``, ``opt_state``."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def init_state(variables: Any, tx: optax.GradientTransformation) -> TrainState:
    params = variables["params"]
    return TrainState(jnp.int32(0), params, variables.get("batch_stats", {}), tx.init(params))


def interleave(parts: list[jax.Array], groups: int) -> jax.Array:
    """Concatenate ``parts`` (``[n_i, ...]`` each, ``n_i`` divisible by ``groups``) group-major:
    ``[sum n_i, ...]`` whose ``g``-th ``1/groups`` holds the ``g``-th ``1/groups`` of every
    part, in part order."""
    if groups == 1:
        return jnp.concatenate(parts)
    split = [p.reshape(groups, p.shape[0] // groups, *p.shape[1:]) for p in parts]
    joined = jnp.concatenate(split, axis=1)
    return joined.reshape(-1, *joined.shape[2:])


def uninterleave(x: jax.Array, sizes: list[int], groups: int) -> list[jax.Array]:
    """The inverse of :func:`interleave`: ``x`` ``[sum sizes, ...]`` back into parts."""
    if groups == 1:
        bounds = [sum(sizes[:i]) for i in range(1, len(sizes))]
        return jnp.split(x, bounds)
    per_group = [n // groups for n in sizes]
    x = x.reshape(groups, sum(per_group), *x.shape[1:])
    bounds = [sum(per_group[:i]) for i in range(1, len(sizes))]
    return [p.reshape(-1, *p.shape[2:]) for p in jnp.split(x, bounds, axis=1)]


def train_step(
    model: Any,
    tx: optax.GradientTransformation,
    objective: str | objectives.Objective,
    settings: objectives.Settings | None = None,
    bn_groups: int = 1,
) -> Callable:
    """A function ``(state, batch) -> (state, metrics)``.

    ``batch`` holds ``<part>_images`` ``[n, H, W, 3]`` (uint8 pixels, normalised here by
    :func:`uotsel_train.models.normalise`) for every part of the objective
    (``target``, ``source_train``, ``source_weak``, ``source_strong``), ``target_labels``
    ``[B]`` and, for objectives with a source head, ``source_labels``. ``metrics`` holds the
    objective's loss terms, ``loss``, ``grad_norm`` and ``finite`` (whether the loss is finite).
    """
    if isinstance(objective, str):
        objective = objectives.get(objective)
    settings = settings or objectives.Settings()
    parts = objective.parts
    loss_of = objective.loss_fn()

    def loss_fn(params, batch_stats, batch):
        images = [models.normalise(batch[f"{p}_images"]) for p in parts]
        sizes = [x.shape[0] for x in images]
        (target_logits, source_logits, _), updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            interleave(images, bn_groups),
            train=True,
            mutable=["batch_stats"],
        )
        target_parts = uninterleave(target_logits, sizes, bn_groups)
        source_parts = (
            uninterleave(source_logits, sizes, bn_groups)
            if source_logits is not None
            else [None] * len(parts)
        )
        logits = {p: (t, s) for p, t, s in zip(parts, target_parts, source_parts, strict=True)}
        loss, metrics = loss_of(logits, batch, settings)
        return loss, (updates["batch_stats"], metrics)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, batch
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "finite": jnp.isfinite(loss),
        }
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return step
