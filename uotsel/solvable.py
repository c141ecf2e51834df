"""What a dtype can solve, and the checks :func:`uotsel.unbalanced.prepare` makes before tracing:
the range of ``eps``, ``tau / eps`` and the weights a float type resolves, the per-problem
scalars and vectors in their shapes, equal total masses when both sides are held exactly, and,
after a solve whose potentials left that range, the one-line error naming the setting to
change (:func:`explain_failure`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _checks
from uotsel import _iterations as _it

__all__ = [
    "MASS_RTOL",
    "check_balanced_masses",
    "check_ranges",
    "check_weights",
    "eps_range",
    "explain_failure",
    "resolved_range",
    "scalar",
    "vector",
    "weight_range",
]


# Relative tolerance on equal total masses for a problem held exactly on both sides.
MASS_RTOL = 1e-5


def resolved_range(dtype: Any) -> float:
    """Largest ``|potential| / eps`` that ``dtype`` resolves to ``eps / 16`` (half an ulp):
    2^20 in float32, 2^49 in float64."""
    return 1.0 / (8.0 * float(np.finfo(dtype).eps))


def eps_range(dtype: Any) -> tuple[float, float]:
    """Smallest and largest ``eps`` (and ``tau / eps``) accepted in ``dtype``: from
    ``finfo.tiny / finfo.eps`` (9.9e-32 in float32), so that every quantity down to an ulp of
    ``eps`` is a normal number, to its inverse."""
    info = np.finfo(dtype)
    low = float(info.tiny) / float(info.eps)
    return low, 1.0 / low


def check_ranges(eps: Any, tau_source: Any, tau_target: Any, dtype: Any) -> None:
    """``eps`` and ``tau / eps`` within what ``dtype`` represents with full precision."""
    low, high = eps_range(dtype)
    name = np.dtype(dtype).name
    if _checks.is_concrete(eps):
        e = np.asarray(eps, np.float64)
        if np.any(e < low) or np.any(e > high):
            bad = float(e[(e < low) | (e > high)].flat[0])
            raise ValueError(
                f"eps: {bad:.3g} is outside the range {name} supports, [{low:.2g}, {high:.2g}]"
            )
    for tname, tau in (("tau_source", tau_source), ("tau_target", tau_target)):
        if _checks.is_concrete(tau) and _checks.is_concrete(eps):
            ratio = np.asarray(tau, np.float64) / np.asarray(eps, np.float64)
            if np.any(ratio < low):
                raise ValueError(
                    f"{tname}: {tname} / eps = {float(np.min(ratio)):.3g} is below the "
                    f"{low:.2g} that {name} supports; raise {tname} or lower eps"
                )


def explain_failure(cost: Any, settings: Any, output: Any) -> None:
    """Raise the one-line ``ValueError`` that explains a solve whose ``ok`` flag is False
    (``settings``: the :class:`uotsel.unbalanced.SolverSettings` it ran with; ``output``: its
    :class:`uotsel.SinkhornOutput`).

    ``+inf`` entries are allowed (they forbid a pair) as long as every unit keeps a finite cost;
    otherwise the cost, ``eps`` (too small for the cost in this dtype) or the marginal weights
    (too strong for the difference between the total masses) are named.
    """
    c = np.asarray(cost)
    dtype = jax.dtypes.canonicalize_dtype(c.dtype)  # the dtype the solve ran in
    nan, neg = int(np.isnan(c).sum()), int(np.isneginf(c).sum())
    if nan or neg:
        raise ValueError(f"cost: contains {nan} NaN and {neg} -inf value(s)")
    lead = c.shape[:-2]
    c = c.reshape((-1,) + c.shape[-2:])
    count = c.shape[0]

    def per_problem(x, tail, fill):
        if x is None:
            return np.full((count,) + tail, fill)
        return np.broadcast_to(np.asarray(x), lead + tail).reshape((count,) + tail)

    rows_on = per_problem(settings.source_mask, c.shape[1:2], True)
    cols_on = per_problem(settings.target_mask, c.shape[2:], True)
    a = per_problem(settings.source_weights, c.shape[1:2], 1.0)
    b = per_problem(settings.target_weights, c.shape[2:], 1.0)
    eps = per_problem(settings.eps, (), 1.0).astype(np.float64)
    tau_s = per_problem(settings.tau_source, (), 1.0).astype(np.float64)
    tau_t = per_problem(settings.tau_target, (), 1.0).astype(np.float64)
    f = np.asarray(output.f, np.float64).reshape(count, -1)
    g = np.asarray(output.g, np.float64).reshape(count, -1)
    finite = np.isfinite(c)
    grid = rows_on[:, :, None] & cols_on[:, None, :]
    rows = np.flatnonzero(rows_on & ~(finite & grid).any(axis=2))
    cols = np.flatnonzero(cols_on & ~(finite & grid).any(axis=1))
    if rows.size or cols.size:
        raise ValueError(f"cost: {rows.size} row(s) and {cols.size} column(s) have no finite entry")
    limit = resolved_range(dtype)
    name = np.dtype(dtype).name
    for i in range(count):
        top_cost = float(np.max(np.abs(np.where(finite[i] & grid[i], c[i], 0.0))))
        top = max(np.max(np.abs(f[i][rows_on[i]])), np.max(np.abs(g[i][cols_on[i]])))
        if top_cost >= eps[i] * limit / 4:
            smallest = _round_up(4 * top_cost / limit)
            raise ValueError(
                f"eps: {eps[i]:.3g} is too small for this cost in {name}: the costs reach "
                f"{top_cost:.3g} = {top_cost / eps[i]:.3g} x eps, beyond the {limit:.3g} x eps "
                f"that {name} resolves; the smallest eps it supports here is about "
                f"{smallest:.2g} (float64 inputs under jax.enable_x64 go further)"
            )
        mass_s = (float(np.sum(a[i][rows_on[i]])), int(np.sum(rows_on[i])))
        mass_t = (float(np.sum(b[i][cols_on[i]])), int(np.sum(cols_on[i])))
        exact = _it.held_exactly(eps[i], tau_s[i], dtype) & _it.held_exactly(
            eps[i], tau_t[i], dtype
        )
        if exact and not np.isclose(mass_s[0], mass_t[0], rtol=MASS_RTOL):
            ratio = 2.0 / float(np.finfo(dtype).eps)
            why = (
                f"both are at least {ratio:.3g} x eps (eps = {eps[i]:.3g}), which {name} "
                "cannot tell from inf"
            )
            raise ValueError(_unequal_masses(why, settings, mass_s, mass_t))
        if np.isfinite(top) and top <= eps[i] * limit:
            continue
        if not np.isfinite(top):
            raise ValueError(
                f"eps, tau_source, tau_target: {name} could not solve this problem (costs up to "
                f"{top_cost:.3g}, eps = {eps[i]:.3g}, tau = {tau_s[i]:.3g}, {tau_t[i]:.3g}): "
                "its potentials are not finite; try float64 inputs under jax.enable_x64"
            )
        raise ValueError(
            f"tau_source, tau_target: {tau_s[i]:.3g} and {tau_t[i]:.3g} at eps = {eps[i]:.3g} "
            f"move the potentials to {top / eps[i]:.3g} x eps, beyond the {limit:.3g} x eps "
            f"that {name} resolves: the marginal penalties are too strong for the difference "
            f"between the source mass ({mass_s[0]:.6g}) and the target mass ({mass_t[0]:.6g}); "
            "lower them, or hold one side exactly with math.inf"
        )
    raise ValueError("cost: the solver did not produce finite potentials")


def _round_up(x: float) -> float:
    """``x`` rounded up to two significant digits."""
    if x <= 0 or not np.isfinite(x):
        return x
    scale = 10.0 ** (np.floor(np.log10(x)) - 1)
    return float(np.ceil(x / scale) * scale)


def scalar(value: Any, name: str, lead: tuple[int, ...], dtype: Any) -> Any:
    """A scalar setting as an array (traced, never static): scalar, or ``[B]`` when batched."""
    if isinstance(value, jax.Array) or not _checks.is_concrete(value):
        arr = jnp.asarray(value, dtype)
    else:
        arr = np.asarray(value, dtype)
    if arr.ndim > 1 or (arr.ndim == 1 and (not lead or arr.shape[0] != lead[0])):
        want = "a scalar" + (f" or shape [{lead[0]}]" if lead else "")
        raise ValueError(f"{name}: expected {want}, got shape {tuple(arr.shape)}")
    return arr


def vector(value: Any, name: str, lead: tuple[int, ...], size: int, dtype: Any) -> Any:
    """A per-unit vector ``[size]`` or ``[B, size]``; None stays None (the default)."""
    if value is None:
        return None
    if not hasattr(value, "shape"):
        value = np.asarray(value)
    if tuple(value.shape) not in ((size,), lead + (size,)):
        shapes = f"[{size}]" + (f" or {list(lead + (size,))}" if lead else "")
        raise ValueError(f"{name}: expected shape {shapes}, got {list(value.shape)}")
    if dtype is bool:
        if value.dtype != np.bool_:
            raise TypeError(f"{name}: expected a bool array, got dtype {value.dtype}")
        return value
    return _checks.as_float_array(value, name, value.ndim)


def check_weights(w: Any, mask: Any, name: str, dtype: Any) -> None:
    """Weights ``[..., size]`` finite and positive on every unmasked unit, and within the normal
    range of ``dtype`` (:func:`weight_range`); checked on the host, before tracing."""
    if w is None or not (_checks.is_concrete(w) and _checks.is_concrete(mask)):
        return
    w = np.asarray(w)
    keep = np.ones(w.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask), w.shape)
    if not np.all(np.isfinite(w[keep])) or np.any(w[keep] <= 0):
        raise ValueError(f"{name}: must be finite and > 0 on every unmasked unit")
    low, high = weight_range(dtype)
    outside = keep & ((w < low) | (w > high))
    if np.any(outside):
        where = np.argwhere(outside)[0]
        value, kind = float(w[tuple(where)]), np.dtype(dtype).name
        why = (
            f"the solver takes log({name}) in {kind}, where numbers below the smallest normal "
            f"one are flushed to zero; raise the weight to at least {low:.3g} or mask the "
            "unit out"
            if value < low
            else f"it is beyond the largest {kind} number; lower the weight"
        )
        raise ValueError(
            f"{name}: {value:.3g} (unit {int(where[-1])}) is outside [{low:.3g}, {high:.3g}], "
            f"the weights {kind} supports: {why}, or use float64 inputs under jax.enable_x64"
        )


def weight_range(dtype: Any) -> tuple[float, float]:
    """Smallest and largest weight accepted in ``dtype``: its smallest normal number (1.2e-38 in
    float32; XLA flushes subnormal numbers to zero, so ``log`` of one is ``-inf``) and its
    largest finite number."""
    info = np.finfo(dtype)
    return float(info.tiny), float(info.max)


def check_balanced_masses(s: Any, n: int, m: int, dtype: Any) -> None:
    """``s``, a :class:`uotsel.unbalanced.SolverSettings`: a problem held exactly on both sides
    (both taus inf) needs equal total masses. (Taus
    that are only too large for the dtype to tell from inf are caught after the solve, so that
    an ``eps`` too small for the cost is named first.)"""
    values = (s.tau_source, s.tau_target, s.source_weights, s.target_weights)
    if not all(_checks.is_concrete(x) for x in (*values, s.source_mask, s.target_mask)):
        return
    both = np.isinf(np.asarray(s.tau_source)) & np.isinf(np.asarray(s.tau_target))
    if not both.any():
        return
    mass_s = _masses(s.source_weights, s.source_mask, n)
    mass_t = _masses(s.target_weights, s.target_mask, m)
    unequal = both & ~np.isclose(mass_s[0], mass_t[0], rtol=MASS_RTOL)
    if np.any(unequal):
        i = np.unravel_index(int(np.argmax(unequal)), unequal.shape) if unequal.ndim else ()
        pick = lambda x: np.broadcast_to(x, unequal.shape)[i]  # noqa: E731
        raise ValueError(
            _unequal_masses(
                "both are inf",
                s,
                (pick(mass_s[0]), pick(mass_s[1])),
                (pick(mass_t[0]), pick(mass_t[1])),
            )
        )


def _masses(w: Any, mask: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Total mass and number of unmasked units, per problem."""
    w = np.ones(size) if w is None else np.asarray(w, np.float64)
    mask = np.ones(size, bool) if mask is None else np.asarray(mask)
    return np.where(mask, w, 0.0).sum(-1), np.sum(mask, axis=-1)


def _unequal_masses(why: str, s: Any, source: tuple, target: tuple) -> str:
    def describe(side, mass, weights):
        total, units = mass
        if weights is None:
            return f"the {side} has {int(units)} units of mass 1"
        return f"the {side} weights sum to {float(total):.6g}"

    weights = s.source_weights is not None or s.target_weights is not None
    return (
        f"tau_source, tau_target: {why}, so both marginals are held exactly and need equal "
        f"total mass, but {describe('source', source, s.source_weights)} and "
        f"{describe('target', target, s.target_weights)}; make one of them finite"
        + (" (and below that bound)" if why != "both are inf" else "")
        + (", or give weights of equal sums" if weights else "")
    )
