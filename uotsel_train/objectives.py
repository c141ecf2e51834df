"""The three training objectives, on logits (paper eq. 6 and 7).

- ``vanilla``: cross-entropy of the target head on the target batch;
- ``labelled`` (eq. 6): that plus ``lam`` times the source head's cross-entropy on the selected
  pre-training batch (both from one forward pass over the concatenated batch);
- ``unlabelled`` (eq. 7, FixMatch-style): that plus ``lam`` times the soft cross-entropy between
  the target head's prediction on the strong view and its softmax on the weak view (gradient
  stopped, temperature 1); with a confidence ``threshold`` only samples whose pseudo-label
  reaches it count, and an empty mask contributes 0 instead of NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["cross_entropy", "labelled_loss", "soft_cross_entropy", "unlabelled_loss"]


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
    target_logits, target_labels, strong_logits, weak_logits, lam, threshold: float | None = None
):
    """Eq. 7. Returns ``(loss, {"target_ce", "pseudo_ce", "mask_rate"})``."""
    t = cross_entropy(target_logits, target_labels)
    pseudo = jax.lax.stop_gradient(jax.nn.softmax(weak_logits))
    per_sample = soft_cross_entropy(strong_logits, pseudo)
    if threshold is None:
        mask = jnp.ones_like(per_sample)
    else:
        mask = (jnp.max(pseudo, axis=1) >= threshold).astype(per_sample.dtype)
    kept = jnp.sum(mask)
    u = jnp.sum(per_sample * mask) / jnp.maximum(kept, 1.0)  # empty mask: 0, not NaN
    return t + lam * u, {"target_ce": t, "pseudo_ce": u, "mask_rate": kept / mask.size}
