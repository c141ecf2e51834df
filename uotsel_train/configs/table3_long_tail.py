"""Table 3: long-tailed target sets, the largest class 10x the smallest.

    for arm in finetune uot; do
      uotsel-train finetune --config table3_long_tail:$arm --out-dir runs/lt-$arm \\
          --config.weights=r18.npz --config.target=tfds:cub --config.test=tfds:cub:test \\
          --config.pretrain=tfds:imagenet --config.selection=uot.json
    done

Each class keeps ``10 ** (-r / (C - 1))`` of its images at its (seeded, random) rank ``r``: the
exponential profile of Cui et al. 2019, which the paper follows (``long_tail_profile=power``
gives a power law instead). The test set stays balanced. ARG: ``arm[,setting]`` (defaults
``uot``, ``resnet18``). Paper, top-1 fine-tune -> UOT: CUB 52.73 -> 57.27, Aircraft
52.74 -> 53.96, Caltech101 73.96 -> 78.20.
"""

from uotsel_train.configs import common


def get_config(arg=None):
    arm, setting, number = common.parse(arg, "resnet18")
    out = common.config(setting, arm)
    out["long_tail"] = float(number or 10.0)
    return out
