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

BatchNorm scope (``bn_groups``): the released multi-GPU runs used plain, unsynchronised
BatchNorm under data parallelism on 4 GPUs, so each replica normalised its own 64 target + 64
source images. ``bn_groups=G`` reproduces that on one device or many: in training mode every
BatchNorm computes its statistics separately over ``G`` equal, consecutive chunks of the batch
(the caller puts the images in group-major order). ``bn_groups=1`` (default) is a single
global-batch normalisation with Flax's ``nn.BatchNorm``. Evaluation mode always uses the running
averages through ``nn.BatchNorm``, whatever ``bn_groups``; the variables are the same either
way, so checkpoints load with any ``bn_groups``.

Inputs: the pipeline delivers ``[B, H, W, 3]`` uint8 pixels; :func:`normalise` (the ImageNet mean
and standard deviation the torchvision and MoCo-v2 weights expect) runs inside the compiled
step, evaluation and extraction, so no pixel is handled in float on the host.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ARCHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "FineTuner",
    "GroupBatchNorm",
    "MocoHead",
    "backbone",
    "head_init",
    "normalise",
]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalise(images: Any) -> jax.Array:
    """``[..., 3]`` uint8 pixels as the networks' float32 input: ``(x / 255 - mean) / std``
    with the ImageNet mean and standard deviation. Float inputs are taken as already
    normalised and returned unchanged (as float32)."""
    images = jnp.asarray(images)
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images.astype(jnp.float32)
    x = images.astype(jnp.float32) / 255.0
    return (x - IMAGENET_MEAN) / IMAGENET_STD


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


