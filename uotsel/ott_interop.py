"""Problems of ott-jax (``ott``) solved by :func:`uotsel.sinkhorn`, and uotsel's potentials as a
warm start for ott's ``Sinkhorn``.

ott-jax is an optional peer: ``import uotsel`` never imports ``ott``; the conversions live in
:mod:`uotsel.ott_convert`, which imports it only inside the functions handed ott objects.

The two libraries solve the same problem with other names and defaults (ott's ``tau_a`` is
uotsel's ``tau_source / (tau_source + eps)``; ott's weights are ``1 / n``, uotsel's 1 per
unit; ott's default epsilon is relative to the cost): :mod:`uotsel.ott_convert` states the
whole mapping and docs/solver.md tabulates it. Both write the plan without the weights in the
kernel and share the fixed point, so either library's potentials warm-start the other
(:func:`to_ott_init`; ott's ``f`` as uotsel's ``init``).
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
