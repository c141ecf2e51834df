"""The log-domain loop behind :func:`uotsel.sinkhorn` (``method="log"``, and the hand-over from
the kernel loop of :mod:`uotsel._iterations` when its kernel cannot be kept in range): the same
iteration, stopping rule and certificate, as log-sum-exp passes over the cost."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from uotsel._iterations import (
    REABSORB_AT,
    Problem,
    Progress,
    dual_shift,
    grid,
    keep_going,
    log_masses,
    masked_lse,
    record,
    step_error,
)

Array = jax.Array


def g_update(p: Problem, f: Array) -> Array:
    """The exact ``g`` ``[m]`` for ``f`` ``[n]`` (a log-sum-exp pass over the cost)."""
    lse = masked_lse((f[:, None] - p.cost) / p.eps, grid(p), axis=0)
    return jnp.where(p.target_mask, p.k_target * p.eps * (p.log_target_weights - lse), 0.0)


class Base(NamedTuple):
    """Potentials ``(f0, g0)`` that the log-domain loop tracks deviations from,
    ``f = f0 + eps * w``, ``g = g0 + eps * v``, with ``z = (f0 + g0 - C) / eps`` ``[n, m]``
    and its row and column maxima taken out of the sums:
    ``v_new = c_target - k_target * lse_i(z_ij - top_cols_j + w_i)``,
    ``w_new = c_source - k_source * lse_j(z_ij - top_rows_i + v_j)``. Near the fixed point
    every term is of the size of ``log n`` and the deviations, not of ``|f| / eps``."""

    f0: Array  # [n]
    g0: Array  # [m]
    z: Array  # [n, m], -inf outside the masks
    top_rows: Array  # [n] max_j z_ij (0 for an empty row)
    top_cols: Array  # [m] max_i z_ij
    c_source: Array  # [n]
    c_target: Array  # [m]

    @classmethod
    def at(cls, p: Problem, f0: Array, g0: Array) -> Base:
        """The base at ``(f0, g0)``: one pass over the cost."""
        z = jnp.where(grid(p), (f0[:, None] + g0[None, :] - p.cost) / p.eps, -jnp.inf)
        top_rows, top_cols = jnp.max(z, axis=1), jnp.max(z, axis=0)
        top_rows = jnp.where(jnp.isfinite(top_rows), top_rows, 0.0)
        top_cols = jnp.where(jnp.isfinite(top_cols), top_cols, 0.0)
        c_source = p.k_source * (p.log_source_weights - top_rows) + (p.k_source - 1) * f0 / p.eps
        c_target = p.k_target * (p.log_target_weights - top_cols) + (p.k_target - 1) * g0 / p.eps
        return cls(f0, g0, z, top_rows, top_cols, c_source, c_target)


def _lse_about(z: Array, dev: Array, mask: Array, axis: int) -> Array:
    """log-sum-exp over ``axis`` of ``z + dev`` ``[n, m]`` (``dev`` broadcast along the other
    axis), where every line of ``z`` has its largest entry at 0 and ``|dev| <= REABSORB_AT``
    on ``mask``: taking out ``max(dev)`` keeps every largest term above ``exp(-2 REABSORB_AT)``,
    so no pass for the maxima is needed."""
    top = jnp.max(jnp.where(mask, dev, -jnp.inf))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    shifted = jnp.expand_dims(dev - top, 1 - axis)
    return top + jnp.log(jnp.sum(jnp.exp(z + shifted), axis=axis))


def _v_update(p: Problem, base: Base, w: Array) -> Array:
    lse = _lse_about(base.z - base.top_cols[None, :], w, p.source_mask, axis=0)
    return jnp.where(p.target_mask, base.c_target - p.k_target * lse, 0.0)


def _w_update(p: Problem, base: Base, v: Array) -> Array:
    lse = _lse_about(base.z - base.top_rows[:, None], v, p.target_mask, axis=1)
    return jnp.where(p.source_mask, base.c_source - p.k_source * lse, 0.0)


def _rebased(p: Problem, base: Base, w: Array, v: Array) -> tuple[Base, Array, Array]:
    """``(base, w, v)``, the base moved to the potentials they stand for where either
    deviation is past ``REABSORB_AT`` (then both are 0)."""
    far = jnp.maximum(jnp.max(jnp.abs(w)), jnp.max(jnp.abs(v))) > REABSORB_AT
    base = jax.lax.cond(
        far, lambda: Base.at(p, base.f0 + p.eps * w, base.g0 + p.eps * v), lambda: base
    )
    return base, jnp.where(far, 0.0, w), jnp.where(far, 0.0, v)


def log_col_sums(p: Problem, progress: Progress) -> Array:
    """``log(P^T 1)`` ``[m]`` of the plan of ``progress`` by a log-sum-exp pass over the cost."""
    lse = masked_lse((progress.f[:, None] - p.cost) / p.eps, grid(p), axis=0)
    return lse + progress.g / p.eps


def log_loop(p: Problem, f: Array, progress: Progress) -> Progress:
    """Log-domain iterations from the input potential ``f`` until the stopping rule fires.

    The iterates are deviations ``(w, v)`` from a base point (:class:`Base`) moved to the
    current potentials whenever either is past ``REABSORB_AT``: the sums then take the same
    rounded ``(f0 + g0 - C) / eps`` every iteration, so a step carries the rounding of the
    deviations, not of ``|f| / eps`` (which keeps a float32 loop on large costs from settling).
    """
    zero_v = jnp.zeros_like(p.log_target_weights)

    def body(state):
        base, w, progress = state
        base, w, v = _rebased(p, base, w, _v_update(p, base, w))
        w_new = _w_update(p, base, v)
        f_new, g = base.f0 + p.eps * w_new, base.g0 + p.eps * v
        progress = record(progress, f_new, g, step_error(p, p.eps * (w_new - w)))
        shift = dual_shift(p, *log_masses(p, f_new, g))
        w_next = jnp.where(p.source_mask, w_new + shift / p.eps, 0.0)
        base, w_next, _ = _rebased(p, base, w_next, zero_v)
        return base, w_next, progress

    f = jnp.where(p.source_mask, f, 0.0)
    state = (Base.at(p, f, g_update(p, f)), jnp.zeros_like(f), progress)
    _, _, progress = jax.lax.while_loop(lambda s: keep_going(p, s[2]), body, state)
    return progress
