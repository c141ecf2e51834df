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
test such as ``|P^T 1 - b|`` would never reach its threshold on a relaxed side. ``rounding``
bounds what the floating-point computation adds, from a check of the returned potentials
(:mod:`uotsel._rounding`); it plays no part in stopping.

Floating-point range: a problem is solved only when its dtype resolves the potentials to a
small fraction of ``eps`` (``|f|, |g| <= resolved_range(dtype) * eps``, 2^20 in float32); beyond
that the plan ``exp((f + g - C) / eps)`` would be made of rounding, and :func:`sinkhorn` raises a
``ValueError`` naming the setting to change and the smallest ``eps`` that works. A marginal whose
``tau / eps`` exceeds ``2 / finfo(dtype).eps`` (2^24 in float32) is held exactly, as for
``tau = inf``: ``tau / (tau + eps)`` rounds to 1.

The iterations themselves (an absorbed-kernel loop with a log-domain fallback, the optimal dual
translation between iterations, stall detection) live in :mod:`uotsel._iterations`;
:func:`prepare` and :func:`solve` are the two halves of :func:`sinkhorn` for callers that build
the cost inside their own compiled program (:func:`uotsel.transport`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _checks, _rounding, ott_convert, solvable
from uotsel import _iterations as _it
from uotsel.settings import UOT, resolve
from uotsel.solvable import MASS_RTOL, eps_range, explain_failure, resolved_range, weight_range

__all__ = [
    "METHODS",
    "STALL_PATIENCE",
    "SinkhornOutput",
    "Solved",
    "SolverSettings",
    "eps_range",
    "explain_failure",
    "prepare",
    "resolved_range",
    "sinkhorn",
    "solve",
    "solve_first",
    "solve_rest",
    "solve_staged",
    "weight_range",
]

Array = jax.Array
STALL_PATIENCE = _it.STALL_PATIENCE
METHODS = ("auto", "log")

# How the first programs (:func:`solve_first`, alone or after the cost) are compiled. XLA's CPU
# compiler splits every reduction of more than 32 elements into three (two reduce-windows and a
# reduce), for the accuracy of long float sums; each part is a kernel of its own, and compiling
# kernels is most of the time a first call takes. The solver's long reductions are maxima,
# minima and logical ands (exact in any order) and log-sum-exps taken as one variadic reduction
# (which the split leaves alone anyway), so these programs go without it: 59 kernels instead of
# 71 for ``transport`` on 2000 x 200. The solver's outputs stay bit for bit the same; the
# cosine cost's feature norms, summed over D, are split by some XLA versions too, and there the
# outputs change within float32 rounding, with the same error against a float64 solve
# (tests/test_first_program.py). The name is that of the CPU compiler's pass (the GPU
# compiler's own is named differently).
FIRST_PROGRAM_OPTIONS = {"xla_disable_hlo_passes": "tree_reduction_rewriter"}


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
      rounding: ``[...]`` what floating-point arithmetic can add to ``error``: ``error +
        rounding`` bounds the same relative errors for the computation as it ran in the cost's
        dtype, against the exact solution of the problem as given (``docs/solver.md``). From a
        check of the returned potentials after the solve; it plays no part in stopping.
    """

    f: Array
    g: Array
    log_row_sums: Array
    log_col_sums: Array
    n_iters: Array
    error: Array
    converged: Array
    eps: Array
    rounding: Array

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


class SolverSettings(NamedTuple):
    """The settings of :func:`sinkhorn`, validated by :func:`prepare`, as :func:`solve` takes them.

    ``None`` stands for the default (unit weights, no mask, a cold start). Scalars are arrays of
    the cost's dtype (``[B]`` for per-problem values); they are traced, never static.
    """

    source_weights: Any
    target_weights: Any
    source_mask: Any
    target_mask: Any
    init: Any
    eps: Any
    tau_source: Any
    tau_target: Any
    threshold: Any
    max_iter: Any


class Solved(NamedTuple):
    """Result of :func:`solve`: the output, and whether it can be trusted (``ok``: potentials
    finite and within :func:`resolved_range` of ``eps``). When ``ok`` is False,
    :func:`explain_failure` raises the error that says why."""

    output: SinkhornOutput
    ok: Array


def sinkhorn(
    cost: Any,
    settings: UOT | None = None,
    *,
    eps: Any = None,
    tau_source: Any = None,
    tau_target: Any = None,
    source_weights: Any = None,
    target_weights: Any = None,
    source_mask: Any = None,
    target_mask: Any = None,
    threshold: Any = None,
    max_iter: int | None = None,
    init: Any = None,
    method: str | None = None,
) -> SinkhornOutput:
    """Solve one or a batch of entropic unbalanced OT problems.

    Compiled once per input shape: ``eps``, ``tau_source``, ``tau_target``, ``threshold``,
    ``max_iter``, weights and masks are traced, so sweeping them (or the scale of the cost)
    never recompiles.

    Args:
      cost: ``[n, m]`` cost, or ``[B, n, m]`` for a batch of problems; rows are source
        (pre-training) units, columns target units. Computed in its own float dtype (ints are
        cast to float32). Or an ott-jax ``Geometry``/``PointCloud`` (its cost) or
        ``LinearProblem`` (its cost, weights ``a``, ``b`` and ``tau_a``, ``tau_b`` mapped with
        the ``eps`` in force), see :mod:`uotsel.ott_interop`; without an ``eps`` from the
        caller or ``settings``, a geometry's explicit epsilon, else the paper's 1.
      settings: a :class:`uotsel.UOT` (default ``UOT()``, the paper's: ``eps = 1``,
        ``tau_source = 1``, ``tau_target = 100``, ``threshold = 1e-5``, ``max_iter = 1000``,
        ``method = "auto"``); its ``cost`` and ``eps_c`` are not used here. The keyword
        arguments of the same names override its fields (None: the field's value).
      eps: entropic regularisation ``> 0``; scalar or ``[B]``. At least ``9.9e-32`` in float32,
        and large enough for the dtype to resolve the potentials (about ``max |C| * 2^-18`` in
        float32, see :func:`resolved_range`).
      tau_source: KL weight of the source marginal ``> 0`` (``math.inf``: held exactly);
        scalar or ``[B]``. The paper's ``tau1``. Beyond ``2^24 * eps`` in float32 it is held
        exactly too.
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
      ValueError, TypeError: on a bad argument (named in the message), before tracing; and
        ``ValueError`` naming ``eps`` (or ``tau_source``/``tau_target``) when the problem is
        beyond what the dtype resolves, with the smallest ``eps`` that works.

    Example:
      >>> import numpy as np, uotsel
      >>> cost = np.array([[0.0, 2.0], [2.0, 0.0], [5.0, 5.0]], np.float32)
      >>> out = uotsel.sinkhorn(cost, eps=1.0, tau_source=1.0, tau_target=100.0)
      >>> bool(out.converged), out.log_row_sums.shape
      (True, (3,))
    """
    if _checks.is_ott_object(cost):
        return _ott_problem(
            cost,
            settings,
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
    cost = _checks.as_float_array(cost, "cost", (2, 3))
    lead = tuple(cost.shape[:-2])
    n, m = cost.shape[-2:]
    if n == 0:
        raise ValueError("cost: has no rows (no source units)")
    if m == 0:
        raise ValueError("cost: has no columns (no target units)")
    uot = resolve(
        settings,
        eps=eps,
        tau_source=tau_source,
        tau_target=tau_target,
        threshold=threshold,
        max_iter=max_iter,
        method=method,
    )
    method = uot.method
    settings = prepare(
        lead,
        n,
        m,
        jax.dtypes.canonicalize_dtype(cost.dtype),
        uot,
        source_weights=source_weights,
        target_weights=target_weights,
        source_mask=source_mask,
        target_mask=target_mask,
        init=init,
    )
    lockstep = jax.default_backend() != "cpu"
    if _checks.is_concrete(cost):
        solved = solve_staged(cost, settings, method=method, lockstep=lockstep)
    else:
        solved = solve(cost, settings, method=method, lockstep=lockstep)
    # Only a failed solve pays for inspecting the cost on the host.
    if _checks.is_concrete(solved.ok) and not bool(solved.ok):
        explain_failure(cost, settings, solved.output)
    return solved.output


def _ott_problem(problem: Any, settings: UOT | None, **given: Any) -> SinkhornOutput:
    """:func:`sinkhorn` of an ott-jax geometry or ``LinearProblem`` (converted by
    :mod:`uotsel.ott_convert`). ``eps``: the caller's or the settings' value, else the
    geometry's own explicit epsilon, else the paper's."""
    given = {k: v for k, v in given.items() if v is not None}
    eps = given.pop("eps", None)
    if eps is None and settings is not None:
        eps = settings.eps
    cost, kwargs = ott_convert.sinkhorn_args(problem, eps, given)
    return sinkhorn(cost, settings, **kwargs)


def prepare(
    lead: tuple[int, ...],
    n: int,
    m: int,
    dtype: Any,
    settings: UOT | None = None,
    *,
    source_weights: Any = None,
    target_weights: Any = None,
    source_mask: Any = None,
    target_mask: Any = None,
    init: Any = None,
    **overrides: Any,
) -> SolverSettings:
    """Validate the solver's part of ``settings`` (a :class:`uotsel.UOT`, default the paper's;
    ``overrides``: its fields by keyword, as in :func:`sinkhorn`) and the per-problem data of
    :func:`sinkhorn` for problems of shape ``lead + [n, m]`` in ``dtype``, before anything is
    traced.

    Returns:
      The :class:`SolverSettings` that :func:`solve` takes.

    Raises:
      ValueError, TypeError: naming the bad argument.
    """
    uot = resolve(settings, **overrides)
    eps, tau_source, tau_target = uot.eps, uot.tau_source, uot.tau_target
    threshold, max_iter, method = uot.threshold, uot.max_iter, uot.method
    _checks.check_positive_scalar(eps, "eps")
    _checks.check_positive_scalar(tau_source, "tau_source", allow_inf=True)
    _checks.check_positive_scalar(tau_target, "tau_target", allow_inf=True)
    _checks.check_positive_scalar(threshold, "threshold")
    max_iter = _checks.check_positive_int(max_iter, "max_iter")
    if max_iter > np.iinfo(np.int32).max:
        raise ValueError(f"max_iter: must be at most {np.iinfo(np.int32).max}, got {max_iter}")
    if method not in METHODS:
        raise ValueError(f"method: unknown method {method!r}; valid: {', '.join(METHODS)}")
    solvable.check_ranges(eps, tau_source, tau_target, dtype)
    eps, tau_source, tau_target, threshold = (
        solvable.scalar(value, name, lead, dtype)
        for name, value in (
            ("eps", eps),
            ("tau_source", tau_source),
            ("tau_target", tau_target),
            ("threshold", threshold),
        )
    )
    source_mask = solvable.vector(source_mask, "source_mask", lead, n, bool)
    target_mask = solvable.vector(target_mask, "target_mask", lead, m, bool)
    source_weights = solvable.vector(source_weights, "source_weights", lead, n, dtype)
    target_weights = solvable.vector(target_weights, "target_weights", lead, m, dtype)
    solvable.check_weights(source_weights, source_mask, "source_weights", dtype)
    solvable.check_weights(target_weights, target_mask, "target_weights", dtype)
    for name, unit, mask in (
        ("source_mask", "source", source_mask),
        ("target_mask", "target", target_mask),
    ):
        if mask is not None and _checks.is_concrete(mask) and not np.any(mask, axis=-1).all():
            raise ValueError(f"{name}: masks out every {unit} unit of a problem")
    settings = SolverSettings(
        source_weights=source_weights,
        target_weights=target_weights,
        source_mask=source_mask,
        target_mask=target_mask,
        init=_init(init, lead, n),
        eps=eps,
        tau_source=tau_source,
        tau_target=tau_target,
        threshold=threshold,
        max_iter=np.int32(max_iter),
    )
    solvable.check_balanced_masses(settings, n, m, dtype)
    return settings


def _init(init: Any, lead: tuple[int, ...], n: int) -> Any:
    if isinstance(init, SinkhornOutput):
        init = init.f
    if init is None:
        return None
    f0 = _checks.as_float_array(init, "init", (1, 2))
    if tuple(f0.shape) != lead + (n,):
        raise ValueError(f"init: expected shape {list(lead + (n,))}, got {list(f0.shape)}")
    _checks.check_finite(f0, "init")
    return f0


def _finish(
    p: _it.Problem, progress: _it.Progress, log_cols: Array, check: Array
) -> SinkhornOutput:
    f, g = progress.f, progress.g
    return SinkhornOutput(
        f=f,
        g=g,
        log_row_sums=jnp.where(
            p.source_mask, p.log_source_weights - f * p.inv_tau_source, -jnp.inf
        ),
        log_col_sums=jnp.where(p.target_mask, log_cols, -jnp.inf),
        n_iters=progress.n_iters,
        error=progress.error,
        converged=progress.error <= p.threshold,
        eps=p.eps,
        rounding=_rounding.rounding(p, check, progress.error),
    )


def _defaults(cost: Array, s: SolverSettings):
    """Fill in defaults and broadcast every setting to the leading shape of ``cost``."""
    lead, (n, m), dtype = cost.shape[:-2], cost.shape[-2:], cost.dtype

    def full(x, size, fill, kind):
        if x is None:
            return jnp.full((*lead, *size), fill, kind)
        return jnp.broadcast_to(jnp.asarray(x, kind), (*lead, *size))

    problem_args = (
        cost,
        jnp.log(full(s.source_weights, (n,), 1.0, dtype)),
        jnp.log(full(s.target_weights, (m,), 1.0, dtype)),
        full(s.source_mask, (n,), True, jnp.bool_),
        full(s.target_mask, (m,), True, jnp.bool_),
        *(full(x, (), 0.0, dtype) for x in (s.eps, s.tau_source, s.tau_target, s.threshold)),
        full(s.max_iter, (), 0, jnp.int32),
    )
    return problem_args, full(s.init, (n,), 0.0, dtype)


class Resume(NamedTuple):
    """Where :func:`solve_first` stopped: the state :func:`solve_rest` continues from."""

    last: _it.Pass
    stuck: Array


def _first_pass(p: _it.Problem, f0: Array) -> tuple[Solved, Resume, Array]:
    """One problem's kernel iterations (absorbing again as often as needed), its output, and
    whether it needs the rest: the log-domain hand-over or exact column sums."""
    last, stuck = _it.kernel_loop(p, *_from_start(p, f0))
    more = stuck | ~last.cols_ok | ~last.check_ok
    return _solved(p, last.progress, last.log_cols, last.check), Resume(last, stuck), more


def _rest(p: _it.Problem, resume: Resume) -> Solved:
    """One problem from ``resume`` to the end, with real branches for the hand-overs."""
    last, stuck = _it.kernel_loop(p, resume.last, resume.stuck)
    progress = jax.lax.cond(
        stuck, lambda pr: _it.log_loop(p, last.f, pr), lambda pr: pr, last.progress
    )
    log_cols = jax.lax.cond(
        stuck | ~last.cols_ok, lambda: _it.log_col_sums(p, progress), lambda: last.log_cols
    )
    check = jax.lax.cond(
        stuck | ~last.cols_ok | ~last.check_ok,
        lambda: _rounding.log_check(p, progress.f, progress.g, log_cols),
        lambda: last.check,
    )
    return _solved(p, progress, log_cols, check)


def _log_only(p: _it.Problem, f0: Array) -> Solved:
    progress = _it.start(p, f0)
    progress = _it.log_loop(p, progress.f, progress)
    log_cols = _it.log_col_sums(p, progress)
    return _solved(p, progress, log_cols, _rounding.log_check(p, progress.f, progress.g, log_cols))


def _from_start(p: _it.Problem, f0: Array) -> Resume:
    progress = _it.start(p, f0)
    return Resume(_it.initial_pass(p, progress.f, progress), jnp.bool_(False))


def _rest_vmapped(p: _it.Problem, resume: Resume) -> Solved:
    """A batch solved in lock-step (accelerators): vmapped loops, and hand-overs taken by a
    non-vmapped ``cond`` only when some problem needs them."""
    every = jax.vmap
    last, stuck = every(_it.kernel_loop)(p, resume.last, resume.stuck)

    def finish_in_log_domain(progress):
        done = every(_it.log_loop)(p, last.f, progress)
        pick = lambda new, old: jnp.where(  # noqa: E731
            jnp.reshape(stuck, stuck.shape + (1,) * (new.ndim - 1)), new, old
        )
        return jax.tree.map(pick, done, progress)

    progress = jax.lax.cond(jnp.any(stuck), finish_in_log_domain, lambda x: x, last.progress)
    exact_cols = stuck | ~last.cols_ok
    log_cols = jax.lax.cond(
        jnp.any(exact_cols),
        lambda c: jnp.where(exact_cols[:, None], every(_it.log_col_sums)(p, progress), c),
        lambda c: c,
        last.log_cols,
    )
    recheck = exact_cols | ~last.check_ok
    check = jax.lax.cond(
        jnp.any(recheck),
        lambda c: jnp.where(
            recheck[:, None], every(_rounding.log_check)(p, progress.f, progress.g, log_cols), c
        ),
        lambda c: c,
        last.check,
    )
    solved = every(_solved)(p, progress, log_cols, check)
    return Solved(solved.output, jnp.all(solved.ok))


def _solved(p: _it.Problem, progress: _it.Progress, log_cols: Array, check: Array) -> Solved:
    out = _finish(p, progress, log_cols, check)
    return Solved(out, _resolved(p, out))


def _resolved(p: _it.Problem, out: SinkhornOutput) -> Array:
    """False when the potentials are not finite (NaN or -inf costs, a row or column without a
    finite cost) or beyond what the dtype resolves, or when both sides are held exactly with
    unequal total masses (no solution); checked on the outputs, O(n + m), instead of by a
    separate pass over the cost."""
    f = jnp.where(p.source_mask, out.f, 0.0)
    g = jnp.where(p.target_mask, out.g, 0.0)
    top = jnp.maximum(jnp.max(jnp.abs(f)), jnp.max(jnp.abs(g)))
    both_exact = (p.inv_tau_source == 0) & (p.inv_tau_target == 0)
    mass_s = _it.masked_lse(p.log_source_weights, p.source_mask, axis=0)
    mass_t = _it.masked_lse(p.log_target_weights, p.target_mask, axis=0)
    balanced = ~both_exact | (jnp.abs(mass_s - mass_t) <= MASS_RTOL)
    return (top <= p.eps * resolved_range(p.cost.dtype)) & ~jnp.isnan(out.error) & balanced


def _problems(cost: Array, settings: SolverSettings) -> tuple[_it.Problem, Array]:
    problem_args, f0 = _defaults(cost, settings)
    if cost.ndim == 2:
        return _it.make_problem(*problem_args), f0
    return jax.vmap(_it.make_problem)(*problem_args), f0


def _each(fn, p: _it.Problem, *args: Any) -> Any:
    """``fn`` on every problem of a batch, one after another inside the program."""
    return jax.lax.map(lambda x: fn(*x), (p, *args))


@functools.partial(jax.jit, static_argnames=("method", "lockstep"))
def solve(
    cost: Array, settings: SolverSettings, *, method: str = "auto", lockstep: bool = False
) -> Solved:
    """Solve prepared problems: the compiled half of :func:`sinkhorn`, in one program.

    Traceable: call it inside your own ``jax.jit`` to build the cost and solve in one program.
    Nothing is checked here: ``settings`` come from :func:`prepare`, and a ``Solved.ok`` of
    False must be passed to :func:`explain_failure`. :func:`solve_first` and
    :func:`solve_rest` split the same computation in two programs, so that the second one
    (the rarely needed log-domain hand-over) is compiled only when a problem needs it;
    :func:`sinkhorn` and :func:`uotsel.transport` run them that way.

    Args:
      cost: ``[n, m]``, or ``[B, n, m]`` for a batch.
      settings: from :func:`prepare` for the same shape and dtype.
      method: ``"auto"`` or ``"log"`` (see :func:`sinkhorn`).
      lockstep: batches only: solve the problems in lock-step (``vmap``; the default on
        accelerators) rather than one after another inside the program (CPU: each problem
        stops on its own and keeps its kernel in cache).

    Returns:
      :class:`Solved`.
    """
    p, f0 = _problems(cost, settings)
    if method == "log":
        if cost.ndim == 2:
            return _log_only(p, f0)
        solved = jax.vmap(_log_only)(p, f0) if lockstep else _each(_log_only, p, f0)
        return Solved(solved.output, jnp.all(solved.ok))
    if cost.ndim == 2:
        return _rest(p, _from_start(p, f0))
    return solve_rest(cost, settings, jax.vmap(_from_start)(p, f0), lockstep=lockstep)


def solve_first(
    cost: Array, settings: SolverSettings, *, lockstep: bool = False
) -> tuple[Solved, Resume, Array]:
    """The first half of :func:`solve` (``method="auto"``): the scaling iterations on the
    absorbed kernel, which finish most problems. Traceable.

    Returns:
      ``(solved, resume, more)``: the result so far, the state to continue from, and a bool
      (over the whole batch) that is True when :func:`solve_rest` must be run; when False,
      ``solved`` is what :func:`solve` returns.
    """
    p, f0 = _problems(cost, settings)
    if cost.ndim == 2:
        return _first_pass(p, f0)
    solved, resume, more = jax.vmap(_first_pass)(p, f0) if lockstep else _each(_first_pass, p, f0)
    return Solved(solved.output, jnp.all(solved.ok)), resume, jnp.any(more)


def solve_rest(
    cost: Array, settings: SolverSettings, resume: Resume, *, lockstep: bool = False
) -> Solved:
    """The second half of :func:`solve` (``method="auto"``), from :func:`solve_first`'s
    ``resume``: the hand-over to the log domain where the kernel could not be kept in range,
    and exact column sums where its own were not. Traceable."""
    p, _ = _problems(cost, settings)
    if cost.ndim == 2:
        return _rest(p, resume)
    if lockstep:
        return _rest_vmapped(p, resume)
    solved = _each(_rest, p, resume)
    return Solved(solved.output, jnp.all(solved.ok))


@functools.partial(jax.jit, static_argnames=("lockstep",), compiler_options=FIRST_PROGRAM_OPTIONS)
def _first_program(cost, settings, lockstep):
    """:func:`solve_first`, with ``more`` and ``ok`` in one ``[2]`` array (one transfer)."""
    solved, resume, more = solve_first(cost, settings, lockstep=lockstep)
    return solved, resume, jnp.stack([more, solved.ok])


_rest_program = jax.jit(solve_rest, static_argnames=("lockstep",))


def solve_staged(
    cost: Array, settings: SolverSettings, *, method: str = "auto", lockstep: bool = False
) -> Solved:
    """:func:`solve` as two compiled programs, the second run (and compiled) only when a
    problem needs it. Not traceable: it decides on the host."""
    if method == "log":
        return solve(cost, settings, method=method, lockstep=lockstep)
    solved, resume, flags = _first_program(cost, settings, lockstep)
    more, ok = np.asarray(flags)
    if more:
        return _rest_program(cost, settings, resume, lockstep=lockstep)
    return Solved(solved.output, ok)
