"""Unbalanced OT between two sets of unit features, cost and solve in one compiled program.

:func:`transport` is what ``select(strategy="uot")`` runs: the same answer as
``sinkhorn(cost_matrix(source, target, ...), ...)``, without a round trip between the two
programs (about a quarter of the time of a 2000 x 200 problem on a 2-core CPU).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _checks, costs, unbalanced
from uotsel.unbalanced import SinkhornOutput

__all__ = ["transport"]


def transport(
    source: Any,
    target: Any,
    *,
    cost: str = "cosine",
    eps_c: Any = 0.01,
    eps: Any = 1.0,
    tau_source: Any = 1.0,
    tau_target: Any = 100.0,
    source_weights: Any = None,
    target_weights: Any = None,
    threshold: Any = 1e-5,
    max_iter: int = 1000,
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
      ValueError, TypeError: bad features or settings, named in the message.

    Example:
      >>> import numpy as np, uotsel
      >>> out = uotsel.transport(np.eye(3), np.eye(3)[:1], eps_c=0.1)
      >>> int(np.argmax(out.log_row_sums))
      0
    """
    if cost not in costs.COSTS:
        raise ValueError(f"cost: unknown cost {cost!r}; valid: {', '.join(costs.COSTS)}")
    if cost == "cosine":
        _checks.check_positive_scalar(eps_c, "eps_c")
    source, target = costs.prepare(source, target)
    (n, _), (m, _) = source.shape, target.shape
    solver_args = unbalanced.prepare(
        (),
        n,
        m,
        source.dtype,
        eps=eps,
        tau_source=tau_source,
        tau_target=tau_target,
        source_weights=source_weights,
        target_weights=target_weights,
        source_mask=None,
        target_mask=None,
        threshold=threshold,
        max_iter=max_iter,
        init=init,
        method=method,
    )
    chunk = n if chunk_size is None else _checks.check_positive_int(chunk_size, "chunk_size")
    scale = np.asarray(eps_c if cost == "cosine" else 1.0, source.dtype)
    out, flags, ok = _transport_one(cost, source, target, scale, chunk, *solver_args, method=method)
    costs.raise_if_flagged(flags, source, target, cost)
    if _checks.is_concrete(ok) and not bool(ok):
        raise FloatingPointError("transport: the potentials became non-finite")
    return out


@functools.partial(jax.jit, static_argnames=("kind", "chunk_size", "method"))
def _transport_one(kind, source, target, scale, chunk_size, *solver_args, method):
    cost, flags = costs._pairwise(kind, source, target, jnp.asarray(scale), chunk_size)
    out, ok = unbalanced._solve_one(cost, *solver_args, method=method)
    return out, flags, ok
