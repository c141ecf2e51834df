"""Section 4.4: a seeded share of every pre-training class instead of a selection (0.5: half of
every ImageNet class).

    uotsel-train finetune --config sec44_every_class:0.5 --out-dir runs/cub-half \\
        --config.weights=r18.npz --config.target=tfds:cub --config.test=tfds:cub:test \\
        --config.pretrain=tfds:imagenet

No selection file: every pre-training class takes part (``units=all``) with ``pretrain_fraction``
of its images, drawn per class with ``subset_seed``, trained with the same objective, schedule
and hyper-parameters as the setting's UOT arm. ARG: ``fraction[,setting]`` (defaults 0.5,
``resnet18``); compare with ``table1_resnet18:uot`` (100 selected classes, all their images).
"""

from uotsel_train.configs import common


def get_config(arg=None):
    arm, setting, number = common.parse(arg, "resnet18")
    if arm != "uot":
        raise ValueError("takes a fraction and a setting, not an arm: every class takes part")
    out = common.config(setting, arm)
    out.pop("selection_strategy")
    return out | {"units": "all", "pretrain_fraction": float(number or 0.5)}
