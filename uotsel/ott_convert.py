"""ott-jax's (``ott``) geometries and problems in uotsel's terms: the cost, ``eps``, the taus,
the weights and the masks that :func:`uotsel.sinkhorn` solves them with.

This module imports ``ott`` only inside the functions that are handed ott objects
(:func:`uotsel._checks.is_ott_object` never does), so the solver can use it whether or not
ott-jax is installed. :mod:`uotsel.ott_interop` is the public face.

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

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _checks, costs, paper
from uotsel._checks import is_ott_object

__all__ = [
    "Converted",
    "Problem",
    "features_of",
    "from_geometry",
    "from_problem",
    "sinkhorn_args",
    "tau_from_ott",
    "tau_to_ott",
]

Array = jax.Array
# ott's cost functions that uotsel computes itself, by exact type (a subclass may change the
# cost, so it goes through the cost matrix).
_KINDS = {"Cosine": "cosine", "SqEuclidean": "sqeuclidean", "Euclidean": "l2"}
# Settings of :func:`solve` that a LinearProblem fixes itself.
_FROM_PROBLEM = ("tau_source", "tau_target", "source_weights", "target_weights")


class Converted(NamedTuple):
    """The cost of an ott geometry as uotsel computes it (:func:`from_geometry`).

    Either ``kind`` names one of uotsel's costs (:data:`uotsel.COSTS`) between the point clouds
    ``source`` and ``target``, and the cost is ``scale * cost_matrix(source, target, kind,
    eps_c=1)``; or ``kind`` is None and ``cost`` is ott's own cost matrix, ``scale`` included.
    :meth:`matrix` gives the ``[n, m]`` cost in both cases.

    Attributes:
      cost: ``[n, m]`` ott's ``geom.cost_matrix`` (scaled) when ``kind`` is None, else None.
      source: ``[n, d]`` ott's ``x`` when ``kind`` is set, else None.
      target: ``[m, d]`` ott's ``y`` when ``kind`` is set, else None.
      kind: ``"cosine"``, ``"sqeuclidean"``, ``"l2"`` or None.
      scale: the factor ott multiplies its unscaled cost by, ``1 / scale_cost`` for a number
        (a float, or a scalar array when the geometry is traced). Already in ``cost``.
      epsilon: the geometry's epsilon when it was set explicitly (a number, a relative epsilon
        or a scheduler's target), None when ott would use its default (relative to the cost).
    """

    cost: Any
    source: Any
    target: Any
    kind: str | None
    scale: Any
    epsilon: float | None

    @property
    def eps_c(self) -> Any:
        """uotsel's cosine temperature for the same cost, ``1 / scale`` (``kind == "cosine"``
        only, else None): ``uotsel.transport(source, target, eps_c=eps_c)`` solves it."""
        return 1.0 / self.scale if self.kind == "cosine" else None

    def matrix(self, chunk_size: int | None = None) -> Array:
        """The ``[n, m]`` cost uotsel solves (``chunk_size``: as in :func:`uotsel.cost_matrix`)."""
        if self.kind is None:
            return jnp.asarray(self.cost)
        base = costs.cost_matrix(
            self.source, self.target, self.kind, eps_c=1.0, chunk_size=chunk_size
        )
        if _checks.is_concrete(self.scale) and float(self.scale) == 1.0:
            return base
        return base * jnp.asarray(self.scale, base.dtype)


class Problem(NamedTuple):
    """An ott ``LinearProblem`` in uotsel's terms (:func:`from_problem`).

    Attributes:
      geometry: the :class:`Converted` cost.
      eps: the entropic regularisation the taus were mapped with.
      tau_source: ``eps * tau_a / (1 - tau_a)``; ``math.inf`` for ``tau_a == 1``.
      tau_target: ``eps * tau_b / (1 - tau_b)``; ``math.inf`` for ``tau_b == 1``.
      source_weights: ``[n]`` ott's ``a`` as it is (uniform ``1 / n`` by default).
      target_weights: ``[m]`` ott's ``b`` as it is (uniform ``1 / m`` by default).
      source_mask: ``[n]`` bool, False where ``a`` is 0; None when every weight is positive (or
        the weights are traced).
      target_mask: ``[m]`` bool, the same for ``b``.
    """

    geometry: Converted
    eps: float
    tau_source: float
    tau_target: float
    source_weights: Any
    target_weights: Any
    source_mask: Any
    target_mask: Any

    def sinkhorn_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`uotsel.sinkhorn` for this problem (all but the cost,
        :meth:`Converted.matrix`)."""
        return {
            "eps": self.eps,
            "tau_source": self.tau_source,
            "tau_target": self.tau_target,
            "source_weights": self.source_weights,
            "target_weights": self.target_weights,
            "source_mask": self.source_mask,
            "target_mask": self.target_mask,
        }


