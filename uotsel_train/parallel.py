"""Data parallelism over every device of every process: one mesh axis, ``"data"``.

The parameters, batch statistics and optimiser state are replicated; every batch is split along
its first axis. With several processes (``jax.distributed``), each process loads only its own
rows of the global batch (:func:`local_rows`) and :func:`global_batch` joins them into one array
without moving data between hosts. With one process all of this is plain ``device_put``.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from uotsel.mesh import initialize

__all__ = [
    "check_divisible",
    "data_mesh",
    "global_batch",
    "initialize",
    "local_copy",
    "local_mesh",
    "local_rows",
    "process_share",
    "replicate",
    "sum_over_processes",
    "wait_for_all",
    "write_shared_rows",
]


def data_mesh() -> Mesh:
    """A one-axis mesh (``"data"``) over all devices of all processes, in process order."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), ("data",))


def local_mesh() -> Mesh:
    """A one-axis mesh (``"data"``) over this process's own devices: for work that each
    process does on its own share of the data (feature extraction)."""
    return Mesh(np.asarray(jax.local_devices()), ("data",))


def process_share(size: int, process: int | None = None) -> np.ndarray:
    """The indices ``0 ... size - 1`` this process (or ``process``) handles when work is split
    between processes: contiguous blocks, in process order, differing in length by at most
    one."""
    index = jax.process_index() if process is None else process
    return np.array_split(np.arange(size), jax.process_count())[index]


def sum_over_processes(x: np.ndarray) -> np.ndarray:
    """The sum of a host array over all processes (every process gets it). Floats are sent
    as two float32 parts (about 48 bits of the float64 value); integers as int32."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    if np.asarray(x).dtype.kind == "f":
        hi = np.asarray(x, np.float32)
        lo = np.asarray(np.asarray(x, np.float64) - hi, np.float32)
        parts = np.asarray(multihost_utils.process_allgather(np.stack([hi, lo])), np.float64)
        return parts.sum(axis=(0, 1))
    if np.abs(x).max(initial=0) >= 2**31:
        raise ValueError("counts: too large to add across processes")
    parts = np.asarray(multihost_utils.process_allgather(np.asarray(x, np.int32)), np.int64)
    return parts.sum(axis=0)


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


def wait_for_all(name: str) -> None:
    """Return once every process has called this with the same ``name``."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def write_shared_rows(path: str, rows: np.ndarray, share: np.ndarray, total: int) -> None:
    """Every process writes its ``rows`` ``[len(share), D]`` (rows ``share`` of ``[total, D]``)
    into one ``.npy`` at ``path`` on a file system all processes see. Process 0 creates it
    under a temporary name, all fill their rows through a memory map, and process 0 renames it
    into place once every process is done: the file at ``path`` is whole or absent."""
    from jax.experimental import multihost_utils

    token = int(multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31))))
    partial = f"{path}.partial-{token:08x}"
    lead = jax.process_index() == 0
    if lead:
        np.lib.format.open_memmap(partial, "w+", rows.dtype, (total, rows.shape[1])).flush()
    multihost_utils.sync_global_devices(f"{partial} created")
    out = np.load(partial, mmap_mode="r+")
    out[share] = rows
    out.flush()
    del out
    multihost_utils.sync_global_devices(f"{partial} written")
    if lead:
        os.replace(partial, path)
    multihost_utils.sync_global_devices(f"{partial} in place")
