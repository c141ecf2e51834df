"""How much mass each target unit receives from a set of source units, from a solved plan.

The entropic plan of :func:`uotsel.sinkhorn` is ``P_ij = exp((f_i + g_j - C_ij) / eps)``.
:func:`column_mass` sums its columns over chosen rows in float64 (a log-sum-exp, so that no
entry underflows before it is added); :func:`selection_mass` does it for a ``uot``
:class:`~uotsel.Selection` from the solver output it carries, :func:`target_mass` for any
selected units, solving the problem first.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from uotsel import paper

__all__ = ["TargetMass", "column_mass", "selection_mass", "target_mass"]


class TargetMass(NamedTuple):
    """Mass received by each target unit.

    Attributes:
      selected: ``[M]`` float64 column sums of the plan over the selected source units.
      total: ``[M]`` float64 column sums over all source units, ``P^T 1``.
    """

    selected: np.ndarray
    total: np.ndarray


def column_mass(cost: Any, output: Any, rows: Any = None) -> np.ndarray:
    """``[M]`` float64 column sums of the plan of ``output`` (a :class:`~uotsel.SinkhornOutput`
    for the ``[N, M]`` ``cost``) over the source units ``rows`` (all of them when None).

    Rows and columns the solver masked (``-inf`` log marginals) carry no mass.
    """
    cost = np.asarray(cost, np.float64)
    if cost.ndim != 2:
        raise ValueError(f"cost: expected an [N, M] matrix, got shape {cost.shape}")
    n, m = cost.shape
    f = np.asarray(output.f, np.float64)
    g = np.asarray(output.g, np.float64)
    if f.shape != (n,) or g.shape != (m,):
        raise ValueError(
            f"output: potentials of shapes {f.shape} and {g.shape} do not fit a cost of shape "
            f"{cost.shape}"
        )
    eps = float(np.asarray(output.eps))
    active_rows = np.isfinite(np.asarray(output.log_row_sums))
    active_cols = np.isfinite(np.asarray(output.log_col_sums))
    keep = np.zeros(n, bool)
    if rows is None:
        keep[:] = True
    else:
        ids = np.asarray(rows, np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"rows: ids must be in [0, {n})")
        keep[ids] = True
    keep &= active_rows
    if not keep.any():
        return np.zeros(m)
    log_p = (f[keep, None] + g[None, :] - cost[keep]) / eps
    top = log_p.max(axis=0)
    safe = np.where(np.isfinite(top), top, 0.0)
    mass = np.exp(safe) * np.exp(log_p - safe).sum(axis=0)
    return np.where(active_cols, mass, 0.0)


def target_mass(source: Any, target: Any, selected: Any, **settings: Any) -> TargetMass:
    """Solve the ``uot`` problem between the ``[N, D]`` ``source`` and ``[M, D]`` ``target``
    unit features with ``settings`` (keywords of :func:`uotsel.transport`, those of
    :func:`uotsel.select`) and return the mass each target unit receives from the ``selected``
    source units and from all of them.

    Example:
      >>> import numpy as np
      >>> from uotsel.plan import target_mass
      >>> mass = target_mass(np.eye(3), np.eye(3)[:2], [0], eps_c=0.1)
      >>> bool(mass.selected[0] > mass.selected[1])
      True
    """
    from uotsel.feature_transport import transport

    return _masses(source, target, selected, transport(source, target, **settings), settings)


def selection_mass(selection: Any, source: Any, target: Any) -> TargetMass:
    """The mass each target unit receives from the selected units of a ``uot`` ``selection``
    (made by :func:`uotsel.select` from ``source`` ``[N, D]`` and ``target`` ``[M, D]``), from
    the plan of the solver output it carries: nothing is solved again."""
    if selection.strategy != "uot" or selection.solver is None:
        raise ValueError(
            f"selection: target mass needs a 'uot' selection, got {selection.strategy!r}"
        )
    return _masses(source, target, selection.selected, selection.solver, selection.settings)


def _masses(source: Any, target: Any, selected: Any, output: Any, settings: dict) -> TargetMass:
    """Column sums over ``selected`` and over all rows of the plan of ``output``, on the cost
    that ``settings`` (``cost``, ``eps_c``) define."""
    from uotsel.costs import cost_matrix

    kind = settings.get("cost", paper.COST)
    matrix = cost_matrix(source, target, kind, eps_c=settings.get("eps_c", paper.EPS_C))
    return TargetMass(column_mass(matrix, output, selected), column_mass(matrix, output))
