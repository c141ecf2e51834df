"""Unbalanced OT between two sets of unit features, cost and solve in one compiled program.

:func:`transport` is what ``select(strategy="uot")`` runs: the same answer as
``sinkhorn(cost_matrix(source, target, ...), ...)``, with the cost built inside the solver's
program (on a 2-core CPU this saves no time: see ``sinkhorn_peers`` in docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uotsel import _checks, costs, ott_convert, unbalanced
from uotsel import mesh as meshes
from uotsel.settings import UOT, resolve
from uotsel.unbalanced import SinkhornOutput

__all__ = ["transport"]


def transport(
    source: Any,
    target: Any = None,
    settings: UOT | None = None,
    *,
    cost: Any = None,
    eps_c: Any = None,
    eps: Any = None,
    tau_source: Any = None,
    tau_target: Any = None,
    source_weights: Any = None,
    target_weights: Any = None,
    threshold: Any = None,
    max_iter: int | None = None,
    init: Any = None,
    method: str | None = None,
    chunk_size: int | None = None,
    shard: Any = "auto",
) -> SinkhornOutput:
    """Solve the unbalanced OT problem between ``source`` ``[n, d]`` and ``target`` ``[m, d]``.

    Args:
      source, target: unit features (class means or cluster centroids); or ``source`` an
        ott-jax ``Geometry``/``PointCloud`` and ``target`` None (its points and cost, or its
        cost matrix, see :func:`uotsel.ott_convert.features_of`).
      settings: a :class:`uotsel.UOT` (default ``UOT()``, the paper's); the keyword arguments
        of the same names override its fields (None: the field's value).
      cost: ``"cosine"`` (``(1 - cos) / eps_c``, the paper's), ``"l2"``, ``"sqeuclidean"``, a
        :class:`uotsel.costs.Cost`, or a function ``(source [n, d], target [m, d]) -> [n, m]``
        traceable by JAX (see :func:`uotsel.costs.resolve`).
      eps_c: cosine temperature (paper: 0.01); ignored by the other costs.
      chunk_size: compute the cost ``chunk_size`` source rows at a time (registered costs).
      shard: split the source axis over devices (:mod:`uotsel.mesh`): ``"auto"`` (when
        there are several devices and the ``[n, m]`` cost exceeds
        :data:`uotsel.mesh.SHARD_ABOVE_BYTES`), ``"on"``, ``"off"``, or a
        :class:`jax.sharding.Mesh` with a ``"sources"`` axis. Split or not, the iterations and
        the stopping rule are the same; only the order of floating-point sums differs. A
        function cost is solved unsplit.
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
      >>> out = uotsel.transport(np.eye(3), np.eye(3)[:1], uotsel.UOT(eps_c=0.1))
      >>> int(np.argmax(out.log_row_sums))
      0
    """
    if _checks.is_ott_object(source):
        source, target, cost, eps_c, eps = _from_ott(source, target, cost, eps_c, eps, settings)
    uot = resolve(
        settings,
        cost=cost,
        eps_c=eps_c,
        eps=eps,
        tau_source=tau_source,
        tau_target=tau_target,
        threshold=threshold,
        max_iter=max_iter,
        method=method,
    )
    kind = costs.resolve(uot.cost)
    source, target, dtype = costs.checked(source, target)
    if isinstance(kind, costs.CustomCost):
        matrix = costs.custom_matrix(kind, *costs.prepare(source, target))
        meshes.resolve(shard, 0, 0, 0)  # checked only
        return unbalanced.sinkhorn(
            matrix, uot, source_weights=source_weights, target_weights=target_weights, init=init
        )
    mesh = _mesh(shard, source, target, dtype)
    source, target = _host_or_device(source, dtype), _host_or_device(target, dtype)
    if kind.uses_eps_c:
        costs.check_eps_c(uot.eps_c, source.dtype)
    (n, _), (m, _) = source.shape, target.shape
    settings = unbalanced.prepare(
        (),
        n,
        m,
        source.dtype,
        uot,
        source_weights=source_weights,
        target_weights=target_weights,
        init=init,
    )
    chunk = None if chunk_size is None else _checks.check_positive_int(chunk_size, "chunk_size")
    scale = np.asarray(uot.eps_c if kind.uses_eps_c else 1.0, source.dtype)
    out, valid = _solve(kind, source, target, scale, chunk, settings, uot.method, mesh)
    # One transfer for all four flags; only a raised flag pays for a closer look.
    if _checks.is_concrete(valid) and not bool(np.all(valid)):
        costs.raise_if_flagged(costs.PairwiseCost(None, 0, valid[:3]), source, target, kind)
        # The cost matrix is built again to name the cause.
        matrix = costs.cost_matrix(source, target, kind, eps_c=uot.eps_c, chunk_size=chunk)
        if not bool(valid[3]):
            unbalanced.explain_failure(matrix, settings, out)
    return out


def _from_ott(geom, target, cost, eps_c, eps, settings):
    """An ott-jax geometry given as ``source``: its points (or its cost matrix) and what it
    says of ``cost``, ``eps_c`` and ``eps``, below what the caller set
    (:func:`uotsel.ott_convert.features_of`)."""
    if target is not None:
        raise TypeError("target: must be None when source is an ott-jax geometry (it holds both)")
    source, target, given = ott_convert.features_of(geom)
    if "eps" in given and settings is not None:
        given.pop("eps")  # the settings' eps is the caller's
    pick = {"cost": cost, "eps_c": eps_c, "eps": eps}
    return (source, target, *(v if v is not None else given.get(k) for k, v in pick.items()))


def _solve(kind, source, target, scale, chunk, settings, method, mesh):
    """The output ``[n]`` and the ``[4]`` validity flags, on ``mesh`` when there is one
    (``chunk``: None for the whole of each device's rows)."""
    n = source.shape[0]
    if mesh is not None:
        source, target, settings = _on_mesh(source, target, settings, mesh)
    else:
        scale, settings = unbalanced.device_scalar(scale), unbalanced.on_device(settings)
    chunk = chunk or source.shape[0]
    with _features_to_device(source, target):
        out, valid = _run(kind, source, target, scale, chunk, settings, method, False, mesh)
        if costs.needs_wide(kind, valid[:3]):
            out, valid = _run(kind, source, target, scale, chunk, settings, method, True, mesh)
    if mesh is not None:
        out = out._replace(f=out.f[:n], log_row_sums=out.log_row_sums[:n])
    return out, valid


def _features_to_device(source: Any, target: Any):
    """Host features are copied to the device by the program call itself, the one transfer a
    call makes, allowed by name under any transfer guard: on a small problem an explicit
    ``jax.device_put`` costs more than the whole solve. The settings are device constants
    (:func:`uotsel.unbalanced.on_device`) and are never copied implicitly."""
    if isinstance(source, np.ndarray) or isinstance(target, np.ndarray):
        return jax.transfer_guard_host_to_device("allow")
    return contextlib.nullcontext()


def _host_or_device(x: Any, dtype: Any) -> Any:
    """Host arrays stay on the host in ``dtype`` (placed with everything else in one transfer,
    or split over a mesh); device and traced arrays are cast where they are."""
    if isinstance(x, np.ndarray):
        return np.asarray(x, dtype)
    if isinstance(x, jax.Array) and x.dtype == dtype:
        return x
    return jnp.asarray(x, dtype)


def _mesh(shard, source, target, dtype):
    """The mesh of :func:`uotsel.mesh.resolve` for concrete features; traced ones stay where
    the caller's program puts them (``shard`` is still checked)."""
    if not (_checks.is_concrete(source) and _checks.is_concrete(target)):
        meshes.resolve(shard, 0, 0, 0)
        return None
    return meshes.resolve(shard, source.shape[0], target.shape[0], np.dtype(dtype).itemsize)


def _on_mesh(source, target, settings, mesh):
    """Host features ``[n, d]``, ``[m, d]`` and their settings, padded to a multiple of the
    mesh's devices (padding rows copy row 0 and are masked out) and placed: the source split
    by rows, the target replicated."""
    n = source.shape[0]
    size = meshes.padded_size(n, mesh)

    def pad(x, fill):
        if x is None or size == n:
            return x
        x = np.asarray(x)
        return np.concatenate([x, np.full((size - n, *x.shape[1:]), fill, x.dtype)])

    rows = source if size == n else np.concatenate([source, np.repeat(source[:1], size - n, 0)])
    vectors = {
        "source_weights": pad(settings.source_weights, 1.0),
        "source_mask": None if size == n else np.arange(size) < n,
        "init": pad(settings.init, 0.0),
    }
    placed = settings._replace(
        **{
            k: None if v is None else meshes.place_rows(np.asarray(v), mesh)
            for k, v in vectors.items()
        }
    )
    return meshes.place_rows(rows, mesh), meshes.replicate(target, mesh), placed


def _run(kind, source, target, eps_c, chunk, settings, method, wide, mesh):
    """The output and the ``[4]`` validity flags: in two programs (the second only when a
    problem needs it) when the inputs are concrete, else in one."""
    concrete = _checks.is_concrete(source) and _checks.is_concrete(target)
    args = (kind, source, target, eps_c, chunk, settings, wide if concrete else None, mesh)
    if method == "auto" and concrete:
        out, flags, packed = _transport_first(*args)
        flags = np.asarray(flags)  # one transfer: the [4] validity flags, then "more"
        valid = flags[:4]
        if flags[4] and valid[:3].all():
            out, valid = _transport_rest(*args, packed)
        return out, valid
    return _transport_one(*args, method=method)


@functools.partial(jax.jit, static_argnames=("kind", "chunk_size", "method", "wide", "mesh"))
def _transport_one(kind, source, target, eps_c, chunk_size, settings, wide, mesh, *, method):
    """Cost and solve in one program; returns the output and the ``[4]`` validity flags
    (:class:`~uotsel.costs.PairwiseCost` ``valid``, then :class:`~uotsel.unbalanced.Solved`
    ``ok``)."""
    built = _cost(kind, source, target, eps_c, chunk_size, wide, mesh)
    solved = unbalanced.solve(built.cost, settings, method=method)
    return _gathered(solved.output, mesh), jnp.concatenate([built.valid, solved.ok[None]])


@functools.partial(
    jax.jit,
    static_argnames=("kind", "chunk_size", "wide", "mesh"),
    compiler_options=unbalanced.FIRST_PROGRAM_OPTIONS,
)
def _transport_first(kind, source, target, eps_c, chunk_size, settings, wide, mesh):
    """Cost and :func:`~uotsel.unbalanced.solve_first` in one program: the output so far,
    ``[5]`` flags (those of :func:`_transport_one`, then whether to resume), and the state to
    resume from, packed (:func:`~uotsel.unbalanced.pack_resume`)."""
    built = _cost(kind, source, target, eps_c, chunk_size, wide, mesh)
    solved, resume, more = unbalanced.solve_first(built.cost, settings)
    flags = jnp.concatenate([built.valid, solved.ok[None], more[None]])
    return _gathered(solved.output, mesh), flags, unbalanced.pack_resume(resume)


@functools.partial(jax.jit, static_argnames=("kind", "chunk_size", "wide", "mesh"))
def _transport_rest(kind, source, target, eps_c, chunk_size, settings, wide, mesh, packed):
    """The cost again and :func:`~uotsel.unbalanced.solve_rest` from the packed state of
    :func:`_transport_first`, for the problems that need it."""
    built = _cost(kind, source, target, eps_c, chunk_size, wide, mesh)
    resume = unbalanced.unpack_resume(packed, built.cost, settings)
    solved = unbalanced.solve_rest(built.cost, settings, resume)
    return _gathered(solved.output, mesh), jnp.concatenate([built.valid, solved.ok[None]])


def _cost(kind, source, target, eps_c, chunk_size, wide, mesh):
    """Inside the programs: the cost, split by source rows over ``mesh`` when there is one."""
    built = costs.pairwise(kind, source, target, jnp.asarray(eps_c), chunk_size, wide=wide)
    return built._replace(cost=meshes.constrain_rows(built.cost, mesh))


def _gathered(out: SinkhornOutput, mesh) -> SinkhornOutput:
    """Inside the programs: the ``[n]`` outputs whole on every device (on every host)."""
    if mesh is None:
        return out
    return out._replace(
        f=meshes.constrain_replicated(out.f, mesh),
        log_row_sums=meshes.constrain_replicated(out.log_row_sums, mesh),
    )
