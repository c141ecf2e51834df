"""The Sinkhorn iterations behind :func:`uotsel.sinkhorn`, for one problem (batches map or
``vmap`` over them).

Two loops compute the same fixed point and share the stopping rule (see ``docs/solver.md``):

- ``kernel_loop``: scaling iterations on an *absorbed* kernel
  ``K = exp((f0_i + g0_j - C_ij) / eps - r_i)`` taken at potentials ``(f0, g0)``, with ``r``
  the row maxima so that every row has its largest entry at 1. The potentials are tracked as
  deviations ``f = f0 + eps * w``, ``g = g0 + eps * v``. One iteration is two matrix-vector
  products plus O(n + m) work. Products are normalised by the largest scaling; an iteration
  whose row or column sums come close to the float range (where dropped underflowing terms
  could matter) is refused and the kernel absorbed again at the current potentials (also done
  when either deviation grows past ``REABSORB_AT``); if an iteration is refused right after an
  absorption, the problem is handed to the log-domain loop.
- ``log_loop`` (:mod:`uotsel._log_loop`): log-sum-exp iterations over the cost itself:
  slower (an ``exp`` over the whole matrix per half-iteration) but exact for any cost scale;
  the fallback and the reference.

Both keep the iterate with the smallest certified error and stop when the error is below the
threshold, when ``max_iter`` is reached, or when ``STALL_PATIENCE`` iterations in a row have
not lowered the error (rounding has taken over).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _check_every as check_every
from uotsel import _rounding
from uotsel._products import col_sums, row_sums

Array = jax.Array

# Absorb the kernel again once either potential has moved this far (in units of eps) from the
# point of the last absorption: steps are measured on the deviations, whose rounding then stays
# below ~ulp(REABSORB_AT), far under the float32 stopping threshold.
REABSORB_AT = 16.0

# Stop once this many iterations in a row have not lowered the error: the iteration has reached
# the floating-point floor (about ulp(max |f|) / eps) above the requested threshold.
STALL_PATIENCE = 50

# Iterations between two tests of the stopping rule on accelerators, where every test of a while
# loop's condition waits for the device and copies the predicate to the host.
ACCELERATOR_CHECK_EVERY = 8
# Of those, iterations written out one after another in the compiled loop body: the loop counter
# and the copies of the packed state are then shared by two iterations, and XLA fuses across
# them (kernels per iteration compiled for a GPU: benchmarks/gpu_programs.py).
ACCELERATOR_UNROLL = 2


class Form(NamedTuple):
    """How the kernel loop is laid out (static: part of the compiled program).

    Attributes:
      check_every: iterations between two tests of the stopping rule. Each iteration is still
        kept or masked by the state before it, so results are those of ``check_every = 1``;
        only the decision to leave the loop is taken every ``check_every`` iterations.
      products: the loop's matrix-vector products as ``"dot"`` (BLAS calls: fastest on CPU),
        ``"reduce"`` (reductions the compiler fuses with the ``exp`` of the vector before
        them and the ``log`` after them: for accelerators), or ``"auto"``: chosen
        per platform when the program is lowered (``dot`` on CPU, ``reduce`` elsewhere).
      unroll: of the ``check_every`` iterations, how many are written out one after another
        in the compiled loop body (more kernels fused, a longer compile; results unchanged).
    """

    check_every: int = 1
    products: str = "auto"
    unroll: int = 1


# The layouts a program gets with ``form=None``, chosen when it is lowered (see kernel_pass).
CPU_FORM = Form(1, "dot")
ACCELERATOR_FORM = Form(ACCELERATOR_CHECK_EVERY, "reduce", ACCELERATOR_UNROLL)


class Problem(NamedTuple):
    """One problem and the constants derived from its settings (all arrays)."""

    cost: Array  # [n, m]
    log_source_weights: Array  # [n], 0 on masked rows
    log_target_weights: Array  # [m], 0 on masked columns
    source_mask: Array  # [n] bool
    target_mask: Array  # [m] bool
    eps: Array
    inv_tau_source: Array  # 1 / tau_source, 0 for a side held exactly
    inv_tau_target: Array
    k_source: Array  # tau / (tau + eps), 1 for a side held exactly
    k_target: Array
    row_gain: Array  # turns delta = |f_new - f_old|_inf into a log-marginal error bound
    col_gain: Array
    shift_gain: Array  # optimal dual translation per unit of log-mass difference
    threshold: Array
    max_iter: Array


class Progress(NamedTuple):
    """Best iterate so far and the loop's counters."""

    n_iters: Array
    f: Array  # best f (unshifted output of an f update)
    g: Array  # the g it was computed from
    error: Array  # its certified error
    since_best: Array  # iterations since the error last improved


