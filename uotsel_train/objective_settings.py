"""The objective's settings for one run (:class:`uotsel_train.objectives.Settings`): its
weights from the config and, for Co-Tuning, the category relationship ``p(y_s | y_t)``
``[C_t, C_s]``, estimated for a new run and saved in the run folder, or read back on resume.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from uotsel.outputs import first_line
from uotsel_train import cotuning, objectives, run_files

__all__ = ["RELATIONSHIP", "settings", "source_width"]

# Co-Tuning's p(y_s | y_t) in the run folder, [C_t, C_s]; a resumed run reads it back.
RELATIONSHIP = "relationship.npy"


def source_width(objective: objectives.Objective, inputs, backbone: dict[str, Any]) -> int:
    """The source head's width: the pre-trained classifier's for Co-Tuning, else the
    pre-training data's class count.

    Raises:
      ValueError: starting with ``weights:`` when the objective keeps a pre-trained classifier
        that ``backbone`` lacks.
    """
    if not objective.pretrained_head:
        return inputs.num_source_classes
    if "source_head" not in backbone:
        raise ValueError(
            f"weights: the {objective.name} objective keeps the pre-trained classifier; load "
            "the weights with initialise.load_backbone(path, with_head=True)"
        )
    return _head_width(backbone["source_head"])


def settings(
    cfg: Any, inputs, backbone: dict[str, Any], out_dir: str, lead: bool, log, *, resumed=False
):
    """The objective's settings; for Co-Tuning with ``p(y_s | y_t)`` ``[C_t, C_s]``.

    A new run estimates it from the pre-trained classifier on the training samples by
    ``cfg.co_tuning_relationship`` (:func:`uotsel_train.cotuning.estimate`, the reverse split
    drawn from ``cfg.seed``; every process estimates the same array) and the lead process
    writes it to ``out_dir/relationship.npy`` with how it was made in
    ``out_dir/relationship.json``. A ``resumed`` run whose folder holds ``relationship.npy``
    reads it back instead (every process, from the shared folder), so it trains on the array
    it started with; without the file it estimates as a new run does.

    Raises:
      ValueError: starting with ``co_tuning:`` when the saved array cannot be read or is not
        ``[C_t, C_s]`` for this run's target classes and source head.
    """
    settings = objectives.Settings(cfg.lam, cfg.min_confidence)
    if not objectives.get(cfg.objective).pretrained_head:
        return settings
    path = os.path.join(out_dir, RELATIONSHIP)
    if resumed and os.path.exists(path):
        shape = (len(inputs.target.classes), _head_width(backbone["source_head"]))
        relationship = _saved_relationship(path, shape)
        if lead:
            log(f"co_tuning: p(y_s | y_t) {list(shape)} reused from {path}")
        return settings._replace(relationship=relationship)
    made = cotuning.estimate(
        backbone,
        backbone["source_head"],
        cfg.arch,
        inputs.target,
        inputs.train_indices,
        approach=cfg.co_tuning_relationship,
        seed=cfg.seed,
        image_size=cfg.image_size,
        workers=cfg.workers,
    )
    if lead:
        run_files.save_array(path, made.relationship)
        run_files.write_record(
            os.path.join(out_dir, "relationship.json"), _relationship_record(made)
        )
        log(_relationship_line(made))
    return settings._replace(relationship=made.relationship)


def _head_width(head: dict[str, Any]) -> int:
    """The number of classes ``C_s`` of a classifier ``{"kernel" [D, C_s], "bias" [C_s]}``."""
    return int(np.shape(head["kernel"])[1])


def _saved_relationship(path: str, shape: tuple[int, int]) -> np.ndarray:
    """The relationship ``[C_t, C_s]`` a run saved at ``path``, checked to have ``shape``
    (the run's target classes, its source head's width) and finite values >= 0.

    Raises:
      ValueError: one line starting with ``co_tuning:`` naming ``path``.
    """
    try:
        relationship = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"co_tuning: cannot read {path}: {first_line(err)}") from None
    if relationship.shape != shape:
        raise ValueError(
            f"co_tuning: {path} holds p(y_s | y_t) {list(relationship.shape)}, but this run "
            f"needs {list(shape)} (target classes x source head width)"
        )
    finite = relationship.dtype.kind == "f" and bool(np.all(np.isfinite(relationship)))
    if not finite or np.any(relationship < 0):
        raise ValueError(f"co_tuning: {path} must hold finite probabilities >= 0")
    return relationship


def _relationship_record(made: cotuning.Estimate) -> dict[str, Any]:
    """What ``relationship.json`` holds: the approach, the logit scale, the images read and,
    for ``reverse``, the C grid and the :class:`uotsel_train.cotuning.Diagnostics`."""
    record = {"approach": made.approach, "logit_scale": cotuning.LOGIT_SCALE}
    record["images"] = made.images
    if made.diagnostics is not None:
        record |= {"c_grid": list(cotuning.C_GRID), **made.diagnostics._asdict()}
        record["accuracies"] = list(made.diagnostics.accuracies)
    return record


def _relationship_line(made: cotuning.Estimate) -> str:
    """The run log's line about the relationship."""
    line = (
        f"co_tuning: p(y_s | y_t) {list(made.relationship.shape)} by the {made.approach} "
        f"approach from {made.images} images"
    )
    d = made.diagnostics
    if d is None:
        return line
    line += (
        f" ({d.fit_images} fit, {d.val_images} held out): C {d.c:g} (held-out accuracy "
        f"{d.val_accuracy:.3f}), scale {d.scale:.4g}"
    )
    if not d.converged:
        line += "; L-BFGS stopped before converging"
    if not d.calibrated:
        line += "; the scale is at its bound"
    return line
