"""Entropic unbalanced optimal transport by a generalised Sinkhorn iteration, exact in float32.

The problem, for a cost ``C`` of shape ``[n, m]`` (rows: source / pre-training units, columns:
target units), source weights ``a`` ``[n]`` and target weights ``b`` ``[m]``::

    min_P  <P, C> + eps * KL(P | 1) + tau_source * KL(P 1 | a) + tau_target * KL(P^T 1 | b)

with ``KL(x | y) = sum x log(x / y) - x + y``. ``tau = inf`` makes that side a hard constraint.
The paper's values are ``eps = 1``, ``tau_source = 1`` and ``tau_target = 100``.

The solution is ``P = exp((f[:, None] + g[None, :] - C) / eps)`` for dual potentials ``f``, ``g``.
Right after an ``f`` update the row sums are exactly ``P 1 = a * exp(-f / tau_source)``, so their
logarithm is returned from ``f`` itself and stays accurate where ``P 1`` would underflow.

Stopping rule: the map ``f -> F(G(f))`` is a contraction in the sup norm with factor
``kappa = k_s * k_t``, ``k = tau / (tau + eps)``, because soft-min is 1-Lipschitz. Hence, with
``delta = max |f_new - f_old|``, the distance to the exact solution is at most
``kappa / (1 - kappa) * delta``; ``error`` converts that into a certified bound on the largest
relative error of both marginals of the returned plan (see :class:`SinkhornOutput`). A marginal
test such as ``|P^T 1 - b|`` would never reach its threshold on a relaxed side.

The iterations themselves (an absorbed-kernel loop with a log-domain fallback, the optimal dual
translation between iterations, stall detection) live in :mod:`uotsel._iterations`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _checks
from uotsel import _iterations as _it

__all__ = ["METHODS", "STALL_PATIENCE", "SinkhornOutput", "sinkhorn"]

Array = jax.Array
STALL_PATIENCE = _it.STALL_PATIENCE
METHODS = ("auto", "log")


class SinkhornOutput(NamedTuple):
    """Result of :func:`sinkhorn`. Leading batch dimensions ``[...]`` follow the input cost.

    Attributes:
      f: ``[..., n]`` source (row) potentials; 0 on masked rows.
      g: ``[..., m]`` target (column) potentials; 0 on masked columns.
      log_row_sums: ``[..., n]`` ``log(P 1)``, the log of the mass each source unit sends;
        ``-inf`` on masked rows. Accurate where ``P 1`` itself underflows.
      log_col_sums: ``[..., m]`` ``log(P^T 1)``; ``-inf`` on masked columns.
      n_iters: ``[...]`` int32, iterations run.
      error: ``[...]`` certified bound on the largest relative error of the returned marginals
        (``P 1`` and ``P^T 1``) with respect to those of the exact solution. For a side held
        exactly (``tau = inf``) the exact marginal is the weight vector itself, so for a balanced
        problem this is the relative violation of the column marginal.
      converged: ``[...]`` bool, ``error <= threshold``.
      eps: ``[...]`` the entropic regularisation used (needed to rebuild the plan).
    """

    f: Array
    g: Array
    log_row_sums: Array
    log_col_sums: Array
    n_iters: Array
    error: Array
    converged: Array
    eps: Array

    @property
    def row_sums(self) -> Array:
        """``[..., n]`` ``P 1`` (may underflow to 0; rank by ``log_row_sums``)."""
        return jnp.exp(self.log_row_sums)

    @property
    def col_sums(self) -> Array:
        """``[..., m]`` ``P^T 1``."""
        return jnp.exp(self.log_col_sums)

    def plan(self, cost: Any) -> Array:
        """The transport plan ``[..., n, m]`` for the ``cost`` this output was computed from."""
        eps = jnp.asarray(self.eps)[..., None, None]
        log_p = (self.f[..., :, None] + self.g[..., None, :] - jnp.asarray(cost)) / eps
        active = (
            jnp.isfinite(self.log_row_sums)[..., :, None]
            & jnp.isfinite(self.log_col_sums)[..., None, :]
        )
        return jnp.where(active, jnp.exp(log_p), 0.0)


def sinkhorn(
    cost: Any,
    *,
    eps: Any = 1.0,
    tau_source: Any = 1.0,
    tau_target: Any = 100.0,
    source_weights: Any = None,
    target_weights: Any = None,
    source_mask: Any = None,
    target_mask: Any = None,
    threshold: Any = 1e-5,
    max_iter: int = 1000,
    init: Any = None,
    method: str = "auto",
) -> SinkhornOutput:
    """Solve one or a batch of entropic unbalanced OT problems.

    Compiled once per input shape: ``eps``, ``tau_source``, ``tau_target``, ``threshold``,
    ``max_iter``, weights and masks are traced, so sweeping them (or the scale of the cost)
    never recompiles.

    Args:
      cost: ``[n, m]`` cost, or ``[B, n, m]`` for a batch of problems; rows are source
        (pre-training) units, columns target units. Computed in its own float dtype (ints are
        cast to float32).
      eps: entropic regularisation ``> 0``; scalar or ``[B]``.
      tau_source: KL weight of the source marginal ``> 0`` (``math.inf``: held exactly);
        scalar or ``[B]``. The paper's ``tau1``.
      tau_target: KL weight of the target marginal ``> 0`` (``math.inf``: held exactly);
        scalar or ``[B]``. The paper's ``tau2``.
      source_weights: ``[n]`` or ``[B, n]`` positive weights ``a``; default all ones.
      target_weights: ``[m]`` or ``[B, m]`` positive weights ``b``; default all ones.
      source_mask: ``[n]`` or ``[B, n]`` bool, False for padding rows (excluded entirely).
      target_mask: ``[m]`` or ``[B, m]`` bool, False for padding columns.
      threshold: stop once ``error`` (see :class:`SinkhornOutput`) is at most this. In float32
        about ``1e-5`` is the floor; ``1e-5`` gets the full ranking of the paper's problems
        right.
      max_iter: iteration cap; reaching it, or stalling at the floating-point floor above
        ``threshold``, is reported as ``converged=False``.
      init: optional warm start, the ``f`` ``[n]``/``[B, n]`` of an earlier output (or the
        whole :class:`SinkhornOutput`).
      method: ``"auto"`` (default): scaling iterations on an absorbed, row-normalised kernel
        (two matrix-vector products per iteration), handing over to log-domain iterations if
        the kernel cannot be kept in the float range; ``"log"``: log-domain iterations only
        (one ``exp`` pass over the matrix per half-iteration). Same fixed point, same stopping
        rule and guarantee.

    Returns:
      A :class:`SinkhornOutput`; non-convergence is reported in it, never raised.

    Raises:
      ValueError, TypeError: on a bad argument (named in the message), before tracing.

    Example:
      >>> import numpy as np, uotsel
      >>> cost = np.array([[0.0, 2.0], [2.0, 0.0], [5.0, 5.0]], np.float32)
      >>> out = uotsel.sinkhorn(cost, eps=1.0, tau_source=1.0, tau_target=100.0)
      >>> bool(out.converged), out.log_row_sums.shape
      (True, (3,))
    """
    cost = _checks.as_float_array(cost, "cost", (2, 3))
    batched = cost.ndim == 3
    lead = tuple(cost.shape[:-2])
    n, m = cost.shape[-2:]
    if n == 0:
        raise ValueError("cost: has no rows (no source units)")
    if m == 0:
        raise ValueError("cost: has no columns (no target units)")
    solver_args = prepare(
        lead,
        n,
        m,
        jax.dtypes.canonicalize_dtype(cost.dtype),
        eps=eps,
        tau_source=tau_source,
        tau_target=tau_target,
        source_weights=source_weights,
        target_weights=target_weights,
        source_mask=source_mask,
        target_mask=target_mask,
        threshold=threshold,
        max_iter=max_iter,
        init=init,
        method=method,
    )
    if batched:
        lockstep = jax.default_backend() != "cpu"
        out, cost_ok = _solve_batch(cost, *solver_args, method=method, lockstep=lockstep)
    else:
        out, cost_ok = _solve_one(cost, *solver_args, method=method)
    # A bad cost shows up as non-finite potentials; only then is the cost itself inspected.
    if _checks.is_concrete(cost_ok) and not bool(cost_ok):
        _diagnose_cost(cost, solver_args[2], solver_args[3])
    return out


def prepare(
    lead: tuple[int, ...],
    n: int,
    m: int,
    dtype: Any,
    *,
    eps,
    tau_source,
    tau_target,
    source_weights,
    target_weights,
    source_mask,
    target_mask,
    threshold,
    max_iter,
    init,
    method,
) -> tuple:
    """Validate the solver settings of :func:`sinkhorn` for problems of shape ``lead + [n, m]``
    and return the solver's arguments after the cost: ``(a, b, mask_a, mask_b, f0, eps,
    tau_source, tau_target, threshold, max_iter)`` (None for defaults)."""
    _checks.check_positive_scalar(eps, "eps")
    _checks.check_positive_scalar(tau_source, "tau_source", allow_inf=True)
    _checks.check_positive_scalar(tau_target, "tau_target", allow_inf=True)
    _checks.check_positive_scalar(threshold, "threshold")
    max_iter = _checks.check_positive_int(max_iter, "max_iter")
    if method not in METHODS:
        raise ValueError(f"method: unknown method {method!r}; valid: {', '.join(METHODS)}")
    scalars = [
        _scalar(value, name, lead, dtype)
        for name, value in (
            ("eps", eps),
            ("tau_source", tau_source),
            ("tau_target", tau_target),
            ("threshold", threshold),
        )
    ]
    mask_a = _vector(source_mask, "source_mask", lead, n, bool)
    mask_b = _vector(target_mask, "target_mask", lead, m, bool)
    a = _vector(source_weights, "source_weights", lead, n, dtype)
    b = _vector(target_weights, "target_weights", lead, m, dtype)
    _check_weights(a, mask_a, "source_weights")
    _check_weights(b, mask_b, "target_weights")
    for name, unit, mask in (("source_mask", "source", mask_a), ("target_mask", "target", mask_b)):
        if mask is not None and _checks.is_concrete(mask) and not np.any(mask, axis=-1).all():
            raise ValueError(f"{name}: masks out every {unit} unit of a problem")
    _check_balanced_masses(scalars[1], scalars[2], a, b, mask_a, mask_b, n, m)

    if isinstance(init, SinkhornOutput):
        init = init.f
    f0 = None
    if init is not None:
        f0 = _checks.as_float_array(init, "init", (1, 2))
        if tuple(f0.shape) != lead + (n,):
            raise ValueError(f"init: expected shape {list(lead + (n,))}, got {list(f0.shape)}")
        _checks.check_finite(f0, "init")
    return (a, b, mask_a, mask_b, f0, *scalars, np.int32(max_iter))


def _diagnose_cost(cost: Any, mask_a: Any, mask_b: Any) -> None:
    """Raise the one-line error that explains non-finite potentials. ``+inf`` entries are
    allowed (they forbid a pair) as long as every unit keeps a finite cost."""
    c = np.asarray(cost)
    nan, neg = int(np.isnan(c).sum()), int(np.isneginf(c).sum())
    if nan or neg:
        raise ValueError(f"cost: contains {nan} NaN and {neg} -inf value(s)")
    finite = np.isfinite(c)
    row_mask = np.ones(c.shape[:-1], bool) if mask_a is None else np.asarray(mask_a)
    col_mask = np.ones(c.shape[:-2] + c.shape[-1:], bool) if mask_b is None else np.asarray(mask_b)
    row_mask = np.broadcast_to(row_mask, c.shape[:-1])
    col_mask = np.broadcast_to(col_mask, c.shape[:-2] + c.shape[-1:])
    rows = np.flatnonzero(row_mask & ~(finite & col_mask[..., None, :]).any(axis=-1))
    cols = np.flatnonzero(col_mask & ~(finite & row_mask[..., :, None]).any(axis=-2))
    if rows.size or cols.size:
        raise ValueError(f"cost: {rows.size} row(s) and {cols.size} column(s) have no finite entry")
    raise FloatingPointError("sinkhorn: the potentials became non-finite")


def _scalar(value: Any, name: str, lead: tuple[int, ...], dtype: Any) -> Any:
    """A scalar setting as an array (traced, never static): scalar, or ``[B]`` when batched."""
    if isinstance(value, jax.Array) or not _checks.is_concrete(value):
        arr = jnp.asarray(value, dtype)
    else:
        arr = np.asarray(value, dtype)
    if arr.ndim > 1 or (arr.ndim == 1 and (not lead or arr.shape[0] != lead[0])):
        want = "a scalar" + (f" or shape [{lead[0]}]" if lead else "")
        raise ValueError(f"{name}: expected {want}, got shape {tuple(arr.shape)}")
    return arr


def _vector(value: Any, name: str, lead: tuple[int, ...], size: int, dtype: Any) -> Any:
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


def _check_weights(w: Any, mask: Any, name: str) -> None:
    if w is None or not (_checks.is_concrete(w) and _checks.is_concrete(mask)):
        return
    w = np.asarray(w)
    keep = np.ones(w.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask), w.shape)
    if not np.all(np.isfinite(w[keep])) or np.any(w[keep] <= 0):
        raise ValueError(f"{name}: must be finite and > 0 on every unmasked unit")


def _check_balanced_masses(tau_a, tau_b, a, b, mask_a, mask_b, n, m) -> None:
    """A problem held exactly on both sides needs equal total masses."""
    if not all(_checks.is_concrete(x) for x in (tau_a, tau_b, a, b, mask_a, mask_b)):
        return
    both = np.isinf(np.asarray(tau_a)) & np.isinf(np.asarray(tau_b))
    if not both.any():
        return

    def mass(w, mask, size):
        w = np.ones(size) if w is None else np.asarray(w, np.float64)
        mask = np.ones(size, bool) if mask is None else np.asarray(mask)
        return np.where(mask, w, 0.0).sum(-1)

    if np.any(both & ~np.isclose(mass(a, mask_a, n), mass(b, mask_b, m), rtol=1e-5)):
        raise ValueError(
            "tau_source, tau_target: both are inf (balanced), so the source and target "
            "weights must have equal total mass"
        )


def _finish(p: _it.Problem, progress: _it.Progress, log_cols: Array) -> SinkhornOutput:
    f, g = progress.f, progress.g
    return SinkhornOutput(
        f=f,
        g=g,
        log_row_sums=jnp.where(p.mask_a, p.log_a - f * p.inv_rho_a, -jnp.inf),
        log_col_sums=jnp.where(p.mask_b, log_cols, -jnp.inf),
        n_iters=progress.n_iters,
        error=progress.error,
        converged=progress.error <= p.threshold,
        eps=p.eps,
    )


def _defaults(cost, a, b, mask_a, mask_b, f0, eps, rho_a, rho_b, threshold, max_iter):
    """Fill in defaults and broadcast every argument to the leading shape of ``cost``."""
    lead, (n, m), dtype = cost.shape[:-2], cost.shape[-2:], cost.dtype

    def full(x, size, fill, kind):
        if x is None:
            return jnp.full((*lead, *size), fill, kind)
        return jnp.broadcast_to(jnp.asarray(x, kind), (*lead, *size))

    problem_args = (
        cost,
        jnp.log(full(a, (n,), 1.0, dtype)),
        jnp.log(full(b, (m,), 1.0, dtype)),
        full(mask_a, (n,), True, jnp.bool_),
        full(mask_b, (m,), True, jnp.bool_),
        *(full(x, (), 0.0, dtype) for x in (eps, rho_a, rho_b, threshold)),
        full(max_iter, (), 0, jnp.int32),
    )
    return problem_args, full(f0, (n,), 0.0, dtype)


def _solve_problem(p: _it.Problem, f0: Array, method: str):
    """One problem, with real branches for the hand-overs. Returns (output, finite flag)."""
    progress = _it.start(p, f0)
    if method == "log":
        progress = _it.log_loop(p, progress.f, progress)
        log_cols = _it.log_col_sums(p, progress)
    else:
        progress, stuck, f, log_cols, cols_ok = _it.kernel_loop(p, progress.f, progress)
        progress = jax.lax.cond(stuck, lambda pr: _it.log_loop(p, f, pr), lambda pr: pr, progress)
        log_cols = jax.lax.cond(
            stuck | ~cols_ok, lambda: _it.log_col_sums(p, progress), lambda: log_cols
        )
    out = _finish(p, progress, log_cols)
    return out, _outputs_finite(p, out)


def _solve_vmapped(p: _it.Problem, f0: Array, method: str):
    """A batch solved in lock-step (accelerators): vmapped loops, and hand-overs taken by a
    non-vmapped ``cond`` only when some problem needs them."""
    every = jax.vmap
    progress = every(_it.start)(p, f0)
    if method == "log":
        progress = every(_it.log_loop)(p, progress.f, progress)
        log_cols = every(_it.log_col_sums)(p, progress)
    else:
        progress, stuck, f, log_cols, cols_ok = every(_it.kernel_loop)(p, progress.f, progress)

        def finish_in_log_domain(progress):
            done = every(_it.log_loop)(p, f, progress)
            pick = lambda new, old: jnp.where(  # noqa: E731
                jnp.reshape(stuck, stuck.shape + (1,) * (new.ndim - 1)), new, old
            )
            return jax.tree.map(pick, done, progress)

        progress = jax.lax.cond(jnp.any(stuck), finish_in_log_domain, lambda x: x, progress)
        exact_cols = stuck | ~cols_ok
        log_cols = jax.lax.cond(
            jnp.any(exact_cols),
            lambda c: jnp.where(exact_cols[:, None], every(_it.log_col_sums)(p, progress), c),
            lambda c: c,
            log_cols,
        )
    out = every(_finish)(p, progress, log_cols)
    return out, jnp.all(every(_outputs_finite)(p, out))


def _outputs_finite(p: _it.Problem, out: SinkhornOutput) -> Array:
    """False when NaN or -inf costs (or a row or column without any finite cost) made the
    potentials or every step's error non-finite; checked here instead of by a separate pass
    over the cost."""
    return (
        jnp.isfinite(out.error)
        & jnp.all(jnp.isfinite(jnp.where(p.mask_a, out.f, 0.0)))
        & jnp.all(jnp.isfinite(jnp.where(p.mask_b, out.g, 0.0)))
    )


@functools.partial(jax.jit, static_argnames=("method", "lockstep"))
def _solve_batch(cost, *args, method, lockstep):
    """``cost`` ``[B, n, m]``. ``lockstep``: vmapped (accelerators); otherwise one problem after
    another inside one program, each stopping on its own and keeping its kernel in cache."""
    problem_args, f0 = _defaults(cost, *args)
    p = jax.vmap(_it.make_problem)(*problem_args)
    if lockstep:
        return _solve_vmapped(p, f0, method)
    out, ok = jax.lax.map(lambda x: _solve_problem(x[0], x[1], method), (p, f0))
    return out, jnp.all(ok)


@functools.partial(jax.jit, static_argnames="method")
def _solve_one(cost, *args, method):
    problem_args, f0 = _defaults(cost, *args)
    return _solve_problem(_it.make_problem(*problem_args), f0, method)