def tau_from_ott(tau_a: Any, eps: Any, name: str = "tau_a") -> float:
    """uotsel's ``tau`` for ott's ``tau_a`` (or ``tau_b``) at ``eps``.

    ``tau = eps * tau_a / (1 - tau_a)``, in float64; ``tau_a == 1`` (balanced side) gives
    ``math.inf``. A traced ``eps`` (inside the caller's ``jit``) gives a traced ``tau``.

    Raises:
      ValueError, TypeError: naming ``name`` unless ``0 < tau_a <= 1``, or ``eps`` unless it is
        positive and finite.
    """
    if _checks.is_concrete(eps):
        eps = _positive(eps, "eps")
    tau_a = _number(tau_a, name)
    if not 0.0 < tau_a <= 1.0:
        raise ValueError(f"{name}: must be in (0, 1] (1: balanced side), got {tau_a!r}")
    if tau_a == 1.0:
        return math.inf
    return eps * tau_a / (1.0 - tau_a)


def tau_to_ott(tau: Any, eps: Any, name: str = "tau") -> float:
    """ott's ``tau_a`` (or ``tau_b``) for uotsel's ``tau`` at ``eps``: ``tau / (tau + eps)``,
    in float64; ``math.inf`` gives 1.0.

    Raises:
      ValueError, TypeError: naming ``name`` unless ``tau > 0`` (``inf`` allowed), or ``eps``
        unless it is positive and finite.
    """
    eps = _positive(eps, "eps")
    tau = _number(tau, name)
    if not tau > 0.0:
        raise ValueError(f"{name}: must be > 0 (math.inf: held exactly), got {tau!r}")
    if math.isinf(tau):
        return 1.0
    return tau / (tau + eps)


def from_geometry(geom: Any) -> Converted:
    """The cost of an ott ``Geometry`` (``ott.geometry.geometry.Geometry`` or a subclass).

    A ``PointCloud`` whose ``cost_fn`` is exactly ott's ``Cosine``, ``SqEuclidean`` or
    ``Euclidean`` keeps its points ``x`` ``[n, d]`` and ``y`` ``[m, d]`` and becomes uotsel's
    ``"cosine"`` (ott's ``1 - cos``), ``"sqeuclidean"`` or ``"l2"`` cost, times ott's scale
    (``geom.inv_scale_cost``: ``1 / scale_cost``, or the ``"mean"``, ``"max_cost"``,
    ``"median"``, ``"max_norm"``, ``"max_bound"`` statistic that ott computes). ``Cosine``
    adds ``ridge`` to the product of the norms; it is mapped only when that changes no cosine
    by more than half an ulp of the points' dtype (true for the default ``1e-8`` and norms
    about 1 in float32), which needs concrete points unless ``ridge`` is 0. Every other
    geometry and cost function
    gives ott's ``geom.cost_matrix`` (scaled as ott scales it).

    Args:
      geom: an ott geometry of one problem (cost ``[n, m]``).

    Returns:
      A :class:`Converted`.

    Raises:
      TypeError: naming ``geom`` when it is not an ott geometry.
      ValueError: naming ``geom`` for a batched geometry (points or cost with more than 2
        dimensions), a geometry without a cost matrix, or a ``scale_cost`` that ott cannot
        compute or that is not a positive finite factor.
    """
    if not is_ott_object(geom):
        raise TypeError(
            f"geom: expected an ott-jax Geometry or PointCloud, got {type(geom).__name__}"
        )
    from ott.geometry import costs as ott_costs
    from ott.geometry import geometry, pointcloud

    if not isinstance(geom, geometry.Geometry):
        hint = "; use from_problem" if _is_linear_problem(geom) else ""
        raise TypeError(
            f"geom: expected an ott-jax Geometry or PointCloud, got {type(geom).__name__}{hint}"
        )
    epsilon = _explicit_epsilon(geom)
    if isinstance(geom, pointcloud.PointCloud):
        for points, side in ((geom.x, "x"), (geom.y, "y")):
            if jnp.ndim(points) != 2:
                raise ValueError(
                    f"geom: batched PointCloud is not supported ({side} has shape "
                    f"{tuple(jnp.shape(points))}, expected [n, d])"
                )
    scale = _scale(geom)
    if isinstance(geom, pointcloud.PointCloud):
        kinds = {getattr(ott_costs, name): kind for name, kind in _KINDS.items()}
        kind = kinds.get(type(geom.cost_fn))
        if kind == "cosine" and not _ridge_negligible(geom):
            kind = None
        if kind is not None:
            return Converted(None, geom.x, geom.y, kind, scale, epsilon)
    try:
        cost = geom.cost_matrix
    except Exception as err:
        raise ValueError(
            f"geom: ott cannot build the cost matrix of this {type(geom).__name__}: {err}"
        ) from err
    if cost is None:
        raise ValueError(f"geom: this {type(geom).__name__} has no cost matrix")
    if jnp.ndim(cost) != 2:
        raise ValueError(
            f"geom: batched geometry is not supported (cost matrix of shape "
            f"{tuple(jnp.shape(cost))}, expected [n, m])"
        )
    return Converted(cost, None, None, None, scale, epsilon)


