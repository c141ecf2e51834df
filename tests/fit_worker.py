"""One small labelled fine-tune in its own process, for the data-parallel tests.

``python fit_worker.py TARGET PRETRAIN OUT [PROCESS_ID NUM_PROCESSES PORT]``: image folders in,
``OUT/params.npz`` (flattened final parameters) and ``OUT/eval.json`` out (from process 0).
"""

import json
import os
import sys

# The run's settings (the samples worker, tests/samples_fit_worker.py, trains with them too).
SETTINGS = [
    "arch=tiny",
    "objective=labelled",
    "lr=0.05",
    "lam=0.5",
    "epochs=2",
    "milestones=1",
    "batch_size=4",
    "source_batch_size=4",
    "image_size=16",
    "eval_every=1",
    "workers=2",
    "progress=false",
]


def main(argv):
    target_root, pretrain_root, out = argv[:3]
    import jax

    if len(argv) > 3:
        process_id, processes, port = int(argv[3]), int(argv[4]), argv[5]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", processes, process_id)
    import jax.numpy as jnp
    import numpy as np

    from uotsel_train import config, data, input_pipeline, models, parallel, streams, train

    target, pretrain = data.ImageFolder(target_root), data.ImageFolder(pretrain_root)
    cfg = config.override(config.default(), SETTINGS)
    config.validate(cfg, check_files=False)
    inputs = input_pipeline.Inputs(
        target=target,
        train_indices=np.arange(len(target)),
        val_indices=np.zeros(0, np.int64),
        test=target,
        pretrain=pretrain,
        pretrain_indices=streams.selected_samples(pretrain.labels, [0, 2]),
        num_source_classes=3,
    )
    backbone = models.backbone("tiny").init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    result = train.fit(cfg, inputs, backbone, os.path.join(out, "run"), log=lambda line: None)
    if jax.process_index() == 0:
        params = parallel.local_copy(result.state.params)
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        np.savez(
            os.path.join(out, "params.npz"),
            **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves},
        )
        with open(os.path.join(out, "eval.json"), "w") as fh:
            json.dump(result.last, fh)


if __name__ == "__main__":
    main(sys.argv[1:])
