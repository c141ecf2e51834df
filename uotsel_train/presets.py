"""The paper's three released settings as named presets (``uotsel-train finetune --preset``).

Common to all: SGD with Nesterov momentum 0.9, 100 epochs of the target set, learning rate
x0.1 at epochs 60 and 80, heads at 10x, batch 256 target + 256 pre-training images, images
224 px. The paper searched lr, weight decay and lambda per target data set; these are the
released values.
"""

from __future__ import annotations

from uotsel_train.loop import Config

__all__ = ["PRESETS"]

PRESETS: dict[str, Config] = {
    # supervised ResNet18 (torchvision weights), labelled ImageNet, 100 selected classes
    "resnet18-labelled": Config(
        arch="resnet18", objective="labelled", lr=0.003, weight_decay=1e-4, lam=0.3
    ),
    # MoCo-v2 ResNet50 (800 epochs), labelled ImageNet, 100 selected classes
    "mocov2-labelled": Config(
        arch="resnet50", objective="labelled", lr=0.01, weight_decay=1e-4, lam=1.0
    ),
    # MoCo-v2 ResNet50, unlabelled ImageNet (k-means clusters), 500 selected clusters
    "mocov2-unlabelled": Config(
        arch="resnet50", objective="unlabelled", lr=0.01, weight_decay=1e-5, lam=1.0
    ),
    # fine-tuning on the target set alone (the baseline)
    "resnet18-vanilla": Config(
        arch="resnet18", objective="vanilla", lr=0.003, weight_decay=1e-4, lam=0.0
    ),
}
