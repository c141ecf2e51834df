"""Table 1, MoCo-v2 ResNet50 with ImageNet *without* labels: k-means clusters, eq. 7.

    uotsel-train extract --data tfds:imagenet --arch resnet50 --weights moco.npz --moco-head \\
        --out in_moco.npz --features-out in_feats.npy
    uotsel kmeans --features in_feats.npy --k 2000 --out clusters.npz
    uotsel select --source clusters.npz --target cub_moco.npz --top-k 500 --out uot.json
    uotsel-train finetune --config table1_mocov2_unlabelled:uot --out-dir runs/cub-unl \\
        --config.weights=moco.npz --config.target=tfds:cub --config.test=tfds:cub:test \\
        --config.pretrain=tfds:imagenet --config.selection=uot.json \\
        --config.unit_ids=clusters.npz

The released script selects 500 clusters, the paper 200 (``--top-k`` of ``uotsel select``, or
``--config.units=top_k --config.top_k=200`` on a longer selection). Strong view: the released
RandAugment (``strong_view=released``). BatchNorm per 64 target + 64 weak + 64 strong images
(``bn_group_size=192``), as the released 4-GPU runs. ARG: the arm. Paper, 8-data-set average
top-1: random 82.56, Greedy-OT 83.16, UOT 83.17.
"""

from uotsel_train.configs import common


def get_config(arg=None):
    arm, _, _ = common.parse(arg, "mocov2_unlabelled")
    return common.config("mocov2_unlabelled", arm)
