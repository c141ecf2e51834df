"""Co-Tuning's category relationship ``p(y_s | y_t)`` (You, Kou, Long, Wang, NeurIPS 2020).

Co-Tuning keeps the pre-trained 1000-way classifier and, beside the target cross-entropy,
trains it on the target images against soft ImageNet labels: the image of target class ``y``
gets the distribution ``p(y_s | y_t = y)`` over the pre-training classes
(:func:`uotsel_train.losses.co_tuning_loss`). This module estimates that relationship as the
authors' release (thuml/CoTuning) computes it, from the source probabilities: the softmax of
the pre-trained classifier's logits times :data:`LOGIT_SCALE` (the release's fixed value).

- ``reverse`` (:func:`reverse_relationship`, the release's and the default): a multinomial
  logistic regression without intercept from source probabilities to target labels
  (:mod:`uotsel_train.softmax_regression`), its ``C`` chosen from :data:`C_GRID` by accuracy
  on held-out images, its logits calibrated by one scalar on those images, then Bayes' rule
  with the source marginal: ``p(y_s | y_t) ~ p(y_t | y_s) p(y_s)``.
- ``direct`` (:func:`relationship`): row ``y`` is the mean of the source probabilities over
  the images of class ``y``.

:func:`estimate` runs the classifier on a run's training images, through the evaluation
transform (shorter side to ``image_size * 256 / 224``, centre crop) with BatchNorm in
evaluation mode, so the relationship depends only on the weights, the data and (reverse)
the seed of the held-out split (:func:`split`, :data:`VAL_FRACTION` of every class).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from uotsel_train import data, loader, models, softmax_regression

__all__ = [
    "APPROACHES",
    "C_GRID",
    "Diagnostics",
    "Estimate",
    "LOGIT_SCALE",
    "VAL_FRACTION",
    "bayes",
    "class_sums",
    "estimate",
    "from_sums",
    "probabilities_fn",
    "relationship",
    "reverse_relationship",
    "source_probabilities",
    "split",
]

APPROACHES = ("reverse", "direct")
# The release multiplies the pre-trained classifier's logits by this before the softmax (both
# approaches): a temperature its authors measured for their ResNet-50, used here as is.
LOGIT_SCALE = 0.8840456604957581
# The release's inverse regularisations of the reverse classifier, in its order (ties: first).
C_GRID = (1e4, 3e3, 1e3, 3e2, 1e2, 3e1, 1e1, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)
# The share of every class's training images held out to choose C and calibrate (reverse).
VAL_FRACTION = 0.2


class Diagnostics(NamedTuple):
    """How the reverse relationship was made: the chosen ``c`` and the validation
    ``accuracies`` of every ``C`` of the grid (grid order), the chosen one's
    ``val_accuracy``, whether its L-BFGS ``converged``, the calibration ``scale`` and whether
    it was ``calibrated`` (False: the bound of :func:`softmax_regression.calibrate`), and the
    image counts of the fitting and held-out parts."""

    c: float
    val_accuracy: float
    converged: bool
    scale: float
    calibrated: bool
    accuracies: tuple[float, ...]
    fit_images: int
    val_images: int


class Estimate(NamedTuple):
    """``relationship`` ``[C_t, C_s]`` float32, the ``approach``, the ``images`` it read
    and, for ``reverse``, its :class:`Diagnostics` (else None)."""

    relationship: np.ndarray
    approach: str
    images: int
    diagnostics: Diagnostics | None


def source_probabilities(logits: Any, scale: float = LOGIT_SCALE) -> jax.Array:
    """``softmax(logits * scale)`` ``[N, C_s]`` of the pre-trained classifier's ``logits``
    ``[N, C_s]`` (temperature ``1 / scale``; the release's :data:`LOGIT_SCALE` by default).

    Example:
      >>> np.round(np.asarray(source_probabilities([[0.0, 2.0]], scale=0.5), float), 4)
      array([[0.2689, 0.7311]])
    """
    return jax.nn.softmax(jnp.asarray(logits) * scale, axis=-1)


def _checked(probabilities: Any, labels: Any, num_target: int) -> tuple[np.ndarray, np.ndarray]:
    """``probabilities`` ``[N, C_s]`` as float64 and ``labels`` ``[N]``, checked (see
    :func:`class_sums`)."""
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or labels.shape != probabilities.shape[:1]:
        raise ValueError(
            f"co_tuning: expected probabilities [N, C_s] and labels [N], got "
            f"{list(probabilities.shape)} and {list(labels.shape)}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_target):
        raise ValueError(f"co_tuning: labels must lie in 0 ... {num_target - 1}")
    return probabilities, labels.astype(np.int64)


def class_sums(probabilities: Any, labels: Any, num_target: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class sums ``[C_t, C_s]`` (float64) of ``probabilities`` ``[N, C_s]`` and per-class
    counts ``[C_t]`` (int64) of the integer ``labels`` ``[N]``.

    Raises:
      ValueError: starting with ``co_tuning:`` for shapes that disagree or a label outside
        ``0 ... num_target - 1``.
    """
    probabilities, labels = _checked(probabilities, labels, num_target)
    sums = np.zeros((num_target, probabilities.shape[1]), np.float64)
    np.add.at(sums, labels, probabilities)
    return sums, np.bincount(labels, minlength=num_target).astype(np.int64)


def from_sums(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``p(y_s | y_t)`` ``[C_t, C_s]`` (float32): each class's sum divided by its count.

    Raises:
      ValueError: starting with ``co_tuning:`` naming the first class without an image.
    """
    empty = np.flatnonzero(np.asarray(counts) == 0)
    if empty.size:
        raise ValueError(
            f"co_tuning: target class {int(empty[0])} has no training image, so its "
            "relationship p(y_s | y_t) cannot be estimated"
        )
    return (sums / counts[:, None]).astype(np.float32)


def relationship(probabilities: Any, labels: Any, num_target: int) -> np.ndarray:
    """The direct estimate of ``p(y_s | y_t)``: ``[C_t, C_s]``, row ``y`` the mean of
    ``probabilities`` ``[N, C_s]`` (each row a softmax over the pre-training classes) over the
    samples whose label (``labels`` ``[N]``) is ``y``.

    Example:
      >>> relationship([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]], [0, 0, 1], 2).tolist()
      [[0.75, 0.25], [0.25, 0.75]]

    Raises:
      ValueError: see :func:`class_sums` and :func:`from_sums`.
    """
    return from_sums(*class_sums(probabilities, labels, num_target))


def probabilities_fn(arch: str, scale: float = LOGIT_SCALE) -> Callable:
    """A compiled ``(backbone {"params", "batch_stats"}, head {"kernel" [D, C_s], "bias"
    [C_s]}, images [B, S, S, 3] uint8) -> [B, C_s]``: :func:`source_probabilities` of the
    pre-trained classifier's logits at ``scale``, BatchNorm in evaluation mode."""
    model = models.backbone(arch)

    @jax.jit
    def probabilities(backbone, head, images):
        features = model.apply(backbone, models.normalise(images), train=False)
        return source_probabilities(features @ head["kernel"] + head["bias"], scale)

    return probabilities


def split(labels: Any, seed: int, fraction: float = VAL_FRACTION) -> np.ndarray:
    """Which samples the reverse approach holds out: a mask ``[N]`` (True: held out) over the
    integer ``labels`` ``[N]``, drawn from ``seed``. Every class holds out ``fraction`` of
    its ``n`` samples, rounded half up, but at most ``n - 1``, so each class keeps one to fit.

    Example:
      >>> split([0, 0, 0, 0, 0, 1, 1], seed=0).sum()  # 1 of 5, 0 of 2
      np.int64(1)
    """
    labels = np.asarray(labels)
    held = np.zeros(labels.shape, bool)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(int(np.floor(fraction * members.size + 0.5)), members.size - 1)
        held[rng.permutation(members)[:count]] = True
    return held


def bayes(weights: Any, scale: float, marginal: Any) -> np.ndarray:
    """``p(y_s | y_t)`` ``[C_t, C_s]`` (float64) by Bayes' rule from the reverse classifier's
    ``weights`` ``[C_t, C_s]``, the calibration ``scale`` and the source marginal ``p(y_s)``
    ``[C_s]``: ``p(y_t | y_s) = softmax_t(weights.T[y_s] * scale)``, the joint
    ``p(y_t | y_s) p(y_s)``, each target row normalised over ``y_s`` (in logarithms).

    Raises:
      ValueError: starting with ``co_tuning:`` for shapes that disagree or a marginal that is
        not a non-negative finite vector with a positive sum.
    """
    weights = np.asarray(weights, np.float64)
    marginal = np.asarray(marginal, np.float64)
    if weights.ndim != 2 or marginal.shape != weights.shape[1:]:
        raise ValueError(
            f"co_tuning: expected weights [C_t, C_s] and a marginal [C_s], got "
            f"{list(weights.shape)} and {list(marginal.shape)}"
        )
    if not np.all(np.isfinite(marginal)) or marginal.min() < 0 or not marginal.sum() > 0:
        raise ValueError("co_tuning: the source marginal must be finite, >= 0, not all 0")
    logits = weights.T * scale  # [C_s, C_t]
    top = logits.max(axis=1, keepdims=True)
    log_given = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    with np.errstate(divide="ignore"):
        log_joint = (log_given + np.log(marginal)[:, None]).T  # [C_t, C_s]
    joint = np.exp(log_joint - log_joint.max(axis=1, keepdims=True))
    return joint / joint.sum(axis=1, keepdims=True)


def _check_parts(train_probs, train_labels, val_probs, val_labels, num_target):
    """The two parts as float64 probabilities and int64 labels, checked (see
    :func:`reverse_relationship`)."""
    train_probs, train_labels = _checked(train_probs, train_labels, num_target)
    val_probs, val_labels = _checked(val_probs, val_labels, num_target)
    if train_probs.shape[1] != val_probs.shape[1]:
        raise ValueError(
            f"co_tuning: the fitting part has {train_probs.shape[1]} source classes, the "
            f"held-out part {val_probs.shape[1]}"
        )
    empty = np.flatnonzero(np.bincount(train_labels, minlength=num_target) == 0)
    if empty.size:
        raise ValueError(
            f"co_tuning: target class {int(empty[0])} has no image in the part that fits the "
            "reverse relationship, so its p(y_s | y_t) cannot be estimated"
        )
    if not val_labels.size:
        raise ValueError(
            f"co_tuning: the reverse relationship chooses C and calibrates on held-out "
            f"images and has none ({train_labels.size} images, {VAL_FRACTION:.0%} of each "
            "class held out, rounded); use co_tuning_relationship=direct"
        )
    return train_probs, train_labels, val_probs, val_labels


def reverse_relationship(
    train_probs: Any,
    train_labels: Any,
    val_probs: Any,
    val_labels: Any,
    num_target: int,
    *,
    grid: Sequence[float] = C_GRID,
) -> tuple[np.ndarray, Diagnostics]:
    """The release's reverse estimate of ``p(y_s | y_t)``: ``([C_t, C_s] float32,
    Diagnostics)``.

    A logistic regression without intercept, ``W`` ``[C_t, C_s]``, is fitted on the source
    probabilities ``train_probs`` ``[N, C_s]`` against ``train_labels`` ``[N]`` at every
    ``C`` of ``grid`` and the one most accurate on ``val_probs`` ``[M, C_s]`` /
    ``val_labels`` ``[M]`` is kept (first on ties); a scalar ``scale`` minimises the mean
    cross-entropy of ``(val_probs @ W.T) * scale``; :func:`bayes` turns ``W`` and ``scale``
    with the source marginal (the mean of all ``N + M`` probability rows) into the result.
    Computed in float64 under ``jax.enable_x64``, float32 otherwise.

    Raises:
      ValueError: starting with ``co_tuning:`` for shapes that disagree, labels outside
        ``0 ... num_target - 1``, a class with no fitting image, or no held-out image.
    """
    train_probs, train_labels, val_probs, val_labels = _check_parts(
        train_probs, train_labels, val_probs, val_labels, num_target
    )
    choice = softmax_regression.choose(
        train_probs, train_labels, val_probs, val_labels, num_target, grid
    )
    weights = choice.fit.weights
    calibration = softmax_regression.calibrate(val_probs @ weights.T, val_labels)
    marginal = np.concatenate([train_probs, val_probs]).mean(axis=0)
    diagnostics = Diagnostics(
        c=choice.c,
        val_accuracy=choice.accuracies[choice.index],
        converged=choice.fit.converged,
        scale=calibration.scale,
        calibrated=calibration.bracketed,
        accuracies=choice.accuracies,
        fit_images=int(train_labels.size),
        val_images=int(val_labels.size),
    )
    return bayes(weights, calibration.scale, marginal).astype(np.float32), diagnostics


def _crop(img: Any, index: int, size: int, resize: int) -> np.ndarray:
    return data.eval_transform(img, size, resize)


def _probabilities(backbone, head, arch, source, indices, image_size, batch_size, workers):
    """Source probabilities ``[N, C_s]`` float32 and labels ``[N]`` of the readable images
    among ``indices``, in their order."""
    probabilities = probabilities_fn(arch)
    variables = {"params": backbone["params"], "batch_stats": backbone["batch_stats"]}
    crop = functools.partial(_crop, size=image_size, resize=round(image_size * 256 / 224))
    probs, labels = [np.zeros((0, np.shape(head["bias"])[0]), np.float32)], [np.zeros(0, int)]
    for b in loader.batches(source, np.asarray(indices), crop, batch_size, workers=workers):
        probs.append(np.asarray(probabilities(variables, head, jnp.asarray(b.images))))
        labels.append(np.asarray(b.labels, np.int64))
    return np.concatenate(probs), np.concatenate(labels)


def estimate(
    backbone: dict[str, Any],
    head: dict[str, Any],
    arch: str,
    source: Any,
    indices: Any,
    *,
    approach: str = "reverse",
    seed: int = 0,
    image_size: int = 224,
    batch_size: int = 64,
    workers: int = 0,
) -> Estimate:
    """``p(y_s | y_t)`` from the pre-trained ``backbone`` (``{"params", "batch_stats"}``)
    and classifier ``head`` on the samples ``indices`` ``[N]`` of the target ``source``,
    decoded by ``workers`` processes with the evaluation transform (unreadable images are
    left out with a warning), by ``approach``: ``reverse`` (:func:`reverse_relationship` in
    float64, fitted on the images :func:`split` keeps with ``seed``, ``C`` and the scale
    chosen on those it holds out) or ``direct`` (:func:`relationship` over all of them).

    Raises:
      ValueError: starting with ``co_tuning:`` for an unknown ``approach``, a target class
        without a readable image (reverse: in the fitting part), or, reverse, no held-out
        image.
    """
    if approach not in APPROACHES:
        raise ValueError(f"co_tuning: unknown approach {approach!r}; valid: reverse, direct")
    probs, labels = _probabilities(
        backbone, head, arch, source, indices, image_size, batch_size, workers
    )
    num_target = len(source.classes)
    if approach == "direct":
        return Estimate(relationship(probs, labels, num_target), approach, labels.size, None)
    held = split(labels, seed)
    with jax.enable_x64(True):
        rel, diagnostics = reverse_relationship(
            probs[~held], labels[~held], probs[held], labels[held], num_target
        )
    return Estimate(rel, approach, labels.size, diagnostics)
