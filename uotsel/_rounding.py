"""How much floating-point arithmetic can add to the certified ``error`` of :func:`uotsel.sinkhorn`.

``error`` bounds, in exact arithmetic, how far the returned marginals are from those of the exact
solution (``docs/solver.md``). Here the returned potentials ``(f, g)`` are checked as they are.
At an exact update the marginals satisfy two identities::

    log(P 1)   = log a - f / tau_source     when f = F(g)
    log(P^T 1) = log b - g / tau_target     when g = G(f)

so the residuals of the row and column sums of ``(f, g)`` against them measure
``|f - F(g)| = k_source eps |row residual|`` and ``|g - G(f)| = k_target eps |col residual|``,
whatever rounding produced ``f`` and ``g``. The map ``f -> F(G(f))`` contracts by
``kappa = k_source k_target``, hence
``|f - f*| <= (|f - F(g)| + k_source |g - G(f)|) / (1 - kappa)``, and the errors of
``log(P 1)`` and ``log(P^T 1)`` follow (see :func:`rounding`).

The check recomputes those sums: the column sums (over the ``n`` source units) split into
blocks of about ``sqrt(n)`` rows (a batched product, then the sum of the block sums), so that
their rounding is at most ``(b + n / b) u`` whatever order the backend adds in, ``u`` being the
unit roundoff; the row sums (over the ``m`` target units) by a plain product, ``m u``. Every
other operation of the check is bounded to first order in ``u`` from the magnitudes of its
operands. What depends on the summed unit only is averaged with the weights of the sum (an
extra column of the same product); for the rest, over positive terms ``e^{t_j}`` with
``t_j <= 0``, ``sum_j e^{t_j} |t_j| / S`` is at most ``log N - log S`` (the entropy of the
weights is at most ``log N``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _products

Array = jax.Array

# exp and log are taken to be within 2u relative of the exact value (XLA's float32 exp and log
# on CPU measure within 1.4u and 2u); a product adds u; terms flushed to zero add at most 2u
# where the sum is checked to stay above N * tiny / eps.
_PER_TERM = 7.0


def unit_roundoff(dtype: Any) -> float:
    """Half the machine epsilon of ``dtype``: 2^-24 in float32, 2^-53 in float64."""
    return float(np.finfo(dtype).eps) / 2.0


def _blocks(size: int) -> tuple[int, int]:
    """Block length ``b`` and block count for a sum of ``size`` terms: a divisor of ``size``
    within a factor 2 of ``sqrt(size)`` when there is one (no padding), else ``ceil(sqrt)``."""
    root = math.isqrt(size)
    for b in sorted(range(max(1, root // 2), 2 * root + 2), key=lambda b: abs(b - root)):
        if size % b == 0:
            return b, size // b
    b = root + 1
    return b, -(-size // b)


def col_sum_error(n: int) -> float:
    """Bound, in units of ``u``, on the relative rounding of :func:`blocked_col_sums` over ``n``
    positive terms: at most ``b - 1`` additions inside a block and ``blocks - 1`` between
    blocks, in whatever order the backend adds."""
    b, count = _blocks(n)
    return float(b + count)


def row_sum_error(m: int) -> float:
    """The same for :func:`row_sums`, a plain matrix-vector product: ``m - 1`` additions."""
    return float(m)


def blocked_col_sums(x: Array, kernel: Array, products: str = "dot") -> Array:
    """``sum_j x_jc K_ji`` ``[c, m]`` for ``x`` ``[n, c]`` and ``K`` ``[n, m]``: products over
    blocks of rows (contiguous, no copy when a block length divides ``n``), then the sum of the
    block sums (``products``: :mod:`uotsel._products`)."""
    n, m = kernel.shape
    b, count = _blocks(n)
    pad = b * count - n
    if pad:
        x, kernel = jnp.pad(x, ((0, pad), (0, 0))), jnp.pad(kernel, ((0, pad), (0, 0)))
    parts = _products.block_col_sums(
        x.reshape(count, b, x.shape[1]), kernel.reshape(count, b, m), products
    )
    return jnp.sum(parts, axis=0)


def row_sums(kernel: Array, v: Array, products: str = "dot") -> Array:
    """``sum_i K_ji v_ic`` ``[n, c]`` for ``v`` ``[m, c]``. Blocks over the columns would need a
    transposed copy of the matrix; the target side is the short one in the problems this
    library solves."""
    return _products.row_sums_many(kernel, v, products)


def _largest(mask: Array, *xs: Array) -> tuple[Array, ...]:
    """``max x`` over ``mask`` of equally shaped vectors ``xs``, as one variadic reduction (one
    kernel for XLA, producers included)."""
    operands = tuple(jnp.where(mask, x, -jnp.inf) for x in xs)
    inits = tuple(jnp.array(-jnp.inf, x.dtype) for x in operands)

    def combine(left, right):
        return tuple(jnp.maximum(a, b) for a, b in zip(left, right, strict=True))

    return tuple(jax.lax.reduce(operands, inits, combine, (0,)))


def unchecked(dtype: Any) -> tuple[Array, Array]:
    """The ``[4]`` check of a pass that did not run one, and its validity (False)."""
    return jnp.full((4,), jnp.nan, dtype), jnp.bool_(False)


def kernel_check(p, kernel, r, rel_r, top_r, f0, g0, f, g, z, top, log_cols, products):
    """Check ``(f, g)`` ``[n], [m]`` with the kernel ``[n, m]`` absorbed at ``(f0, g0)`` (row
    maxima ``r``, ``rel_r = r - top_r``); ``z = rel_r + (f - f0) / eps`` with its maximum
    ``top``; ``log_cols`` ``[m]`` are the column sums returned; ``products`` as in
    :mod:`uotsel._products`.

    The row sums are ``exp(r + w + top_v) K exp(lv - top_v)`` and the column sums
    ``exp(lv + top + top_r) exp(z - top) K``, with ``w = (f - f0) / eps`` and
    ``lv = (g - g0) / eps``. Per term, the kernel entry carries ``u (|f0 + g0| / eps + 2 |z_K| +
    |z_K - r|)`` from ``z_K = (f0 + g0 - C) / eps`` and ``z_K - r``, with
    ``|z_K| <= |r| + |z_K - r|``; the scaling carries the rounding of its exponent. The parts
    that depend on the summed unit only are averaged with the weights of the sum (one more
    column in the same product), and the weighted average of ``|z_K - r|`` is at most
    ``log N - log(sum)``.

    Returns:
      ``(check, ok)`` as :func:`summary`; ``ok`` is also False where a recomputed sum is near
      the float range, where dropped terms could matter.
    """
    u = unit_roundoff(p.cost.dtype)
    n, m = kernel.shape
    rows_on, cols_on = p.source_mask, p.target_mask
    w = (f - f0) / p.eps
    lv = (g - g0) / p.eps
    (top_v,) = _largest(cols_on, lv)
    x = jnp.exp(z - top)
    v = jnp.where(cols_on, jnp.exp(lv - top_v), 0.0)
    # Per unit: |f0| / eps and 2 |r| of the kernel entries, and the rounding of the scaling.
    per_row = jnp.abs(f0) / p.eps + 2 * jnp.abs(r)
    row_part = per_row + 2 * jnp.abs(w) + jnp.abs(rel_r) + jnp.abs(z) + jnp.abs(z - top)
    col_part = jnp.abs(g0) / p.eps + 2 * jnp.abs(lv) + jnp.abs(lv - top_v)
    col_sums = blocked_col_sums(
        jnp.stack([x, x * jnp.where(rows_on, row_part, 0.0)], axis=1), kernel, products
    )
    row_sums_ = row_sums(
        kernel, jnp.stack([v, v * jnp.where(cols_on, col_part, 0.0)], axis=1), products
    )
    cols, rows = col_sums[0], row_sums_[:, 0]
    log_c, log_r = jnp.log(cols), jnp.log(rows)
    col_lse = lv + log_c + top + top_r
    row_lse = r + w + top_v + log_r
    col_err = u * (
        jnp.abs(g0) / p.eps
        + col_sums[1] / cols
        + 3 * (math.log(n) - log_c)
        + 4 * jnp.abs(lv)
        + 4 * jnp.abs(log_c)
        + jnp.abs(top)
        + jnp.abs(col_lse)
        + _PER_TERM
        + col_sum_error(n)
    )
    row_err = u * (
        per_row
        + row_sums_[:, 1] / rows
        + 3 * (math.log(m) - log_r)
        + 4 * jnp.abs(w)
        + 2 * jnp.abs(r)
        + jnp.abs(top_v)
        + 2 * jnp.abs(log_r)
        + jnp.abs(row_lse)
        + _PER_TERM
        + row_sum_error(m)
    )
    info = jnp.finfo(p.cost.dtype)
    short = (info.tiny * m / info.eps - rows, info.tiny * n / info.eps - cols)
    return summary(p, f, g, log_cols, (row_lse, row_err, short[0]), (col_lse, col_err, short[1]))


def log_check(p, f: Array, g: Array, log_cols: Array, products: str = "auto") -> Array:
    """Check ``(f, g)`` with log-sum-exps over the cost itself (any scale; one ``exp`` pass over
    the matrix per side). Returns the ``[4]`` check of :func:`summary`.

    Per term, ``y = (f + g - C) / eps`` carries ``u (|f + g| / eps + 2 |y|)``, ``y - top`` adds
    ``u |y - top|``; with ``|y| <= |top| + |y - top|`` and the weighted average of
    ``|y - top|`` at most ``log N - log(sum)``."""
    u = unit_roundoff(p.cost.dtype)
    n, m = p.cost.shape
    rows_on, cols_on = p.source_mask, p.target_mask
    grid = rows_on[:, None] & cols_on[None, :]
    y = jnp.where(grid, (f[:, None] + g[None, :] - p.cost) / p.eps, -jnp.inf)
    row_top = _finite(jnp.max(y, axis=1))
    col_top = _finite(jnp.max(y, axis=0))
    rows = row_sums(jnp.exp(y - row_top[:, None]), cols_on.astype(y.dtype)[:, None], products)
    cols = blocked_col_sums(
        rows_on.astype(y.dtype)[:, None], jnp.exp(y - col_top[None, :]), products
    )
    rows, cols = rows[:, 0], cols[0]
    log_r, log_c = jnp.log(rows), jnp.log(cols)
    row_lse, col_lse = row_top + log_r, col_top + log_c
    f_abs, g_abs = jnp.abs(f) / p.eps, jnp.abs(g) / p.eps
    (f_top,) = _largest(rows_on, f_abs)
    (g_top,) = _largest(cols_on, g_abs)

    def err(own, other, top, log_s, lse, size, summed):
        return u * (
            own
            + other
            + 2 * jnp.abs(top)
            + 3 * (math.log(size) - log_s)
            + 2 * jnp.abs(log_s)
            + jnp.abs(lse)
            + _PER_TERM
            + summed
        )

    row_err = err(f_abs, g_top, row_top, log_r, row_lse, m, row_sum_error(m))
    col_err = err(g_abs, f_top, col_top, log_c, col_lse, n, col_sum_error(n))
    # Every sum has its largest term at 1, far from the float range.
    check, _ = summary(p, f, g, log_cols, (row_lse, row_err, -rows), (col_lse, col_err, -cols))
    return check


def _finite(x: Array) -> Array:
    return jnp.where(jnp.isfinite(x), x, 0.0)


def summary(p, f, g, log_cols, rows, cols) -> tuple[Array, Array]:
    """The ``[4]`` check from recomputed sums of ``(f, g)``: ``rows`` is ``(lse, err, short)``
    with ``lse`` ``[n]`` the log row sums, ``err`` a bound on their error, and ``short`` > 0
    where a sum is too near the float range to be trusted; ``cols`` the same ``[m]``.

    ``[0]``: ``max_j`` bound on ``|log(P 1)_j - (log a_j - f_j / tau_source)|`` (exact values),
    i.e. on ``|f - F(g)| / (k_source eps)``; ``[1]``: the same for the columns and
    ``|g - G(f)| / (k_target eps)``; ``[2]``: ``max_i`` bound on the error of the returned
    ``log_cols`` against the exact column sums of ``(f, g)``, plus ``k_target`` times the
    column's ``[1]``; ``[3]``: bound on the rounding of the returned ``log_row_sums``.

    Returns:
      ``(check, ok)``: ``ok`` is False when a sum was short or a bound is not finite.
    """
    u = unit_roundoff(p.cost.dtype)
    (row_lse, row_err, row_short), (col_lse, col_err, col_short) = rows, cols
    la, lb = p.log_source_weights, p.log_target_weights
    # The returned row sums, and the column identity's right side, with the rounding of log a
    # (from weights that may have been rounded to this dtype) and of f / tau.
    lrs = la - f * p.inv_tau_source
    row_out = u * (jnp.abs(lrs) + 2 * jnp.abs(f) * p.inv_tau_source + 2 * jnp.abs(la) + 1)
    rhs = lb - g * p.inv_tau_target
    col_out = u * (jnp.abs(rhs) + 2 * jnp.abs(g) * p.inv_tau_target + 2 * jnp.abs(lb) + 1)
    row_res = (1 + u) * jnp.abs(row_lse - lrs) + row_err + row_out
    col_res = (1 + u) * jnp.abs(col_lse - rhs) + col_err + col_out
    col_gap = (1 + u) * jnp.abs(log_cols - col_lse) + col_err + p.k_target * col_res
    row_res, row_out, row_short = _largest(p.source_mask, row_res, row_out, row_short)
    col_res, col_gap, col_short = _largest(p.target_mask, col_res, col_gap, col_short)
    check = jnp.stack([row_res, col_res, col_gap, row_out])
    ok = (row_short <= 0) & (col_short <= 0) & jnp.all(jnp.isfinite(check))
    return check, ok


def rounding(p, check: Array, error: Array) -> Array:
    """What floating point can add to ``error`` (scalar): ``error + rounding`` bounds the
    largest relative error of the returned ``P 1`` and ``P^T 1`` against the exact solution.

    With ``D = (k_source [0] + k_source k_target [1]) / (1 - kappa)`` (a bound on
    ``|f - f*| / eps``), the log row sums are within ``[3] + eps D / tau_source`` and the log
    column sums within ``[2] + k_target eps D / tau_target``; ``B``, the larger, is raised by
    ``B^2`` for the terms of second order in ``u``, and ``rounding = max(0, expm1(B) - error)``.
    """
    rows, cols, col_gap, row_out = check[0], check[1], check[2], check[3]
    slack_s = p.eps * p.inv_tau_source * p.k_source
    slack_t = p.eps * p.inv_tau_target * p.k_target
    one_minus_kappa = slack_s + slack_t - slack_s * slack_t
    relaxed = one_minus_kappa > 0
    dist = jnp.where(
        relaxed,
        p.k_source * (rows + p.k_target * cols) / jnp.where(relaxed, one_minus_kappa, 1.0),
        0.0,
    )
    bound = jnp.maximum(
        row_out + p.eps * p.inv_tau_source * dist,
        col_gap + p.k_target * p.eps * p.inv_tau_target * dist,
    )
    bound = bound + bound * bound
    extra = jnp.where(jnp.isinf(error), 0.0, jnp.maximum(jnp.expm1(bound) - error, 0.0))
    return jnp.where(jnp.isnan(bound), jnp.inf, extra)
