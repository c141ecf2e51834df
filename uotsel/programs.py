"""The compiled half of :func:`uotsel.sinkhorn`: the solver's values and the programs that solve
prepared problems.

:func:`uotsel.unbalanced.prepare` checks and fills a :class:`SolverSettings` on the host;
:func:`solve` (one program) or :func:`solve_first` then :func:`solve_rest` (two, the second
compiled only when a problem needs it; :func:`solve_staged` runs them from the host) iterate
with :mod:`uotsel._iterations`, add the rounding check of :mod:`uotsel._rounding`, and return a
:class:`Solved`. All of them are traceable except :func:`solve_staged`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _check_every as check_every
from uotsel import _iterations as _it
from uotsel import _log_loop as _log
from uotsel import _rounding
from uotsel.solvable import MASS_RTOL, resolved_range

__all__ = [
    "FIRST_PROGRAM_OPTIONS",
    "Resume",
    "SinkhornOutput",
    "Solved",
    "SolverSettings",
    "pack_resume",
    "solve",
    "solve_first",
    "solve_rest",
    "solve_staged",
    "unpack_resume",
]

Array = jax.Array

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


def pack_resume(resume: Resume) -> list[Array]:
    """``resume`` as two arrays (:class:`uotsel._check_every.Layout`): a program that returns it
    creates 2 output buffers instead of 15, about 20 us a call on the CPU. Traceable."""
    leaves = jax.tree.leaves(resume)
    return check_every.Layout.of(leaves).pack(leaves)


def unpack_resume(packed: list[Array], cost: Array, settings: SolverSettings, **how: Any) -> Resume:
    """The :class:`Resume` of :func:`solve_first` (``cost``, ``settings`` and ``how``, its
    keyword arguments) that :func:`pack_resume` packed into ``packed``, bit for bit."""
    shapes = jax.eval_shape(functools.partial(solve_first, **how), cost, settings)[1]
    leaves, tree = jax.tree.flatten(shapes)
    return jax.tree.unflatten(tree, check_every.Layout.of(leaves).unpack(packed))


def _first_pass(p: _it.Problem, f0: Array, form: _it.Form | None) -> tuple[Solved, Resume, Array]:
    """One problem's kernel iterations (absorbing again as often as needed), its output, and
    whether it needs the rest: the log-domain hand-over or exact column sums."""
    last, stuck = _it.kernel_loop(p, *_from_start(p, f0), form)
    more = stuck | ~last.cols_ok | ~last.check_ok
    return _solved(p, last.progress, last.log_cols, last.check), Resume(last, stuck), more


def _rest(p: _it.Problem, resume: Resume, form: _it.Form | None) -> Solved:
    """One problem from ``resume`` to the end, with real branches for the hand-overs."""
    last, stuck = _it.kernel_loop(p, resume.last, resume.stuck, form)
    progress = jax.lax.cond(
        stuck, lambda pr: _log.log_loop(p, last.f, pr), lambda pr: pr, last.progress
    )
    log_cols = jax.lax.cond(
        stuck | ~last.cols_ok, lambda: _log.log_col_sums(p, progress), lambda: last.log_cols
    )
    check = jax.lax.cond(
        stuck | ~last.cols_ok | ~last.check_ok,
        lambda: _rounding.log_check(p, progress.f, progress.g, log_cols, _products(form)),
        lambda: last.check,
    )
    return _solved(p, progress, log_cols, check)


def _products(form: _it.Form | None) -> str:
    """The products' form of ``form`` outside the kernel loop (None: chosen per platform)."""
    return "auto" if form is None else form.products


def _log_only(p: _it.Problem, f0: Array) -> Solved:
    progress = _it.start(p, f0)
    progress = _log.log_loop(p, progress.f, progress)
    log_cols = _log.log_col_sums(p, progress)
    return _solved(p, progress, log_cols, _rounding.log_check(p, progress.f, progress.g, log_cols))


def _from_start(p: _it.Problem, f0: Array) -> Resume:
    progress = _it.start(p, f0)
    return Resume(_it.initial_pass(p, progress.f, progress), jnp.bool_(False))


