"""A fine-tuning model's first variables: the backbone from a checkpoint, fresh heads.

The heads (target, and source when the objective has one) are drawn anew from the run's seed
with the paper's initialiser (N(0, sqrt(2 / 2048)), zero bias); everything under ``backbone``
comes from the weights file (:func:`uotsel_train.convert.load_variables`) or from variables in
memory. The one exception is Co-Tuning's source head: the pre-trained classifier (the
checkpoint's ``fc``), loaded with the backbone (``load_backbone(path, with_head=True)``) and
kept, never drawn. The one place where a backbone meets new heads.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uotsel_train import models

__all__ = ["fresh", "load_backbone", "variables"]


def fresh(model: Any, seed: int, size: int = 32) -> Any:
    """Newly drawn variables of ``model`` for ``[1, size, size, 3]`` inputs, initialised in one
    compiled program with the ``rbg`` generator (on CPU XLA compiles it in seconds, the default
    threefry generator takes about 20 s for a small ResNet)."""
    key = jax.random.key(seed, impl="rbg")
    return jax.jit(model.init)(key, jnp.zeros((1, size, size, 3)))


def load_backbone(path: str, with_head: bool = False) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` of the backbone in the weights file ``path``; with
    ``with_head`` also ``"source_head"``: the pre-trained classifier ``{"kernel" [D, C_s],
    "bias" [C_s]}`` (the checkpoint's ``fc``, e.g. torchvision's 1000-way ImageNet head).

    Raises:
      ValueError: starting with ``weights:`` for an unreadable file, a file without a backbone
        (or, with ``with_head``, without a classifier), or non-finite values.
    """
    from uotsel_train import convert

    weights = convert.load_variables(path)
    backbone = weights.get("backbone")
    if not backbone or "params" not in backbone:
        raise ValueError(f"weights: {path} holds no backbone (convert a checkpoint first)")
    for leaf in jax.tree.leaves(backbone):
        if not np.all(np.isfinite(leaf)):
            raise ValueError(f"weights: {path} holds non-finite values")
    loaded = {"params": backbone["params"], "batch_stats": backbone.get("batch_stats", {})}
    if with_head:
        loaded["source_head"] = _classifier(weights.get("fc"), path)
    return loaded


def _classifier(fc: Any, path: str) -> dict[str, np.ndarray]:
    """``fc`` as ``{"kernel" [D, C_s], "bias" [C_s]}``, or a one-line ``weights:`` error."""
    if not fc or "kernel" not in fc or "bias" not in fc:
        raise ValueError(
            f"weights: {path} holds no pre-trained classifier (fc/kernel and fc/bias), which "
            "Co-Tuning keeps; convert a checkpoint that has fc.weight and fc.bias"
        )
    kernel, bias = np.asarray(fc["kernel"]), np.asarray(fc["bias"])
    if kernel.ndim != 2 or bias.shape != kernel.shape[1:]:
        raise ValueError(
            f"weights: the classifier in {path} has kernel {list(kernel.shape)} and bias "
            f"{list(bias.shape)}; expected [D, C] and [C]"
        )
    return {"kernel": kernel, "bias": bias}


def check_fits(backbone: dict[str, Any], arch: str) -> None:
    """Raise unless ``backbone``'s parameters (``{"params", ...}``) have the shapes of
    ``arch``'s backbone.

    Raises:
      ValueError: starting with ``weights:``, naming the arch and the first parameter that
        differs.
    """
    model = models.backbone(arch)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    flat = jax.tree_util.tree_flatten_with_path
    want = [(path, tuple(leaf.shape)) for path, leaf in flat(shapes["params"])[0]]
    got = {path: tuple(np.shape(leaf)) for path, leaf in flat(backbone["params"])[0]}
    for path, shape in want:
        if got.pop(path, None) != shape:
            where = jax.tree_util.keystr(path)
            raise ValueError(
                f"weights: the backbone does not fit arch {arch!r} (parameter {where}: "
                f"expected shape {list(shape)})"
            )
    if got:
        where = jax.tree_util.keystr(next(iter(got)))
        raise ValueError(f"weights: the backbone does not fit arch {arch!r} (extra {where})")


def variables(model: models.FineTuner, backbone: dict[str, Any], seed: int) -> dict[str, Any]:
    """Variables of ``model``: ``backbone`` (``{"params", "batch_stats"}``) under
    ``backbone``, heads drawn from ``seed``, except that a ``"source_head"`` in ``backbone``
    (:func:`load_backbone` with ``with_head``) replaces the drawn source head.

    Raises:
      ValueError: starting with ``weights:`` when the backbone does not fit ``model.arch`` or
        the loaded source head does not fit the model's.
    """
    check_fits(backbone, model.arch)
    heads = fresh(model, seed)["params"]
    if "source_head" in backbone:
        heads = {**heads, "source_head": _fitting_head(backbone["source_head"], heads)}
    return {
        "params": {**heads, "backbone": backbone["params"]},
        "batch_stats": {"backbone": backbone["batch_stats"]},
    }


def _fitting_head(loaded: dict[str, Any], drawn: dict[str, Any]) -> dict[str, np.ndarray]:
    """The ``loaded`` source head, checked against the shapes of the ``drawn`` heads."""
    if "source_head" not in drawn:
        raise ValueError("weights: a pre-trained classifier was given to a model without one")
    want = tuple(drawn["source_head"]["kernel"].shape)
    got = tuple(np.shape(loaded["kernel"]))
    if got != want:
        raise ValueError(
            f"weights: the pre-trained classifier has kernel {list(got)}; the model's source "
            f"head needs {list(want)}"
        )
    return {"kernel": np.asarray(loaded["kernel"]), "bias": np.asarray(loaded["bias"])}
