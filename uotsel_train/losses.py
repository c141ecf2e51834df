"""The losses of the training objectives, on logits (paper eq. 6 and 7, and Co-Tuning).

The per-objective functions (:func:`vanilla`, :func:`labelled`, :func:`unlabelled`,
:func:`co_tuning`) take the logits of every batch part and are what
:data:`uotsel_train.objectives.REGISTRY` names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "co_tuning",
    "co_tuning_loss",
    "cross_entropy",
    "labelled",
    "labelled_loss",
    "soft_cross_entropy",
    "unlabelled",
    "unlabelled_loss",
    "vanilla",
]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of ``logits`` ``[B, C]`` against integer ``labels`` ``[B]``."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``-sum targets * log softmax(logits)`` per row ``[B]``."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=1)


def labelled_loss(target_logits, target_labels, source_logits, source_labels, lam):
    """Eq. 6. Returns ``(loss, {"target_ce", "source_ce"})``."""
    t = cross_entropy(target_logits, target_labels)
    s = cross_entropy(source_logits, source_labels)
    return t + lam * s, {"target_ce": t, "source_ce": s}


def unlabelled_loss(
    target_logits, target_labels, strong_logits, weak_logits, lam, min_confidence: float = 0.0
):
    """Eq. 7. Returns ``(loss, {"target_ce", "pseudo_ce", "mask_rate"})``."""
    t = cross_entropy(target_logits, target_labels)
    pseudo = jax.lax.stop_gradient(jax.nn.softmax(weak_logits))
    per_sample = soft_cross_entropy(strong_logits, pseudo)
    if not min_confidence:
        mask = jnp.ones_like(per_sample)
    else:
        mask = (jnp.max(pseudo, axis=1) >= min_confidence).astype(per_sample.dtype)
    kept = jnp.sum(mask)
    u = jnp.sum(per_sample * mask) / jnp.maximum(kept, 1.0)  # empty mask: 0, not NaN
    return t + lam * u, {"target_ce": t, "pseudo_ce": u, "mask_rate": kept / mask.size}


def co_tuning_loss(target_logits, target_labels, source_logits, relationship, lam):
    """Co-Tuning's loss: the target head's cross-entropy plus ``lam`` times the mean soft
    cross-entropy of the pre-trained head against the soft source labels ``relationship[y]``.

    Args:
      target_logits: ``[B, C_t]`` target-head logits.
      target_labels: ``[B]`` integer target labels.
      source_logits: ``[B, C_s]`` pre-trained-head logits of the same images.
      relationship: ``[C_t, C_s]``, row ``y`` the distribution ``p(y_s | y_t = y)``.
      lam: weight of the second term.

    Returns:
      ``(loss, {"target_ce", "source_ce"})``, scalars.
    """
    t = cross_entropy(target_logits, target_labels)
    soft = jnp.asarray(relationship, source_logits.dtype)[target_labels]
    s = jnp.mean(soft_cross_entropy(source_logits, soft))
    return t + lam * s, {"target_ce": t, "source_ce": s}


def vanilla(logits: dict, batch: dict, s):
    """Target cross-entropy only."""
    loss = cross_entropy(logits["target"][0], batch["target_labels"])
    return loss, {"target_ce": loss}


def labelled(logits: dict, batch: dict, s):
    """Eq. 6 on the parts ``target`` and ``source_train``."""
    return labelled_loss(
        logits["target"][0],
        batch["target_labels"],
        logits["source_train"][1],
        batch["source_labels"],
        s.lam,
    )


def unlabelled(logits: dict, batch: dict, s):
    """Eq. 7 on the parts ``target``, ``source_weak`` and ``source_strong``."""
    return unlabelled_loss(
        logits["target"][0],
        batch["target_labels"],
        logits["source_strong"][0],
        logits["source_weak"][0],
        s.lam,
        s.min_confidence,
    )


def co_tuning(logits: dict, batch: dict, s):
    """Co-Tuning on the part ``target``: both heads see the target images.

    Raises:
      ValueError: when ``s.relationship`` is None.
    """
    if s.relationship is None:
        raise ValueError("co_tuning: the objective needs settings.relationship, p(y_s | y_t)")
    target_logits, source_logits = logits["target"]
    return co_tuning_loss(
        target_logits, batch["target_labels"], source_logits, s.relationship, s.lam
    )
