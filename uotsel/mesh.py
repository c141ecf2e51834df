"""Work split over devices (and hosts) along the source axis: the mesh, the placements, and
the rule that decides when a problem is split.

One mesh axis, ``"sources"``, over every device JAX sees (under ``jax.distributed``, those of
every process). A source-axis array ``[N, ...]`` is split into equal row blocks, one per
device; ``N`` is padded up to a multiple of the device count with rows that the solver masks
out. Everything else (the target features, scalars, ``[M]`` vectors) is replicated. Inside a
compiled program the cost ``[N, M]`` keeps the source split, so each device holds ``N / D``
rows of it, and XLA sums the column products of every Sinkhorn half-iteration across devices
(one all-reduce of ``[M]`` values).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "AXIS",
    "SHARD_ABOVE_BYTES",
    "SHARD_CHOICES",
    "constrain_replicated",
    "initialize",
    "constrain_rows",
    "padded_size",
    "place_rows",
    "replicate",
    "resolve",
    "source_mesh",
    "to_host",
]

AXIS = "sources"

# ``shard="auto"`` splits a problem once its cost matrix would take more than this on one
# device (and more than one device is present).
SHARD_ABOVE_BYTES = 1 << 30

SHARD_CHOICES = ("auto", "on", "off")


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-process run (``jax.distributed.initialize``): without arguments the
    cluster is read from the environment (SLURM, Open MPI, Cloud TPU, ...). Call it before any
    other JAX work; afterwards :func:`source_mesh` spans the devices of every process."""
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def source_mesh(devices: Any = None) -> Mesh:
    """A one-axis mesh (``AXIS``) over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: needs at least one device")
    return Mesh(np.asarray(devices), (AXIS,))


def resolve(shard: Any, n: int, m: int, itemsize: int) -> Mesh | None:
    """The mesh a problem with an ``[n, m]`` cost of ``itemsize`` bytes per entry runs on:
    ``shard`` is ``"off"`` (one device: ``None``), ``"on"`` (every device), ``"auto"`` (every
    device when there are several and the cost exceeds :data:`SHARD_ABOVE_BYTES`), or a
    :class:`jax.sharding.Mesh` with an ``AXIS`` axis, used as given."""
    if isinstance(shard, Mesh):
        if AXIS not in shard.axis_names:
            raise ValueError(
                f"shard: the mesh needs an axis named {AXIS!r}, has {shard.axis_names}"
            )
        return shard
    if not isinstance(shard, str) or shard not in SHARD_CHOICES:
        raise ValueError(
            f"shard: must be one of {', '.join(SHARD_CHOICES)} or a Mesh, got {shard!r}"
        )
    big = n * m * itemsize > SHARD_ABOVE_BYTES
    if shard == "on" or (shard == "auto" and big and jax.device_count() > 1):
        return source_mesh()
    return None


def padded_size(n: int, mesh: Mesh) -> int:
    """``n`` rounded up to a multiple of the number of devices along ``AXIS``."""
    parts = mesh.shape[AXIS]
    return -(-n // parts) * parts


def _spec(ndim: int) -> PartitionSpec:
    return PartitionSpec(AXIS, *([None] * (ndim - 1)))


def place_rows(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """Host array ``[N, ...]`` (the same on every process, ``N`` a multiple of the devices
    along ``AXIS``) as one global array split by rows; each device receives only its block."""
    sharding = NamedSharding(mesh, _spec(x.ndim))
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def replicate(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """Host array (the same on every process) copied whole to every device of ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.make_array_from_callback(np.shape(x), sharding, lambda index: x[index])


def constrain_rows(x: jax.Array, mesh: Mesh | None) -> jax.Array:
    """Inside a compiled program: keep ``x`` ``[N, ...]`` split by rows over ``mesh``."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, _spec(x.ndim)))


def constrain_replicated(x: jax.Array, mesh: Mesh | None) -> jax.Array:
    """Inside a compiled program: ``x`` whole on every device of ``mesh``."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec()))


def to_host(x: Any) -> np.ndarray:
    """The whole of ``x`` as a host array on every process, also when its blocks live on
    other processes' devices."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
