"""Problems of ott-jax (``ott``) solved by :func:`uotsel.sinkhorn`, and uotsel's potentials as a
warm start for ott's ``Sinkhorn``.

ott-jax is an optional peer: ``import uotsel`` never imports ``ott``; the conversions live in
:mod:`uotsel.ott_convert`, which imports it only inside the functions handed ott objects.

The two libraries solve the same problem, with other names and defaults (docs/solver.md,
section "Problem"):

- **unbalancedness**: ott's ``tau_a`` is uotsel's ``k_source = tau_source / (tau_source + eps)``,
  so ``tau_source = eps * tau_a / (1 - tau_a)`` and ``tau_a = 1`` is ``tau_source = inf`` (a side
  held exactly); likewise ``tau_b`` and ``tau_target``. The mapping depends on the ``eps`` the
  problem is solved with.
- **weights**: ott's default weights are uniform, ``1 / n`` and ``1 / m``; uotsel's (and the
  paper's) are 1 per unit. Scaling the weights by ``alpha`` (source) and ``beta`` (target)
  multiplies the whole plan by ``exp((k_s (1 - k_t) log alpha + k_t (1 - k_s) log beta) /
  (1 - k_s k_t))``: the ranking stays, the masses do not. The weights are always carried over
  as ott has them.
- **epsilon**: ott's default ``epsilon`` is relative to the cost (``0.05`` times the standard
  deviation of the cost matrix); the paper's ``eps`` is 1, absolute. Only an ``epsilon`` set on
  the geometry is carried over.
- **cost**: ott divides its cost by ``scale_cost``; ``Cosine`` is ``1 - cos``, so a point cloud
  with ``scale_cost = eps_c`` has uotsel's cosine cost ``(1 - cos) / eps_c``.
- **potentials**: both write the plan ``P = exp((f_i + g_j - C_ij) / eps)`` without the weights
  in the kernel, and both run the same update (ott's ``lse_mode`` iteration, uotsel's
  ``method="log"``), so they share the fixed point: uotsel's ``f``, ``g`` are ott's potentials,
  and either library's potentials warm-start the other (:func:`to_ott_init`; ott's ``f`` as
  uotsel's ``init``). ott marks units of zero weight with potential ``-inf``; uotsel masks them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from uotsel import unbalanced
from uotsel._checks import is_ott_object
from uotsel.ott_convert import (
    Converted,
    Problem,
    features_of,
    from_geometry,
    from_problem,
    tau_from_ott,
    tau_to_ott,
)
from uotsel.unbalanced import SinkhornOutput

__all__ = [
    "Converted",
    "features_of",
    "Problem",
    "from_geometry",
    "from_problem",
    "is_ott_object",
    "solve",
    "tau_from_ott",
    "tau_to_ott",
    "to_ott_init",
]

Array = jax.Array


def to_ott_init(output: SinkhornOutput, *, lse_mode: bool = True) -> tuple[Array, Array]:
    """uotsel's potentials as the ``init`` of ott's ``Sinkhorn`` (``solver(problem, init=...)``).

    ott's potentials of the same problem are uotsel's ``f`` and ``g``, so ott started from
    them stops after its first error check. Masked units (``-inf`` log-sums) get ott's
    marker for zero weights, potential ``-inf`` (scaling 0).

    Args:
      output: a :class:`uotsel.SinkhornOutput` with ``f`` ``[..., n]`` and ``g`` ``[..., m]``.
      lse_mode: ott's ``Sinkhorn(lse_mode=...)``: True, the potentials ``(f, g)``; False, the
        scalings ``(exp(f / eps), exp(g / eps))`` (which may overflow where ``lse_mode`` is
        needed anyway).

    Returns:
      The tuple ``(f, g)`` (``[..., n]``, ``[..., m]``), or ``(u, v)`` for ``lse_mode=False``.

    Raises:
      TypeError: naming ``output`` when it is not a :class:`uotsel.SinkhornOutput`, or
        ``lse_mode`` when it is not a bool.
    """
    if not isinstance(output, SinkhornOutput):
        raise TypeError(f"output: expected a uotsel.SinkhornOutput, got {type(output).__name__}")
    if not isinstance(lse_mode, bool):
        raise TypeError(f"lse_mode: expected a bool, got {type(lse_mode).__name__}")
    f = jnp.where(jnp.isfinite(output.log_row_sums), output.f, -jnp.inf)
    g = jnp.where(jnp.isfinite(output.log_col_sums), output.g, -jnp.inf)
    if lse_mode:
        return f, g
    eps = jnp.asarray(output.eps)[..., None]
    return jnp.exp(f / eps), jnp.exp(g / eps)


def solve(geom_or_problem: Any, eps: Any = None, **settings: Any) -> SinkhornOutput:
    """Solve an ott geometry or ``LinearProblem`` with :func:`uotsel.sinkhorn`.

    A geometry is solved with uotsel's defaults (the paper's taus, weights 1 per unit) unless
    ``settings`` say otherwise; a ``LinearProblem`` with its own weights and taus
    (:func:`from_problem`).

    Args:
      geom_or_problem: an ott ``Geometry``/``PointCloud`` or ``LinearProblem`` (cost ``[n, m]``).
      eps: the entropic regularisation. None: the geometry's epsilon when it was set
        explicitly, else the paper's ``uotsel.paper.EPS`` (1.0). ott's default epsilon is
        relative to the cost and is not used.
      settings: further keyword arguments of :func:`uotsel.sinkhorn` (``threshold``,
        ``max_iter``, ``init``, ``method``, ...; for a geometry also the taus, weights and
        masks).

    Returns:
      The :class:`uotsel.SinkhornOutput` (``f`` ``[n]``, ``g`` ``[m]``); its plan is
      ``output.plan(from_geometry(geom).matrix())``.

    Raises:
      TypeError: naming ``geom_or_problem`` for anything else, or a setting that the problem
        fixes itself (``tau_source``, ``tau_target``, the weights, and a mask the problem's
        zero weights already set).
      ValueError, TypeError: as :func:`from_geometry`, :func:`from_problem` and
        :func:`uotsel.sinkhorn`.
    """
    if not is_ott_object(geom_or_problem):
        raise TypeError(
            "geom_or_problem: expected an ott-jax Geometry, PointCloud or LinearProblem, got "
            f"{type(geom_or_problem).__name__}"
        )
    return unbalanced.sinkhorn(geom_or_problem, eps=eps, **settings)
