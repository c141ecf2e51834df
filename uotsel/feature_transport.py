"""Unbalanced OT between two sets of unit features, cost and solve in one compiled program.

:func:`transport` is what ``select(strategy="uot")`` runs: the same answer as
``sinkhorn(cost_matrix(source, target, ...), ...)``, with the cost built inside the solver's
program (on a 2-core CPU this saves no time: see ``sinkhorn_peers`` in docs/benchmarks.md).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _checks, costs, paper, unbalanced
from uotsel.unbalanced import SinkhornOutput

__all__ = ["transport"]


def transport(
    source: Any,
    target: Any,
    *,
    cost: str = paper.COST,
    eps_c: Any = paper.EPS_C,
    eps: Any = paper.EPS,
    tau_source: Any = paper.TAU_SOURCE,
    tau_target: Any = paper.TAU_TARGET,
    source_weights: Any = None,
    target_weights: Any = None,
    threshold: Any = paper.SOLVER_RTOL,
    max_iter: int = paper.SOLVER_MAX_ITER,
    init: Any = None,
    method: str = "auto",
    chunk_size: int | None = None,
) -> SinkhornOutput:
    """Solve the unbalanced OT problem between ``source`` ``[n, d]`` and ``target`` ``[m, d]``.

    Args:
      source, target: unit features (class means or cluster centroids).
      cost: ``"cosine"`` (``(1 - cos) / eps_c``, the paper's), ``"l2"`` or ``"sqeuclidean"``.
      eps_c: cosine temperature (paper: 0.01); ignored by the other costs.
      chunk_size: compute the cost ``chunk_size`` source rows at a time.
      eps, tau_source, tau_target, source_weights, target_weights, threshold, max_iter, init,
        method: as in :func:`uotsel.sinkhorn`.

    Returns:
      A :class:`~uotsel.SinkhornOutput` (``log_row_sums`` ``[n]`` ranks the source units).

    Raises:
      ValueError, TypeError: bad features or settings, named in the message; as
        :func:`uotsel.sinkhorn`, ``eps`` is named when it is too small for the cost in the
        features' dtype.

    Example:
      >>> import numpy as np, uotsel
      >>> out = uotsel.transport(np.eye(3), np.eye(3)[:1], eps_c=0.1)
      >>> int(np.argmax(out.log_row_sums))
      0
    """
    costs.check_kind(cost)
    source, target = costs.prepare(source, target)
    if cost == "cosine":
        costs.check_eps_c(eps_c, source.dtype)
    (n, _), (m, _) = source.shape, target.shape
    settings = unbalanced.prepare(
        (),
        n,
        m,
        source.dtype,
        eps=eps,
        tau_source=tau_source,
        tau_target=tau_target,
        source_weights=source_weights,
        target_weights=target_weights,
        threshold=threshold,
        max_iter=max_iter,
        init=init,
        method=method,
    )
    chunk = n if chunk_size is None else _checks.check_positive_int(chunk_size, "chunk_size")
    scale = np.asarray(eps_c if cost == "cosine" else 1.0, source.dtype)
    out, valid = _run(cost, source, target, scale, chunk, settings, method, wide=False)
    if costs.needs_wide(cost, valid[:3]):
        out, valid = _run(cost, source, target, scale, chunk, settings, method, wide=True)
    # One transfer for all four flags; only a raised flag pays for a closer look.
    if _checks.is_concrete(valid) and not bool(np.all(valid)):
        costs.raise_if_flagged(costs.PairwiseCost(None, 0, valid[:3]), source, target, cost)
        # The cost matrix is built again to name the cause.
        matrix = costs.cost_matrix(source, target, cost, eps_c=eps_c, chunk_size=chunk)
        if not bool(valid[3]):
            unbalanced.explain_failure(matrix, settings, out)
    return out


def _run(kind, source, target, eps_c, chunk, settings, method, wide):
    """The output and the ``[4]`` validity flags: in two programs (the second only when a
    problem needs it) when the inputs are concrete, else in one."""
    concrete = _checks.is_concrete(source) and _checks.is_concrete(target)
    args = (kind, source, target, eps_c, chunk, settings, wide if concrete else None)
    if method == "auto" and concrete:
        out, flags, resume = _transport_first(*args)
        flags = np.asarray(flags)  # one transfer: the [4] validity flags, then "more"
        valid = flags[:4]
        if flags[4] and valid[:3].all():
            out, valid = _transport_rest(*args, resume)
        return out, valid
    return _transport_one(*args, method=method)


@functools.partial(jax.jit, static_argnames=("kind", "chunk_size", "method", "wide"))
def _transport_one(kind, source, target, eps_c, chunk_size, settings, wide, *, method):
    """Cost and solve in one program; returns the output and the ``[4]`` validity flags
    (:class:`~uotsel.costs.PairwiseCost` ``valid``, then :class:`~uotsel.unbalanced.Solved`
    ``ok``)."""
    built = costs.pairwise(kind, source, target, jnp.asarray(eps_c), chunk_size, wide=wide)
    solved = unbalanced.solve(built.cost, settings, method=method)
    return solved.output, jnp.concatenate([built.valid, solved.ok[None]])


@functools.partial(jax.jit, static_argnames=("kind", "chunk_size", "wide"))
def _transport_first(kind, source, target, eps_c, chunk_size, settings, wide):
    """Cost and :func:`~uotsel.unbalanced.solve_first` in one program: the output so far,
    ``[5]`` flags (those of :func:`_transport_one`, then whether to resume), and the state to
    resume from."""
    built = costs.pairwise(kind, source, target, jnp.asarray(eps_c), chunk_size, wide=wide)
    solved, resume, more = unbalanced.solve_first(built.cost, settings)
    flags = jnp.concatenate([built.valid, solved.ok[None], more[None]])
    return solved.output, flags, resume


@functools.partial(jax.jit, static_argnames=("kind", "chunk_size", "wide"))
def _transport_rest(kind, source, target, eps_c, chunk_size, settings, wide, resume):
    """The cost again and :func:`~uotsel.unbalanced.solve_rest`, for the problems that need it."""
    built = costs.pairwise(kind, source, target, jnp.asarray(eps_c), chunk_size, wide=wide)
    solved = unbalanced.solve_rest(built.cost, settings, resume)
    return solved.output, jnp.concatenate([built.valid, solved.ok[None]])
