"""The paper's experiments as configs: one file per experiment, each with ``get_config(arg)``.

``uotsel-train configs`` lists them; ``uotsel-train finetune --config NAME:ARG`` runs one, and
every setting can still be overridden (``--config.lr=0.01``). ``ARG`` picks the arm (``uot``,
``greedy_ot``, ``random``, ``finetune`` for the target data alone, or ``co_tuning`` for the
Co-Tuning baseline), the paper setting where the experiment allows several (``resnet18``,
``mocov2_labelled``, ``mocov2_unlabelled``) and the experiment's own number, comma-separated in
any order (``fig3b_low_data:0.2,finetune``).
"""

from __future__ import annotations

import os

__all__ = ["NAMES", "path_of"]

# name -> one-line description (the first line of the file's docstring is the long form)
NAMES: dict[str, str] = {
    "table1_resnet18": "Table 1: supervised ResNet18, labelled ImageNet; ARG arm",
    "table1_mocov2_labelled": "Table 1: MoCo-v2 ResNet50, labelled ImageNet; ARG arm",
    "table1_mocov2_unlabelled": "Table 1: MoCo-v2 ResNet50, ImageNet clusters, no labels; ARG arm",
    "fig3a_num_selected": "Fig. 3a: number of selected classes (50-300); ARG count[,setting]",
    "fig3b_low_data": "Fig. 3b: share of each target class (0.2-1); ARG fraction[,arm][,setting]",
    "table3_long_tail": "Table 3: long-tailed targets, imbalance 10; ARG arm[,setting]",
    "fig4b_domain_gap": "Fig. 4b: one of the 10 UOT score groups (0-9); ARG group[,setting]",
    "sec44_every_class": "Section 4.4: a share of every pre-training class, no selection; "
    "ARG fraction[,setting]",
}


def path_of(name: str) -> str:
    """The file of the shipped config ``name`` (a key of :data:`NAMES`)."""
    return os.path.join(os.path.dirname(__file__), f"{name}.py")
