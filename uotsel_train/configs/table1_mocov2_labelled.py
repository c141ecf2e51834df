"""Table 1, MoCo-v2 ResNet50 (800 epochs) with labelled ImageNet: one arm.

    uotsel-train finetune --config table1_mocov2_labelled:uot --out-dir runs/cub-moco \\
        --config.weights=moco.npz --config.target=tfds:cub --config.test=tfds:cub:test \\
        --config.pretrain=tfds:imagenet --config.selection=uot.json

Class means for the selection come from the 128-d MoCo-v2 head (``uotsel-train extract
--moco-head``). BatchNorm statistics per 64 target + 64 pre-training images, as the released
4-GPU runs (``bn_group_size=128``; set 0 for one global batch). ARG: the arm (``uot``,
``greedy_ot``, ``random``, ``finetune``). Paper, 8-data-set average top-1: fine-tune 81.82,
random 82.83, Greedy-OT 82.76, UOT 84.75.
"""

from uotsel_train.configs import common


def get_config(arg=None):
    arm, _, _ = common.parse(arg, "mocov2_labelled")
    return common.config("mocov2_labelled", arm)
