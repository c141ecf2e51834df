"""One process of a 2-process selection under ``jax.distributed`` (tests/test_sharding.py).

Usage: sharded_worker.py OUT PROCESS_ID PROCESSES PORT. Every process builds the same features,
solves with the source axis split over the devices of all processes and clusters samples split
the same way; process 0 writes the log row and column sums, the iteration count and the
clustering to OUT (.npz).
"""

import sys

import jax
import numpy as np


def features():
    rng = np.random.default_rng(11)
    return rng.normal(size=(301, 16)).astype(np.float32), rng.normal(size=(13, 16)).astype(
        np.float32
    )


def samples():
    rng = np.random.default_rng(12)
    centers = rng.normal(size=(5, 8))
    return (centers[rng.integers(0, 5, size=401)] + 0.2 * rng.normal(size=(401, 8))).astype(
        np.float32
    )


def main(out, process_id, processes, port):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", int(processes), int(process_id))
    import uotsel

    assert jax.process_count() == int(processes) and jax.device_count() > jax.local_device_count()
    result = uotsel.transport(*features(), shard="on")
    rows, cols = np.asarray(result.log_row_sums), np.asarray(result.log_col_sums)
    clusters = uotsel.kmeans(samples(), 5, seed=4, shard="on")
    if jax.process_index() == 0:
        np.savez(
            out,
            rows=rows,
            cols=cols,
            n_iters=int(result.n_iters),
            devices=jax.device_count(),
            assignment=clusters.assignment,
            centroids=clusters.centroids,
            objective=clusters.objective,
        )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