class GroupBatchNorm(nn.Module):
    """BatchNorm with statistics per group: ``[B, ..., C] -> [B, ..., C]`` in ``dtype``.

    In training mode the batch axis is split into ``groups`` equal, consecutive chunks
    (``B / groups`` samples each) and every chunk is normalised with its own mean and biased
    variance over all axes but the last, computed in float32 whatever ``dtype``, as plain
    BatchNorm on ``groups`` data-parallel replicas does. The running averages (Flax
    convention: ``new = momentum * old + (1 - momentum) * batch``) move towards the mean over
    groups of the group means and of the group variances. The released PyTorch code kept
    replica 0's buffers instead (DDP broadcasts them from rank 0), which only changes the
    statistics that evaluation mode uses, never a training step. With
    ``use_running_average`` the running averages normalise, as in ``nn.BatchNorm``.

    Variables have ``nn.BatchNorm``'s names, shapes and initial values: ``params/scale`` and
    ``params/bias`` ``[C]``, ``batch_stats/mean`` and ``batch_stats/var`` ``[C]``, all float32.

    Raises:
      ValueError: when ``groups`` is not an int >= 1 or, in training mode, the batch does not
        divide into ``groups``.
    """

    groups: int = 1
    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        _check_groups(self.groups)
        features = x.shape[-1]
        ra_mean = self.variable(
            "batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (features,)
        )
        ra_var = self.variable(
            "batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,)
        )
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        x32 = jnp.asarray(x, jnp.float32)
        if self.use_running_average:
            y = (x32 - ra_mean.value) * (jax.lax.rsqrt(ra_var.value + self.epsilon) * scale)
            return jnp.asarray(y + bias, self.dtype)
        batch = x.shape[0]
        if batch % self.groups:
            raise ValueError(
                f"bn_groups: a batch of {batch} does not split into {self.groups} equal groups"
            )
        grouped = x32.reshape((self.groups, batch // self.groups) + x.shape[1:])
        axes = tuple(range(1, grouped.ndim - 1))
        mean = grouped.mean(axes, keepdims=True)
        var = jnp.square(grouped - mean).mean(axes, keepdims=True)  # biased
        y = (grouped - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
        if not self.is_initializing():
            flat = (self.groups, features)
            batch_mean = mean.reshape(flat).mean(0)
            batch_var = var.reshape(flat).mean(0)
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * batch_mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * batch_var
        return jnp.asarray(y.reshape(x.shape), self.dtype)


def _check_groups(groups: Any) -> None:
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"bn_groups: must be an int >= 1, got {groups!r}")


def _norm(train: bool, name: str, dtype: Any, groups: int = 1) -> nn.Module:
    _check_groups(groups)
    if groups == 1 or not train:
        return nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name
        )
    return GroupBatchNorm(groups, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


class BasicBlock(nn.Module):
    features: int
    stride: int = 1
    dtype: Any = jnp.float32
    bn_groups: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        residual = x
        y = _conv(self.features, 3, self.stride, "conv1", self.dtype)(x)
        y = nn.relu(_norm(train, "bn1", self.dtype, self.bn_groups)(y))
        y = _conv(self.features, 3, 1, "conv2", self.dtype)(y)
        y = _norm(train, "bn2", self.dtype, self.bn_groups)(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            residual = _conv(self.features, 1, self.stride, "downsample_0", self.dtype)(x)
            residual = _norm(train, "downsample_1", self.dtype, self.bn_groups)(residual)
        return nn.relu(y + residual)


class Bottleneck(nn.Module):
    features: int
    stride: int = 1
    expansion: int = 4
    dtype: Any = jnp.float32
    bn_groups: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        residual = x
        out = self.features * self.expansion
        y = nn.relu(
            _norm(train, "bn1", self.dtype, self.bn_groups)(
                _conv(self.features, 1, 1, "conv1", self.dtype)(x)
            )
        )
        y = nn.relu(
            _norm(train, "bn2", self.dtype, self.bn_groups)(
                _conv(self.features, 3, self.stride, "conv2", self.dtype)(y)
            )
        )
        y = _norm(train, "bn3", self.dtype, self.bn_groups)(
            _conv(out, 1, 1, "conv3", self.dtype)(y)
        )
        if self.stride != 1 or x.shape[-1] != out:
            residual = _norm(train, "downsample_1", self.dtype, self.bn_groups)(
                _conv(out, 1, self.stride, "downsample_0", self.dtype)(x)
            )
        return nn.relu(y + residual)


class Backbone(nn.Module):
    """A torchvision ResNet up to the global average pool: ``[B, H, W, 3] -> [B, C]``.

    ``bn_groups``: in training mode every BatchNorm normalises ``bn_groups`` equal, consecutive
    chunks of the batch separately (:class:`GroupBatchNorm`); 1 is one global-batch BatchNorm.
    ``B`` must then divide by ``bn_groups`` (``ValueError`` naming ``bn_groups`` otherwise).
    """

    block: str
    stages: Sequence[int]
    width: int = 64
    dtype: Any = jnp.float32  # computation dtype (bfloat16: mixed precision); params float32
    bn_groups: int = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _conv(self.width, 7, 2, "conv1", self.dtype)(jnp.asarray(x, self.dtype))
        x = nn.relu(_norm(train, "bn1", self.dtype, self.bn_groups)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        cls = BasicBlock if self.block == "basic" else Bottleneck
        for stage, count in enumerate(self.stages):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                block = cls(
                    self.width * 2**stage,
                    stride,
                    dtype=self.dtype,
                    bn_groups=self.bn_groups,
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
    ``bn_groups`` splits the training-mode BatchNorm statistics over that many consecutive
    chunks of the batch (see :class:`Backbone`); the variables do not depend on it.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> model = FineTuner("tiny", num_target=3, bn_groups=2)
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
      >>> (logits, _, _), _ = model.apply(
      ...     variables, jnp.ones((4, 16, 16, 3)), train=True, mutable=["batch_stats"]
      ... )
      >>> logits.shape
      (4, 3)
    """

    arch: str
    num_target: int
    num_source: int = 0  # 0: no source head (vanilla fine-tuning or the unlabelled objective)
    head_std: float = math.sqrt(2.0 / 2048)
    dtype: Any = jnp.float32  # backbone computation dtype; heads and outputs stay float32
    bn_groups: int = 1  # training-mode BatchNorm statistics per consecutive batch chunk

    @nn.compact
    def __call__(self, x, train: bool = False) -> tuple[Any, Any, Any]:
        feats = backbone(self.arch, dtype=self.dtype, bn_groups=self.bn_groups, name="backbone")(
            x, train
        )
        init = head_init(self.head_std)
        target = nn.Dense(self.num_target, kernel_init=init, name="target_head")(feats)
        source = None
        if self.num_source:
            source = nn.Dense(self.num_source, kernel_init=init, name="source_head")(feats)
        return target, source, feats