def held_exactly(eps: Any, tau: Any, dtype: Any) -> Any:
    """Whether a marginal with KL weight ``tau`` is held exactly in ``dtype``: ``tau = inf``, or
    ``tau / eps`` so large that ``k = tau / (tau + eps)`` rounds to 1 (beyond ``2 / finfo.eps``,
    2^24 in float32). Works on numpy and jax values alike."""
    return eps < tau * (0.5 * float(np.finfo(dtype).eps))


def make_problem(
    cost,
    log_source_weights,
    log_target_weights,
    source_mask,
    target_mask,
    eps,
    tau_source,
    tau_target,
    threshold,
    max_iter,
):
    inv_eps = 1.0 / eps
    exact_s = held_exactly(eps, tau_source, cost.dtype)
    exact_t = held_exactly(eps, tau_target, cost.dtype)
    inv_tau_s = jnp.where(exact_s, 0.0, 1.0 / tau_source)
    inv_tau_t = jnp.where(exact_t, 0.0, 1.0 / tau_target)
    k_s = 1.0 / (1.0 + eps * inv_tau_s)
    k_t = 1.0 / (1.0 + eps * inv_tau_t)
    # 1 - k = eps / (tau + eps) and 1 - kappa from them, without the cancellation of 1 - k_s k_t
    # when both taus are large relative to eps.
    slack_s = jnp.where(exact_s, 0.0, 1.0 / (1.0 + tau_source * inv_eps))
    slack_t = jnp.where(exact_t, 0.0, 1.0 / (1.0 + tau_target * inv_eps))
    kappa = k_s * k_t
    one_minus_kappa = slack_s + slack_t - slack_s * slack_t
    relaxed_s, relaxed_t = inv_tau_s > 0, inv_tau_t > 0
    safe = jnp.where(relaxed_s | relaxed_t, one_minus_kappa, 1.0)
    return Problem(
        cost=cost,
        log_source_weights=jnp.where(source_mask, log_source_weights, 0.0),
        log_target_weights=jnp.where(target_mask, log_target_weights, 0.0),
        source_mask=source_mask,
        target_mask=target_mask,
        eps=eps,
        inv_tau_source=inv_tau_s,
        inv_tau_target=inv_tau_t,
        k_source=k_s,
        k_target=k_t,
        row_gain=jnp.where(relaxed_s, kappa / safe * inv_tau_s, 0.0),
        col_gain=jnp.where(relaxed_t, k_t / safe * inv_tau_t, 0.0) + inv_eps,
        # With one side exact this is the limit tau -> inf of the formula; with both exact
        # the problem is translation invariant and needs no shift.
        shift_gain=jnp.where(relaxed_s | relaxed_t, 1.0 / (inv_tau_s + inv_tau_t), 0.0),
        threshold=threshold,
        max_iter=max_iter,
    )


