"""The selection problem's settings as one value: :class:`UOT`.

``UOT()`` is the paper's problem (its defaults are read from :mod:`uotsel.paper`, their one
home); change a setting with ``UOT(tau_target=50.0)`` or ``settings._replace(eps=0.5)``.
:func:`uotsel.sinkhorn`, :func:`uotsel.transport`, :func:`uotsel.select` (strategy ``uot``) and
the ``uotsel select`` command take it; their keyword arguments of the same names stay as a
convenience and are resolved here (:func:`resolve`), so a keyword given overrides the value's
field and a keyword left out (None) keeps it. Validation happens where the setting is used
(:func:`uotsel.unbalanced.prepare` for the solver, :mod:`uotsel.costs` for the cost).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from uotsel import paper

__all__ = ["FIELD_HELP", "UOT", "resolve"]


class UOT(NamedTuple):
    """Settings of the entropic unbalanced OT problem that ranks the source units.

    Attributes:
      cost: the cost between unit features: a name (``"cosine"``, ``"l2"``, ``"sqeuclidean"``),
        a :class:`uotsel.costs.Cost`, or a function ``(source [n, d], target [m, d]) -> [n, m]``
        (see :func:`uotsel.costs.resolve`). Used by :func:`uotsel.transport` and
        :func:`uotsel.select`; :func:`uotsel.sinkhorn` takes a cost matrix instead.
      eps_c: the cosine cost's temperature, ``C = (1 - cos) / eps_c``; other costs ignore it.
      eps: entropic regularisation, ``> 0``.
      tau_source, tau_target: KL weights of the source and target marginals, ``> 0``
        (``math.inf``: held exactly). The paper's ``tau1`` and ``tau2``.
      threshold: the certified relative error of the marginals at which the solver stops.
      max_iter: the solver's iteration cap.
      method: ``"auto"`` (scaling iterations, log-domain when needed) or ``"log"``.
    """

    cost: Any = paper.COST
    eps_c: Any = paper.EPS_C
    eps: Any = paper.EPS
    tau_source: Any = paper.TAU_SOURCE
    tau_target: Any = paper.TAU_TARGET
    threshold: Any = paper.SOLVER_RTOL
    max_iter: Any = paper.SOLVER_MAX_ITER
    method: str = "auto"


# One line of help for each field, for the command line and the docs.
FIELD_HELP = {
    "cost": "cost between unit features",
    "eps_c": "cosine cost temperature: C = (1 - cos) / eps_c (the l2 and sqeuclidean costs "
    "ignore it)",
    "eps": "entropic regularisation",
    "tau_source": "KL weight of the source marginal; inf = exact",
    "tau_target": "KL weight of the target marginal; inf = exact",
    "threshold": "certified relative error of the marginals at which to stop",
    "max_iter": "Sinkhorn iteration cap",
    "method": "auto (scaling iterations, log-domain when needed) or log",
}


def resolve(settings: UOT | None = None, **overrides: Any) -> UOT:
    """``settings`` (default ``UOT()``, the paper's) with every override that is not None.

    Raises:
      TypeError: ``settings`` is not a :class:`UOT`, or an override is not one of its fields.
    """
    if settings is None:
        settings = UOT()
    elif not isinstance(settings, UOT):
        raise TypeError(
            f"settings: expected a uotsel.UOT (e.g. uotsel.UOT(tau_target=50.0)), got "
            f"{type(settings).__name__}"
        )
    unknown = sorted(set(overrides) - set(UOT._fields))
    if unknown:
        valid = ", ".join(UOT._fields)
        raise TypeError(f"{unknown[0]}: not a setting of uotsel.UOT; valid: {valid}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return settings._replace(**given) if given else settings