def _rest_vmapped(p: _it.Problem, resume: Resume, form: _it.Form | None) -> Solved:
    """A batch solved in lock-step (accelerators): vmapped loops, and hand-overs taken by a
    non-vmapped ``cond`` only when some problem needs them."""
    every = jax.vmap
    last, stuck = every(functools.partial(_it.kernel_loop, form=form))(p, resume.last, resume.stuck)

    def finish_in_log_domain(progress):
        done = every(_log.log_loop)(p, last.f, progress)
        pick = lambda new, old: jnp.where(  # noqa: E731
            jnp.reshape(stuck, stuck.shape + (1,) * (new.ndim - 1)), new, old
        )
        return jax.tree.map(pick, done, progress)

    progress = jax.lax.cond(jnp.any(stuck), finish_in_log_domain, lambda x: x, last.progress)
    exact_cols = stuck | ~last.cols_ok
    log_cols = jax.lax.cond(
        jnp.any(exact_cols),
        lambda c: jnp.where(exact_cols[:, None], every(_log.log_col_sums)(p, progress), c),
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


@functools.partial(jax.jit, static_argnames=("method", "lockstep", "form"))
def solve(
    cost: Array,
    settings: SolverSettings,
    *,
    method: str = "auto",
    lockstep: bool = False,
    form: _it.Form | None = None,
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
      form: the loop's layout (:class:`uotsel._iterations.Form`); None: the one of the
        platform the program is lowered for (:func:`uotsel._iterations.kernel_pass`). Results
        do not depend on ``form.check_every`` or ``form.unroll``.

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
        return _rest(p, _from_start(p, f0), form)
    return solve_rest(cost, settings, jax.vmap(_from_start)(p, f0), lockstep=lockstep, form=form)


def solve_first(
    cost: Array, settings: SolverSettings, *, lockstep: bool = False, form: _it.Form | None = None
) -> tuple[Solved, Resume, Array]:
    """The first half of :func:`solve` (``method="auto"``): the scaling iterations on the
    absorbed kernel, which finish most problems. Traceable.

    Returns:
      ``(solved, resume, more)``: the result so far, the state to continue from, and a bool
      (over the whole batch) that is True when :func:`solve_rest` must be run; when False,
      ``solved`` is what :func:`solve` returns.
    """
    p, f0 = _problems(cost, settings)
    first = functools.partial(_first_pass, form=form)
    if cost.ndim == 2:
        return first(p, f0)
    solved, resume, more = jax.vmap(first)(p, f0) if lockstep else _each(first, p, f0)
    return Solved(solved.output, jnp.all(solved.ok)), resume, jnp.any(more)


def solve_rest(
    cost: Array,
    settings: SolverSettings,
    resume: Resume,
    *,
    lockstep: bool = False,
    form: _it.Form | None = None,
) -> Solved:
    """The second half of :func:`solve` (``method="auto"``), from :func:`solve_first`'s
    ``resume``: the hand-over to the log domain where the kernel could not be kept in range,
    and exact column sums where its own were not. Traceable."""
    p, _ = _problems(cost, settings)
    if cost.ndim == 2:
        return _rest(p, resume, form)
    if lockstep:
        return _rest_vmapped(p, resume, form)
    solved = _each(functools.partial(_rest, form=form), p, resume)
    return Solved(solved.output, jnp.all(solved.ok))


@functools.partial(
    jax.jit, static_argnames=("lockstep", "form"), compiler_options=FIRST_PROGRAM_OPTIONS
)
def _first_program(cost, settings, lockstep, form=None):
    """:func:`solve_first`, with ``more`` and ``ok`` in one ``[2]`` array (one transfer) and the
    state to resume from packed (:func:`pack_resume`)."""
    solved, resume, more = solve_first(cost, settings, lockstep=lockstep, form=form)
    return solved, pack_resume(resume), jnp.stack([more, solved.ok])


@functools.partial(jax.jit, static_argnames=("lockstep", "form"))
def _rest_program(cost, settings, packed, lockstep, form=None):
    """:func:`solve_rest` from the packed state of :func:`_first_program`."""
    resume = unpack_resume(packed, cost, settings, lockstep=lockstep, form=form)
    return solve_rest(cost, settings, resume, lockstep=lockstep, form=form)


def solve_staged(
    cost: Array,
    settings: SolverSettings,
    *,
    method: str = "auto",
    lockstep: bool = False,
    form: _it.Form | None = None,
) -> Solved:
    """:func:`solve` as two compiled programs, the second run (and compiled) only when a
    problem needs it. Not traceable: it decides on the host."""
    if method == "log":
        return solve(cost, settings, method=method, lockstep=lockstep, form=form)
    solved, packed, flags = _first_program(cost, settings, lockstep, form)
    more, ok = np.asarray(flags)
    if more:
        return _rest_program(cost, settings, packed, lockstep=lockstep, form=form)
    return Solved(solved.output, ok)
