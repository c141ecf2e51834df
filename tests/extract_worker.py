"""Class-mean extraction in its own process, for the multi-device tests.

``python extract_worker.py FOLDER OUT [PROCESS_ID NUM_PROCESSES PORT]``: writes
``OUT-<process>.npz`` with the means, counts, this process's share of the image indices and
their features, and the device count.
"""

import sys


def main(argv):
    folder, out = argv[:2]
    import jax

    if len(argv) > 2:
        process_id, processes, port = int(argv[2]), int(argv[3]), argv[4]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", processes, process_id)
    import jax.numpy as jnp
    import numpy as np

    from uotsel_train import data, extract, models

    source = data.ImageFolder(folder)
    variables = {
        "backbone": models.backbone("tiny").init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    }
    result = extract.extract(
        source,
        variables,
        "tiny",
        image_size=16,
        resize=18,
        batch_size=3,
        workers=2,
        keep_features=True,
    )
    np.savez(
        f"{out}-{jax.process_index()}.npz",
        means=result.means,
        counts=result.counts,
        share=result.rows,
        features=result.features,
        devices=jax.local_device_count(),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
