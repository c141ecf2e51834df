"""Flax ResNets that are layer-for-layer torchvision ResNets, with the paper's heads.

torchvision pads convolutions and the stem max-pool symmetrically (7x7/2 conv: 3, 3x3 convs
and the 3x3/2 pool: 1); Flax's ``'SAME'`` pads asymmetrically on even sizes and would give a
different network, so every padding here is explicit. BatchNorm uses torch's epsilon (1e-5)
and momentum 0.1, which is Flax ``momentum=0.9``. Module names follow torchvision's
(``layer1_0.conv1`` for ``layer1.0.conv1``) so that checkpoints convert one to one
(:mod:`uotsel_train.convert`).

The classifier (:class:`FineTuner`) has a backbone that returns pooled features, a target head
and an optional source head (1000-way over the original ImageNet labels as in the released
code, or K-way over the selected units), both initialised N(0, sqrt(2 / 2048)) with zero bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["ARCHS", "Backbone", "FineTuner", "MocoHead", "backbone", "head_init"]

# (block type, blocks per stage, stem width) of each architecture.
ARCHS: dict[str, tuple[str, tuple[int, ...], int]] = {
    "resnet18": ("basic", (2, 2, 2, 2), 64),
    "resnet34": ("basic", (3, 4, 6, 3), 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64),
    "tiny": ("basic", (1, 1), 8),  # for tests: 2 stages, 8 and 16 channels
}


def head_init(std: float = math.sqrt(2.0 / 2048)):
    """The paper's head initialiser: N(0, std) weights."""
    return nn.initializers.normal(stddev=std)


def _conv(features: int, kernel: int, stride: int, name: str, dtype: Any) -> nn.Conv:
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        (stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        name=name,
    )


def _norm(train: bool, name: str, dtype: Any) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name
    )


class BasicBlock(nn.Module):
    features: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        residual = x
        y = _conv(self.features, 3, self.stride, "conv1", self.dtype)(x)
        y = nn.relu(_norm(train, "bn1", self.dtype)(y))
        y = _conv(self.features, 3, 1, "conv2", self.dtype)(y)
        y = _norm(train, "bn2", self.dtype)(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            residual = _conv(self.features, 1, self.stride, "downsample_0", self.dtype)(x)
            residual = _norm(train, "downsample_1", self.dtype)(residual)
        return nn.relu(y + residual)


class Bottleneck(nn.Module):
    features: int
    stride: int = 1
    expansion: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        residual = x
        out = self.features * self.expansion
        y = nn.relu(
            _norm(train, "bn1", self.dtype)(_conv(self.features, 1, 1, "conv1", self.dtype)(x))
        )
        y = nn.relu(
            _norm(train, "bn2", self.dtype)(
                _conv(self.features, 3, self.stride, "conv2", self.dtype)(y)
            )
        )
        y = _norm(train, "bn3", self.dtype)(_conv(out, 1, 1, "conv3", self.dtype)(y))
        if self.stride != 1 or x.shape[-1] != out:
            residual = _norm(train, "downsample_1", self.dtype)(
                _conv(out, 1, self.stride, "downsample_0", self.dtype)(x)
            )
        return nn.relu(y + residual)


class Backbone(nn.Module):
    """A torchvision ResNet up to the global average pool: ``[B, H, W, 3] -> [B, C]``."""

    block: str
    stages: Sequence[int]
    width: int = 64
    dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _conv(self.width, 7, 2, "conv1", self.dtype)(jnp.asarray(x, self.dtype))
        x = nn.relu(_norm(train, "bn1", self.dtype)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        cls = BasicBlock if self.block == "basic" else Bottleneck
        for stage, count in enumerate(self.stages):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                block = cls(
                    self.width * 2**stage,
                    stride,
                    dtype=self.dtype,
                    name=f"layer{stage + 1}_{index}",
                )
                x = block(x, train)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def _arch(arch: str) -> tuple[str, tuple[int, ...], int]:
    if arch not in ARCHS:
        raise ValueError(f"arch: unknown architecture {arch!r}; valid: {', '.join(ARCHS)}")
    return ARCHS[arch]


def backbone(arch: str, **kwargs: Any) -> Backbone:
    """The backbone of ``arch`` (one of :data:`ARCHS`)."""
    return Backbone(*_arch(arch), **kwargs)


class MocoHead(nn.Module):
    """MoCo-v2's projection MLP (fc 2048 -> 2048, ReLU, fc -> 128), used for class means."""

    hidden: int = 2048
    out: int = 128

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden, name="fc_0")(x))
        return nn.Dense(self.out, name="fc_2")(x)


class FineTuner(nn.Module):
    """Backbone + target head (+ source head).

    ``__call__`` returns ``(target_logits, source_logits_or_None, features)``, all float32.
    ``dtype=jnp.bfloat16`` runs the backbone's convolutions and normalisations in bfloat16
    (mixed precision); parameters, batch statistics, pooling and heads stay float32.
    """

    arch: str
    num_target: int
    num_source: int = 0  # 0: no source head (vanilla fine-tuning or the unlabelled objective)
    head_std: float = math.sqrt(2.0 / 2048)
    dtype: Any = jnp.float32  # backbone computation dtype; heads and outputs stay float32

    @nn.compact
    def __call__(self, x, train: bool = False) -> tuple[Any, Any, Any]:
        feats = backbone(self.arch, dtype=self.dtype, name="backbone")(x, train)
        init = head_init(self.head_std)
        target = nn.Dense(self.num_target, kernel_init=init, name="target_head")(feats)
        source = None
        if self.num_source:
            source = nn.Dense(self.num_source, kernel_init=init, name="source_head")(feats)
        return target, source, feats