def from_problem(problem: Any, eps: Any = None) -> Problem:
    """An ott ``LinearProblem`` in uotsel's terms, the same problem.

    The weights are taken as ott has them: its default is uniform ``1 / n`` and ``1 / m``,
    where uotsel's (and the paper's) default is 1 per unit, a problem whose plan is a constant
    multiple of this one's (see the module's docstring).
    The taus are mapped at the ``eps`` in force: ``tau = eps * tau_a / (1 - tau_a)``, and
    ``tau_a == 1`` (a balanced side) is ``math.inf``.

    Args:
      problem: an ``ott.problems.linear.linear_problem.LinearProblem`` (cost ``[n, m]``).
      eps: the entropic regularisation to solve with. None: the geometry's epsilon when it was
        set explicitly, else the paper's absolute ``uotsel.paper.EPS`` (1.0); ott's default
        epsilon (relative to the cost) is never used. To solve the very problem ott solves
        with its default, pass ``float(problem.epsilon)``.

    Returns:
      A :class:`Problem`; ``uotsel.sinkhorn(p.geometry.matrix(), **p.sinkhorn_kwargs())``
      solves it.

    Raises:
      TypeError: naming ``problem`` when it is not an ott ``LinearProblem``.
      ValueError, TypeError: naming ``eps``, ``tau_a``/``tau_b`` or ``problem.a``/``problem.b``
        for values uotsel cannot take (as :func:`from_geometry` for the geometry).
    """
    if not (is_ott_object(problem) and _is_linear_problem(problem)):
        raise TypeError(f"problem: expected an ott-jax LinearProblem, got {type(problem).__name__}")
    converted = from_geometry(problem.geom)
    eps = _resolve_eps(eps, converted)
    tau_source = tau_from_ott(problem.tau_a, eps, "tau_a")
    tau_target = tau_from_ott(problem.tau_b, eps, "tau_b")
    a, source_mask = _weights(problem.a, "problem.a")
    b, target_mask = _weights(problem.b, "problem.b")
    return Problem(converted, eps, tau_source, tau_target, a, b, source_mask, target_mask)


def features_of(geom: Any) -> tuple[Any, Any, dict[str, Any]]:
    """``(source [n, d], target [m, d], settings)`` for :func:`uotsel.transport` and
    :func:`uotsel.select` from an ott geometry: a point cloud with a cost uotsel computes keeps
    its points (``settings``: ``cost``, and ``eps_c`` for the cosine); any other geometry gives
    its cost matrix as a function cost on stand-in features ``[n, 1]``, ``[m, 1]``. A
    geometry's explicit epsilon comes as ``eps``.

    Raises:
      TypeError, ValueError: as :func:`from_geometry`.
    """
    converted = from_geometry(geom)
    settings: dict[str, Any] = {}
    if converted.epsilon is not None:
        settings["eps"] = converted.epsilon
    plain = _checks.is_concrete(converted.scale) and float(converted.scale) == 1.0
    if converted.kind == "cosine" or (converted.kind is not None and plain):
        settings["cost"] = converted.kind
        if converted.kind == "cosine":
            settings["eps_c"] = converted.eps_c
        return converted.source, converted.target, settings
    matrix = converted.matrix()
    n, m = matrix.shape
    settings["cost"] = costs.CustomCost(_Fixed(matrix), "ott geometry")
    return np.zeros((n, 1), np.float32), np.zeros((m, 1), np.float32), settings


