"""Table 1, supervised ResNet18 (torchvision weights) with labelled ImageNet: one arm.

    uotsel select --source in_r18.npz --target cub_r18.npz --top-k 100 --out uot.json
    uotsel-train finetune --config table1_resnet18:uot --out-dir runs/cub-uot \\
        --config.weights=r18.npz --config.target=tfds:cub --config.test=tfds:cub:test \\
        --config.pretrain=tfds:imagenet --config.selection=uot.json

ARG: the arm, ``uot`` (default), ``greedy_ot``, ``random`` or ``label`` (a selection file made
with ``uotsel select --strategy`` of that name; Greedy-OT with its default l2 cost, as in Table
1; ``label``: ``--matching concept:bird`` for CUB, ``concept:dog`` for Dogs, the ImageNet
classes of the target's concept), ``finetune`` (target data only) or ``co_tuning`` (the Co-Tuning
baseline: target data only, the weights' 1000-way ``fc`` kept; no ``pretrain``, no
``selection``). Paper, 8-data-set average top-1: fine-tune 78.98, Co-Tuning 79.34, random 79.32,
Greedy-OT 79.84, UOT 80.15 (best of 3 trials, lr / wd / lambda searched per data set).
"""

from uotsel_train.configs import common


def get_config(arg=None):
    arm, _, _ = common.parse(arg, "resnet18")
    return common.config("resnet18", arm)
