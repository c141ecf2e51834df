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
from typing import Any

import jax
import numpy as np

from uotsel import _checks, ott_convert, solvable
from uotsel import _iterations as _it
from uotsel.programs import (
    FIRST_PROGRAM_OPTIONS,
    SinkhornOutput,
    Solved,
    SolverSettings,
    pack_resume,
    solve,
    solve_first,
    solve_rest,
    solve_staged,
    unpack_resume,
)
from uotsel.settings import UOT, resolve
from uotsel.solvable import eps_range, explain_failure, resolved_range, weight_range

__all__ = [
    "FIRST_PROGRAM_OPTIONS",
    "METHODS",
    "STALL_PATIENCE",
    "SinkhornOutput",
    "Solved",
    "SolverSettings",
    "eps_range",
    "explain_failure",
    "prepare",
    "resolved_range",
    "on_device",
    "device_scalar",
    "pack_resume",
    "sinkhorn",
    "solve",
    "solve_first",
    "solve_rest",
    "solve_staged",
    "unpack_resume",
    "weight_range",
]

Array = jax.Array
STALL_PATIENCE = _it.STALL_PATIENCE
METHODS = ("auto", "log")


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
        cost = jax.device_put(cost)
        solved = solve_staged(cost, on_device(settings), method=method, lockstep=lockstep)
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


def on_device(settings: SolverSettings) -> SolverSettings:
    """``settings`` with every host value on the default device, explicitly: scalars from a
    cache of device constants (the same settings cost no transfer the next time), arrays in one
    batched transfer. Traced and device values are left as they are. The same settings object
    as the call before (plain settings come from :func:`prepare`'s cache) is placed once."""
    last = _last_placed
    if last is not None and last[0] is settings and last[2] == jax.config.jax_default_device:
        return last[1]
    placed = _place(settings)
    _remember(settings, placed)
    return placed


# The last settings :func:`on_device` placed: (host settings, placed, default device).
_last_placed: tuple | None = None


def _remember(settings: SolverSettings, placed: SolverSettings) -> None:
    global _last_placed
    _last_placed = (settings, placed, jax.config.jax_default_device)


def _place(settings: SolverSettings) -> SolverSettings:
    hosted = [k for k, v in settings._asdict().items() if isinstance(v, np.ndarray | np.generic)]
    scalars = {
        k: device_scalar(getattr(settings, k)) for k in hosted if np.ndim(getattr(settings, k)) == 0
    }
    arrays = [k for k in hosted if k not in scalars]
    placed = jax.device_put([getattr(settings, k) for k in arrays]) if arrays else []
    return settings._replace(**scalars, **dict(zip(arrays, placed, strict=True)))


def device_scalar(value: np.ndarray | np.generic) -> Array:
    """A 0-d host value as a device constant, shared by every call with the same value and
    dtype."""
    value = np.asarray(value)
    return _device_scalar(value.tobytes(), value.dtype.str)


@functools.lru_cache(maxsize=256)
def _device_scalar(data: bytes, dtype: str) -> Array:
    return jax.device_put(np.frombuffer(data, dtype).reshape(()))


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

    Settings given as plain hashable values (no arrays) with no per-problem data are
    validated once per shape and dtype: later calls get the same :class:`SolverSettings`.

    Returns:
      The :class:`SolverSettings` that :func:`solve` takes.

    Raises:
      ValueError, TypeError: naming the bad argument.
    """
    uot = resolve(settings, **overrides)
    data = (source_weights, target_weights, source_mask, target_mask, init)
    key = _plain_key(uot) if all(x is None for x in data) else None
    if key is not None:
        return _prepare_plain(tuple(int(k) for k in lead), int(n), int(m), np.dtype(dtype).str, key)
    return _prepare(lead, n, m, dtype, uot, *data)


def _plain_key(uot: UOT) -> tuple | None:
    """``uot`` as a hashable key that tells each field's type (``1``, ``1.0`` and ``True``
    differ), or None when a field cannot be hashed (an array, a traced value)."""
    key = tuple((type(v), v) for v in uot)
    try:
        hash(key)
    except TypeError:
        return None
    return key


@functools.lru_cache(maxsize=64)
def _prepare_plain(lead, n, m, dtype, key) -> SolverSettings:
    return _prepare(lead, n, m, np.dtype(dtype), UOT(*(v for _, v in key)))


def _prepare(
    lead,
    n,
    m,
    dtype,
    uot,
    source_weights=None,
    target_weights=None,
    source_mask=None,
    target_mask=None,
    init=None,
) -> SolverSettings:
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