def sinkhorn_args(geom_or_problem: Any, eps: Any, settings: dict[str, Any]):
    """The cost ``[n, m]`` and keyword arguments of :func:`uotsel.sinkhorn` for an ott geometry
    or ``LinearProblem`` and the caller's other ``settings`` (a dict of keyword arguments).

    A geometry takes uotsel's defaults (the paper's taus, weights 1 per unit) unless ``settings``
    say otherwise, and its explicit epsilon when ``eps`` is None; a ``LinearProblem`` brings its
    own weights and taus (:func:`from_problem`).

    Raises:
      TypeError: naming ``geom_or_problem`` for anything else, or a setting that the problem
        fixes itself (``tau_source``, ``tau_target``, the weights, and a mask the problem's
        zero weights already set).
      ValueError, TypeError: as :func:`from_geometry` and :func:`from_problem`.
    """
    if is_ott_object(geom_or_problem) and _is_linear_problem(geom_or_problem):
        for name in _FROM_PROBLEM:
            if name in settings:
                raise TypeError(
                    f"{name}: set by the LinearProblem (its tau_a/tau_b and a/b); "
                    "pass its geometry to set it here"
                )
        problem = from_problem(geom_or_problem, eps)
        kwargs = problem.sinkhorn_kwargs()
        for name in ("source_mask", "target_mask"):
            if name in settings and kwargs[name] is not None:
                raise TypeError(f"{name}: set by the LinearProblem's zero weights")
            if kwargs[name] is None:
                kwargs.pop(name)
        return problem.geometry.matrix(), {**kwargs, **settings}
    if not is_ott_object(geom_or_problem):
        raise TypeError(
            "geom_or_problem: expected an ott-jax Geometry, PointCloud or LinearProblem, got "
            f"{type(geom_or_problem).__name__}"
        )
    try:
        converted = from_geometry(geom_or_problem)
    except TypeError as err:
        raise TypeError(f"geom_or_problem: {str(err).removeprefix('geom: ')}") from err
    return converted.matrix(), {"eps": _resolve_eps(eps, converted), **settings}


class _Fixed:
    """A function cost that is a given matrix whatever the features (hashable by identity)."""

    def __init__(self, matrix: Array):
        self.matrix = matrix

    def __call__(self, source: Array, target: Array) -> Array:
        return jnp.asarray(self.matrix)


def _is_linear_problem(x: Any) -> bool:
    """Checked only for ott objects, so that ott is importable."""
    from ott.problems.linear import linear_problem

    return isinstance(x, linear_problem.LinearProblem)


def _explicit_epsilon(geom: Any) -> float | None:
    """``geom.epsilon`` when an epsilon was passed to the geometry, else None."""
    if getattr(geom, "_epsilon_init", None) is None:
        return None
    value = geom.epsilon
    return float(value) if _checks.is_concrete(value) else value


def _scale(geom: Any) -> Any:
    """ott's ``inv_scale_cost``, a positive finite number (a float when concrete)."""
    try:
        scale = geom.inv_scale_cost
    except Exception as err:
        raise ValueError(
            f"geom: ott cannot compute its scale_cost {getattr(geom, '_scale_cost', None)!r}: {err}"
        ) from err
    if not _checks.is_concrete(scale):
        return scale
    scale = float(np.asarray(scale))
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(
            f"geom: scale_cost {getattr(geom, '_scale_cost', None)!r} gives a cost factor of "
            f"{scale!r}; it must be positive and finite"
        )
    return scale


def _ridge_negligible(geom: Any) -> bool:
    """Whether ott's Cosine ``ridge`` changes no cosine by more than half an ulp."""
    ridge = float(getattr(geom.cost_fn, "_ridge", 0.0))
    if ridge == 0.0:
        return True
    if not (_checks.is_concrete(geom.x) and _checks.is_concrete(geom.y)):
        return False
    x = np.asarray(geom.x, np.float64)
    y = np.asarray(geom.y, np.float64)
    if x.size == 0 or y.size == 0:
        return False
    smallest = float(np.linalg.norm(x, axis=1).min() * np.linalg.norm(y, axis=1).min())
    half_ulp = 0.5 * float(np.finfo(np.result_type(geom.x.dtype, geom.y.dtype)).eps)
    return ridge <= half_ulp * smallest


def _resolve_eps(eps: Any, converted: Converted) -> Any:
    if eps is None:
        eps = paper.EPS if converted.epsilon is None else converted.epsilon
        name = "eps (the geometry's epsilon)"
    else:
        name = "eps"
    _checks.check_positive_scalar(eps, name)
    if _checks.is_concrete(eps) and np.ndim(eps) == 0:
        return float(eps)
    return eps


def _weights(w: Any, name: str) -> tuple[Any, Any]:
    """The weights and their mask (None when every weight is positive or they are traced)."""
    if jnp.ndim(w) != 1:
        raise ValueError(f"{name}: expected a 1-d array, got shape {tuple(jnp.shape(w))}")
    if not _checks.is_concrete(w):
        return w, None
    values = np.asarray(w)
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError(f"{name}: must be finite and >= 0")
    positive = values > 0
    if not positive.any():
        raise ValueError(f"{name}: every weight is 0")
    return w, (None if positive.all() else jnp.asarray(positive))


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a number, got bool")
    if not _checks.is_concrete(value):
        raise TypeError(f"{name}: must be a concrete number, got a traced value")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}") from err
    if arr.ndim != 0:
        raise ValueError(f"{name}: expected a scalar, got shape {arr.shape}")
    if np.isnan(arr):
        raise ValueError(f"{name}: must be a number, got nan")
    return float(arr)


def _positive(value: Any, name: str) -> float:
    value = _number(value, name)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name}: must be positive and finite, got {value!r}")
    return value
