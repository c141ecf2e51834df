"""Fig. 3b: less target data: a share of every target class (0.2, 0.4, 0.6, 0.8, 1.0).

    for f in 0.2 0.4 0.6 0.8 1.0; do
      for arm in finetune uot; do
        uotsel-train finetune --config fig3b_low_data:$f,$arm --out-dir runs/low-$f-$arm \\
            --config.weights=r18.npz --config.target=tfds:cub --config.test=tfds:cub:test \\
            --config.pretrain=tfds:imagenet --config.selection=uot.json
      done
    done

The kept images are drawn per class with ``subset_seed`` (at least one per class); an epoch is
one pass over them, so the schedule has fewer steps as the share falls. The test set is whole.
ARG: ``fraction[,arm][,setting]`` (defaults 1.0, ``uot``, ``resnet18``). Paper: the gain of UOT
over fine-tuning grows as the target data shrinks.
"""

from uotsel_train.configs import common


def get_config(arg=None):
    arm, setting, number = common.parse(arg, "resnet18")
    out = common.config(setting, arm)
    out["target_fraction"] = float(number or 1.0)
    return out
