"""Data parallelism over every device of every process: one mesh axis, ``"data"``.

The parameters, batch statistics and optimiser state are replicated; every batch is split along
its first axis. With several processes (``jax.distributed``), each process loads only its own
rows of the global batch (:func:`local_rows`) and :func:`global_batch` joins them into one array
without moving data between hosts. With one process all of this is plain ``device_put``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "check_divisible",
    "data_mesh",
    "global_batch",
    "initialize",
    "local_copy",
    "local_rows",
    "replicate",
]


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join a multi-process run (``jax.distributed.initialize``). Without arguments the cluster
    is detected from the environment (SLURM, Open MPI, Cloud TPU, ...). Call it before any
    other JAX work."""
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def data_mesh() -> Mesh:
    """A one-axis mesh (``"data"``) over all devices of all processes, in process order."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), ("data",))


def _split(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec("data"))


def check_divisible(mesh: Mesh, name: str, size: int) -> None:
    """Raise a one-line ``ValueError`` naming ``name`` unless ``size`` splits evenly."""
    if size % mesh.size:
        raise ValueError(f"{name}: {size} does not split evenly over the {mesh.size} devices")


def local_rows(mesh: Mesh, size: int) -> slice:
    """The rows of a global batch of ``size`` that live on this process's devices."""
    index_map = _split(mesh).addressable_devices_indices_map((size,))
    starts = sorted((idx[0].start or 0, idx[0].stop or size) for idx in index_map.values())
    lo, hi = starts[0][0], starts[-1][1]
    if sum(b - a for a, b in starts) != hi - lo:
        raise ValueError("mesh: this process's devices do not hold contiguous rows")
    return slice(lo, hi)


def global_batch(mesh: Mesh, local: dict[str, np.ndarray], sizes: dict[str, int]) -> dict:
    """Join each process's rows (``local[k]``, the :func:`local_rows` of ``sizes[k]``) into
    global arrays split over ``mesh``."""
    sharding = _split(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, v, (sizes[k], *v.shape[1:]))
        for k, v in local.items()
    }


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Every leaf of ``tree`` (identical on every process) replicated on every device."""
    sharding = NamedSharding(mesh, PartitionSpec())
    host = jax.device_get(tree)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, host)


def local_copy(tree: Any) -> Any:
    """One on-process copy of each replicated leaf (for work each process does on its own)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x.addressable_data(0)
        return x

    return jax.tree.map(one, tree)
