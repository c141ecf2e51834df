"""One small labelled fine-tune on a per-sample list (the ``samples`` setting) in its own
process, for tests/test_train_parallel.py.

``python samples_fit_worker.py TARGET PRETRAIN SAMPLES OUT [PROCESS_ID NUM_PROCESSES PORT]``:
the settings of tests/fit_worker.py plus ``samples=SAMPLES``, read by
:func:`uotsel_train.input_pipeline.load_inputs`. Every process ``i`` writes into ``OUT``:
``loads-<i>.txt`` (every pre-training image it loaded, one index a line),
``pretrain-<i>.npy`` (the pre-training indices it trains on) and its copy of the final
parameters (``params.npz`` from process 0, ``params-<i>.npz`` from the others); process 0
writes ``eval.json``.
"""

import json
import os
import sys


def main(argv):
    target_root, pretrain_root, samples, out = argv[:4]
    import jax

    process_id = 0
    if len(argv) > 4:
        process_id, processes, port = int(argv[4]), int(argv[5]), argv[6]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{port}", processes, process_id)
    import jax.numpy as jnp
    import numpy as np
    from fit_worker import SETTINGS
    from train_helpers import RecordingSource

    from uotsel_train import config, input_pipeline, models, parallel, train

    paths = [f"target={target_root}", f"test={target_root}", f"pretrain={pretrain_root}"]
    cfg = config.override(config.default(), [*SETTINGS, *paths, f"samples={samples}"])
    config.validate(cfg, check_files=False)
    inputs = input_pipeline.load_inputs(cfg)
    os.makedirs(out, exist_ok=True)
    log = os.path.join(out, f"loads-{process_id}.txt")
    inputs = inputs._replace(pretrain=RecordingSource(inputs.pretrain, log))
    np.save(os.path.join(out, f"pretrain-{process_id}.npy"), inputs.pretrain_indices)
    backbone = models.backbone("tiny").init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    result = train.fit(cfg, inputs, backbone, os.path.join(out, "run"), log=lambda line: None)
    params = parallel.local_copy(result.state.params)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    name = "params.npz" if process_id == 0 else f"params-{process_id}.npz"
    np.savez(os.path.join(out, name), **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    if jax.process_index() == 0:
        with open(os.path.join(out, "eval.json"), "w") as fh:
            json.dump(result.last, fh)


if __name__ == "__main__":
    main(sys.argv[1:])
