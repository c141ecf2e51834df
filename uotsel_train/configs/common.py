"""What the experiment configs share: the paper's three released settings and its four arms.

Settings (per setting: lr, weight decay, lambda; common: Nesterov SGD 0.9, 256 + 256 images,
100 epochs, x0.1 at 60 and 80, heads at 10x, see ``uotsel_train.config.FIELDS``):

- ``resnet18``: supervised ResNet18, labelled pre-training data: 0.003, 1e-4, 0.3, 100 classes.
  BatchNorm over the whole step batch: the released script does not state its GPU count.
- ``mocov2_labelled``: MoCo-v2 ResNet50, labelled: 0.01, 1e-4, 1.0, 100 classes; BatchNorm per
  group of a quarter of the step (64 + 64 images), as the released 4-GPU runs.
- ``mocov2_unlabelled``: MoCo-v2 ResNet50, k-means clusters without labels (eq. 7): 0.01, 1e-5,
  1.0, 500 clusters in the released script (200 in the paper: the selection file decides);
  BatchNorm per quarter (64 target + 64 weak + 64 strong images).

Arms: ``uot`` (the paper's), ``greedy_ot``, ``random`` and ``label`` train on a selection file
that strategy made (checked: ``selection_strategy``; ``label``: Table 1's label-based selection,
``uotsel select --strategy label --matching concept:bird`` for CUB, ``concept:dog`` for Dogs);
``finetune`` trains on the target data alone; ``co_tuning`` (``resnet18`` only) is the Co-Tuning
baseline of Table 1 (You et al. 2020): target data alone, plus a loss through the kept
pre-trained 1000-way classifier against ``p(y_s | y_t)`` (:mod:`uotsel_train.cotuning`), at
``lam`` = :data:`CO_TUNING_LAM`; it reads no pre-training data and no selection.
"""

from __future__ import annotations

from typing import Any

from uotsel_train import objectives
from uotsel_train.config import FIELDS

SETTINGS: dict[str, dict[str, Any]] = {
    "resnet18": {"arch": "resnet18", "lr": 0.003, "weight_decay": 1e-4, "lam": 0.3},
    "mocov2_labelled": {"arch": "resnet50", "lr": 0.01, "weight_decay": 1e-4, "lam": 1.0},
    "mocov2_unlabelled": {
        "arch": "resnet50",
        "objective": "unlabelled",
        "lr": 0.01,
        "weight_decay": 1e-5,
        "lam": 1.0,
    },
}
# replicas whose separate BatchNorm statistics the released runs had (0: the whole batch)
RELEASED_REPLICAS = {"resnet18": 0, "mocov2_labelled": 4, "mocov2_unlabelled": 4}
ARMS = ("uot", "greedy_ot", "random", "label", "finetune", "co_tuning")
# Co-Tuning's trade-off: the default of the Co-Tuning example of thuml's Transfer-Learning-Library
CO_TUNING_LAM = 2.3
# settings whose weights carry a supervised ImageNet classifier for Co-Tuning to keep
CO_TUNING_SETTINGS = ("resnet18",)


def parse(arg: str | None, default_setting: str) -> tuple[str, str, str | None]:
    """``(arm, setting, number)`` from a comma-separated ``arg`` (any order; defaults: arm
    ``uot``, ``default_setting``, no number).

    Raises:
      ValueError: a token that is neither an arm, a setting nor a number, or one given twice.
    """
    arm, setting, number = None, None, None
    for token in (t.strip() for t in (arg or "").split(",") if t.strip()):
        if token in ARMS and arm is None:
            arm = token
        elif token in SETTINGS and setting is None:
            setting = token
        elif _is_number(token) and number is None:
            number = token
        else:
            raise ValueError(
                f"unexpected {token!r} in {arg!r}; give an arm ({', '.join(ARMS)}), a setting "
                f"({', '.join(SETTINGS)}) and/or a number, each once"
            )
    return arm or "uot", setting or default_setting, number


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def config(setting: str, arm: str) -> dict[str, Any]:
    """The settings of ``setting`` for ``arm``, as a mapping of config keys.

    Raises:
      ValueError: ``co_tuning`` for a setting without a supervised classifier (MoCo-v2).
    """
    out = dict(SETTINGS[setting])
    if arm == "finetune":
        out |= {"objective": "vanilla", "lam": 0.0}
    elif arm == "co_tuning":
        if setting not in CO_TUNING_SETTINGS:
            raise ValueError(
                f"co_tuning: keeps a supervised ImageNet classifier, which the {setting} "
                f"weights lack; use it with {', '.join(CO_TUNING_SETTINGS)}"
            )
        out |= {"objective": "co_tuning", "lam": CO_TUNING_LAM}
    else:
        out["selection_strategy"] = arm
    replicas = RELEASED_REPLICAS[setting]
    if replicas:
        name = out.get("objective", FIELDS["objective"].default)
        views = len(objectives.get(name).source_views)
        batch = FIELDS["batch_size"].default + views * FIELDS["source_batch_size"].default
        out["bn_group_size"] = batch // replicas
    return out


def whole(number: str | None, default: int) -> int:
    """``number`` as a whole number (``default`` when None).

    Raises:
      ValueError: a fractional number.
    """
    if number is None:
        return default
    value = float(number)
    if not value.is_integer():
        raise ValueError(f"expected a whole number, got {number!r}")
    return int(value)


def on_ranking(
    arg: str | None, key: str, default: int, why: str, arms: tuple[str, ...] = ("uot",)
) -> dict[str, Any]:
    """An experiment on the ranking of a selection file made by one of ``arms``: ``key`` set
    to the whole number of ``arg`` (``default`` when absent).

    Raises:
      ValueError: ``why``, for an arm not in ``arms``.
    """
    arm, setting, number = parse(arg, "resnet18")
    if arm not in arms:
        raise ValueError(why)
    return config(setting, arm) | {key: whole(number, default)}