def masked_lse(z: Array, mask: Array, axis: int) -> Array:
    """log-sum-exp of ``z`` over ``axis``, with ``mask`` (broadcast to ``z``) excluding entries."""
    z = jnp.where(mask, z, -jnp.inf)
    top = jnp.max(z, axis=axis, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    total = jnp.sum(jnp.exp(z - top), axis=axis)
    return jnp.squeeze(top, axis) + jnp.log(total)


def grid(p: Problem) -> Array:
    return p.source_mask[:, None] & p.target_mask[None, :]


def step_error(p: Problem, step: Array) -> Array:
    """Certified error bound from one plain step ``f_new - f_old``."""
    delta = jnp.max(jnp.where(p.source_mask, jnp.abs(step), 0.0))
    return jnp.expm1(jnp.maximum(p.row_gain, p.col_gain) * delta)


def dual_shift(p: Problem, mass_source: Array, mass_target: Array) -> Array:
    """Optimal translation of the dual given the log-masses of the current plan's marginals
    (``log sum P 1`` from the row side, ``log sum P^T 1`` from the column side), or 0 when their
    difference is within rounding (the gain can be large, and a shift made of rounding noise
    would keep the iteration from settling)."""
    diff = mass_source - mass_target
    # Rounding of the two log-masses: a few ulps of each, plus the float sums over n and m
    # terms (relative error ~ sqrt(terms) * eps).
    terms = p.log_source_weights.shape[0] + p.log_target_weights.shape[0]
    noise = jnp.finfo(diff.dtype).eps * (
        4 * (jnp.abs(mass_source) + jnp.abs(mass_target) + 1.0) + 2 * math.sqrt(terms)
    )
    return jnp.where(jnp.abs(diff) > noise, p.shift_gain * diff, 0.0)


def log_masses(p: Problem, f_new: Array, g: Array) -> tuple[Array, Array]:
    """Log total masses implied by ``f_new`` (rows) and ``g`` (columns)."""
    rows = p.log_source_weights - f_new * p.inv_tau_source
    cols = p.log_target_weights - g * p.inv_tau_target
    return masked_lse(rows, p.source_mask, axis=0), masked_lse(cols, p.target_mask, axis=0)


def reduce_many(*parts: tuple[str, Array]) -> tuple[Array, ...]:
    """Several full reductions of equally shaped arrays in one pass (one reduction for XLA).

    ``parts`` are ``(kind, array)`` with kind ``"max"``, ``"min"`` or ``"lse"`` (log-sum-exp,
    accumulated as a running maximum and a sum rescaled to it); one result per part. NaN
    propagates through every kind.
    """
    kinds = [kind for kind, _ in parts]
    operands, inits = [], []
    for kind, x in parts:
        dtype = x.dtype
        if kind == "lse":
            operands += [x, jnp.ones_like(x)]
            inits += [jnp.array(-jnp.inf, dtype), jnp.array(0.0, dtype)]
        else:
            operands.append(x)
            inits.append(jnp.array(-jnp.inf if kind == "max" else jnp.inf, dtype))

    def combine(left, right):
        out, i = [], 0
        for kind in kinds:
            if kind == "lse":
                (m1, s1), (m2, s2) = left[i : i + 2], right[i : i + 2]
                top = jnp.maximum(m1, m2)
                safe = jnp.where(jnp.isfinite(top), top, 0.0)
                out += [top, s1 * jnp.exp(m1 - safe) + s2 * jnp.exp(m2 - safe)]
                i += 2
            else:
                out.append((jnp.maximum if kind == "max" else jnp.minimum)(left[i], right[i]))
                i += 1
        return tuple(out)

    dims = tuple(range(operands[0].ndim))
    reduced = jax.lax.reduce(tuple(operands), tuple(inits), combine, dims)
    results, i = [], 0
    for kind in kinds:
        if kind == "lse":
            results.append(reduced[i] + jnp.log(reduced[i + 1]))
            i += 2
        else:
            results.append(reduced[i])
            i += 1
    return tuple(results)


def record(progress: Progress, f_new: Array, g: Array, error: Array) -> Progress:
    # The first iterate is always kept, so that the output is an iterate of the loop even when
    # no error bound is finite (the caller then reports the problem).
    better = (error < progress.error) | (progress.n_iters == 0)
    return Progress(
        n_iters=progress.n_iters + 1,
        f=jnp.where(better, f_new, progress.f),
        g=jnp.where(better, g, progress.g),
        error=jnp.where(better, error, progress.error),
        since_best=jnp.where(better, 0, progress.since_best + 1),
    )


def keep_going(p: Problem, progress: Progress) -> Array:
    return (
        (progress.n_iters < p.max_iter)
        & (progress.error > p.threshold)
        & (progress.since_best < STALL_PATIENCE)
    )


def start(p: Problem, f0: Array) -> Progress:
    dtype = p.cost.dtype
    return Progress(
        n_iters=jnp.int32(0),
        f=jnp.where(p.source_mask, f0, 0.0).astype(dtype),
        g=jnp.zeros(p.log_target_weights.shape, dtype),
        error=jnp.asarray(jnp.inf, dtype),
        since_best=jnp.int32(0),
    )


class Pass(NamedTuple):
    """The end of one run of kernel iterations (see :func:`kernel_pass`)."""

    f: Array  # [n] potentials reached (the next absorption point)
    g: Array  # [m]
    progress: Progress
    again: Array  # absorb again and continue (the kernel left its range, or drifted far)
    bad: Array  # the last iteration was refused (sums near the float range)
    log_cols: Array  # [m] log column sums of the best plan, valid where cols_ok
    cols_ok: Array
    check: Array  # [4] rounding check of the best plan (uotsel._rounding), valid where check_ok
    check_ok: Array
    tests: Array  # int32: tests of a loop condition so far (each a host round trip on a GPU)


def _tiny(p: Problem) -> tuple[Array, Array]:
    """Row and column sums of normalised products below these could be missing underflowed
    terms worth more than a rounding error: such an iteration is refused."""
    info = jnp.finfo(p.cost.dtype)
    n, m = p.cost.shape
    return info.tiny * m / info.eps, info.tiny * n / info.eps


def first_g(p: Problem, f: Array) -> Array:
    """The eps = 0 transform of ``f``: absorbed at ``(f, first_g(f))`` every row and column of
    the kernel has its maximum at 1."""
    g0 = jnp.min(jnp.where(grid(p), p.cost - f[:, None], jnp.inf), axis=0)
    return jnp.where(p.target_mask, g0, 0.0)


def absorb(p: Problem, f: Array, g: Array) -> tuple[Array, Array]:
    """The kernel ``[n, m]`` absorbed at ``(f, g)`` with its row maxima ``r`` ``[n]`` taken out."""
    z = jnp.where(grid(p), (f[:, None] + g[None, :] - p.cost) / p.eps, -jnp.inf)
    r = jnp.where(p.source_mask, jnp.max(z, axis=1), 0.0)
    return jnp.exp(z - r[:, None]), r


def kernel_pass(p: Problem, f: Array, g: Array, progress: Progress, form: Form | None) -> Pass:
    """Absorb the kernel at ``(f, g)`` and iterate on it until the stopping rule fires, an
    iteration is refused, or the potentials drift ``REABSORB_AT`` from the absorption point.
    The stopping rule is tested every ``form.check_every`` iterations (:class:`Form`).

    ``form`` None: ``CPU_FORM`` in a program lowered for the CPU, ``ACCELERATOR_FORM`` for
    any other platform. The choice is made when the program is lowered
    (``jax.lax.platform_dependent``), so a program lowered for CUDA on a machine without a GPU,
    or exported for several platforms, gets each platform's loop.
    """
    if form is None:
        return jax.lax.platform_dependent(
            p,
            f,
            g,
            progress,
            cpu=functools.partial(_kernel_pass, form=CPU_FORM),
            default=functools.partial(_kernel_pass, form=ACCELERATOR_FORM),
        )
    return _kernel_pass(p, f, g, progress, form)


def _kernel_pass(p: Problem, f: Array, g: Array, progress: Progress, form: Form) -> Pass:
    """:func:`kernel_pass` in a given form."""
    kernel, r = absorb(p, f, g)
    tiny_rows, tiny_cols = _tiny(p)
    # Potentials are tracked as deviations from the absorption point: f + eps * w and
    # g + eps * lv. The large per-row offsets r enter only through constants computed once
    # here, so the step w_new - w carries no rounding of |f| (the stopping rule needs it).
    top_r = jnp.max(jnp.where(p.source_mask, r, -jnp.inf))
    rel_r = jnp.where(p.source_mask, r - top_r, -jnp.inf)
    e = p.log_source_weights - f * p.inv_tau_source - r
    c = p.log_target_weights - g * p.inv_tau_target - top_r

    def iterate(state, live):
        """One iteration from ``state``, kept where it is ``live`` and not refused."""
        w, lv_prev, top_u, progress, was_bad, was_far = state
        s = col_sums(jnp.exp(rel_r + w - top_u), kernel, form.products)
        lv = jnp.where(p.target_mask, p.k_target * (c - jnp.log(s) - top_u), 0.0)
        g_new = g + p.eps * lv
        top_v, low_s, mass_target, drift_v = reduce_many(
            ("max", jnp.where(p.target_mask, lv, -jnp.inf)),
            ("min", jnp.where(p.target_mask, s, jnp.inf)),
            (
                "lse",
                jnp.where(p.target_mask, p.log_target_weights - g_new * p.inv_tau_target, -jnp.inf),
            ),
            ("max", jnp.abs(lv)),
        )
        rv = row_sums(kernel, jnp.where(p.target_mask, jnp.exp(lv - top_v), 0.0), form.products)
        w_new = jnp.where(p.source_mask, p.k_source * (e - jnp.log(rv) - top_v), 0.0)
        f_new = f + p.eps * w_new
        low_rv, step, mass_source = reduce_many(
            ("min", jnp.where(p.source_mask, rv, jnp.inf)),
            ("max", jnp.where(p.source_mask, jnp.abs(w_new - w), 0.0)),
            (
                "lse",
                jnp.where(p.source_mask, p.log_source_weights - f_new * p.inv_tau_source, -jnp.inf),
            ),
        )
        # Sums in range (NaN fails the comparison) also make both logarithms finite.
        bad = ~(low_s >= tiny_cols) | ~(low_rv >= tiny_rows)
        error = jnp.expm1(jnp.maximum(p.row_gain, p.col_gain) * (p.eps * step))
        updated = record(progress, f_new, g_new, error)
        w_next = jnp.where(
            p.source_mask, w_new + dual_shift(p, mass_source, mass_target) / p.eps, 0.0
        )
        drift, top_next = reduce_many(
            ("max", jnp.abs(w_next)), ("max", jnp.where(p.source_mask, rel_r + w_next, -jnp.inf))
        )
        take = live & ~bad
        keep = lambda new, old: jnp.where(take, new, old)  # noqa: E731
        return (
            keep(w_next, w),
            keep(lv, lv_prev),
            keep(top_next, top_u),
            jax.tree.map(keep, updated, progress),
            jnp.where(live, bad, was_bad),
            jnp.where(live, (jnp.maximum(drift, drift_v) > REABSORB_AT) & ~bad, was_far),
        )

    def go(state):
        return keep_going(p, state[3]) & ~state[4] & ~state[5]

    def body(state):
        state, runs = state
        return check_every.run(iterate, go, form.check_every, state, form.unroll), runs + 1

    top_u = jnp.max(rel_r)
    zero = jnp.bool_(False)
    state = (jnp.zeros_like(f), jnp.zeros_like(g), top_u, progress, zero, zero)
    (w, lv, _, progress, bad, far), runs = jax.lax.while_loop(
        lambda s: go(s[0]), body, (state, jnp.int32(0))
    )
    log_cols, cols_ok, check, check_ok = _best_plan(
        p, progress, form, kernel, r, rel_r, top_r, f, g, tiny_cols
    )
    return Pass(
        f=jnp.where(p.source_mask, f + p.eps * w, 0.0),
        g=jnp.where(p.target_mask, g + p.eps * lv, 0.0),
        progress=progress,
        again=bad | far,
        bad=bad,
        log_cols=log_cols,
        cols_ok=cols_ok,
        check=check,
        check_ok=check_ok,
        tests=runs + 1,
    )


def _best_plan(p, progress, form, kernel, r, rel_r, top_r, f, g, tiny_cols):
    """The column sums ``log_cols`` ``[m]`` of the best plan of ``progress`` from the kernel
    absorbed at ``(f, g)`` (one more matrix-vector product), whether they are in range, and the
    rounding check of that plan (``uotsel._rounding``), made on the last pass only."""
    z = jnp.where(p.source_mask, rel_r + (progress.f - f) / p.eps, -jnp.inf)
    top = jnp.max(z)
    s_best = col_sums(jnp.exp(z - top), kernel, form.products)
    log_cols = (progress.g - g) / p.eps + jnp.log(s_best) + top + top_r
    cols_ok = jnp.all(~p.target_mask | ((s_best >= tiny_cols) & jnp.isfinite(log_cols)))
    check, check_ok = jax.lax.cond(
        keep_going(p, progress),
        lambda: _rounding.unchecked(p.cost.dtype),
        lambda: _rounding.kernel_check(
            p,
            kernel,
            r,
            rel_r,
            top_r,
            f,
            g,
            progress.f,
            progress.g,
            z,
            top,
            log_cols,
            form.products,
        ),
    )
    return log_cols, cols_ok, check, check_ok


def initial_pass(p: Problem, f: Array, progress: Progress) -> Pass:
    """The state before any kernel pass: absorb at ``(f, first_g(f))`` next."""
    zeros = jnp.zeros_like(p.log_target_weights)
    return Pass(
        f,
        first_g(p, f),
        progress,
        jnp.bool_(True),
        jnp.bool_(False),
        zeros,
        jnp.bool_(False),
        *_rounding.unchecked(p.cost.dtype),
        jnp.int32(0),
    )


def kernel_loop(p: Problem, last: Pass, stuck: Array, form: Form | None) -> tuple[Pass, Array]:
    """Kernel passes continuing from ``last``, absorbing again as long as a pass asks for it
    (``form``: as :func:`kernel_pass` takes it).

    Returns:
      ``(last, stuck)``: the last :class:`Pass`; ``stuck`` says the problem must be finished
      by :func:`log_loop` from ``last.f`` (an iteration was refused right after absorbing).
    """

    def body(state):
        last, _ = state
        before = last.progress.n_iters
        new = kernel_pass(p, last.f, last.g, last.progress, form)
        # This pass's tests, and the test of ``more`` that led to it.
        last = new._replace(tests=last.tests + new.tests + 1)
        return last, last.bad & (last.progress.n_iters == before)

    def more(state):
        last, stuck = state
        return last.again & ~stuck & keep_going(p, last.progress)

    last, stuck = jax.lax.while_loop(more, body, (last, stuck))
    return last._replace(tests=last.tests + 1), stuck
