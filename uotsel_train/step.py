"""One training step for each objective, as a pure function of a :class:`TrainState`.

The target batch and the pre-training batch go through the network as one concatenated batch
(one forward pass; BatchNorm statistics over the mixed batch, as in the released code). For the
unlabelled objective the weak and the strong views of the pre-training batch are both in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from uotsel_train import objectives

__all__ = ["OBJECTIVES", "TrainState", "init_state", "train_step"]

OBJECTIVES = ("vanilla", "labelled", "unlabelled")


class TrainState(NamedTuple):
    """``step`` (int32), ``params``, ``batch_stats``, ``opt_state``."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def init_state(variables: Any, tx: optax.GradientTransformation) -> TrainState:
    params = variables["params"]
    return TrainState(jnp.int32(0), params, variables.get("batch_stats", {}), tx.init(params))


def train_step(
    model: Any,
    tx: optax.GradientTransformation,
    objective: str,
    lam: float = 1.0,
    threshold: float | None = None,
) -> Callable:
    """A function ``(state, batch) -> (state, metrics)`` for ``objective`` (one of
    :data:`OBJECTIVES`). ``batch`` holds ``target_images`` ``[B, H, W, 3]`` and
    ``target_labels`` ``[B]``, plus ``source_images`` / ``source_labels`` (labelled) or
    ``weak_images`` / ``strong_images`` (unlabelled)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: unknown {objective!r}; valid: {', '.join(OBJECTIVES)}")

    def loss_fn(params, batch_stats, batch):
        parts = [batch["target_images"]]
        if objective == "labelled":
            parts.append(batch["source_images"])
        elif objective == "unlabelled":
            parts += [batch["weak_images"], batch["strong_images"]]
        images = jnp.concatenate(parts)
        (target_logits, source_logits, _), updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        b = batch["target_images"].shape[0]
        labels = batch["target_labels"]
        if objective == "vanilla":
            loss = objectives.cross_entropy(target_logits[:b], labels)
            metrics = {"target_ce": loss}
        elif objective == "labelled":
            loss, metrics = objectives.labelled_loss(
                target_logits[:b], labels, source_logits[b:], batch["source_labels"], lam
            )
        else:
            u = batch["weak_images"].shape[0]
            loss, metrics = objectives.unlabelled_loss(
                target_logits[:b],
                labels,
                target_logits[b + u :],
                target_logits[b : b + u],
                lam,
                threshold,
            )
        return loss, (updates["batch_stats"], metrics)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, batch
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "finite": jnp.isfinite(loss)}
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return step
