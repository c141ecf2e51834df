"""Multinomial logistic regression without intercept, solved full batch in JAX, the choice of
its regularisation by validation accuracy, and a one-scalar calibration of its logits.

The model maps a row ``x`` ``[D]`` to class probabilities ``softmax(W x)`` over ``K`` classes
with ``W`` ``[K, D]`` and no bias. :func:`fit` minimises scikit-learn's objective of
``LogisticRegression(fit_intercept=False, C=C)`` (multinomial),
``0.5 * ||W||^2 + C * sum_i NLL_i``, divided by ``C * N`` (same minimiser, better scaled):
``mean_i NLL_i + ||W||^2 / (2 C N)``. It is strictly convex, so the solution does not depend
on the start. The solver is optax's L-BFGS with its zoom line search, in the dtype of the
inputs (float64 under ``jax.enable_x64``). Non-convergence is reported in :class:`Fit`, not
raised. These are the steps of Co-Tuning's reverse relationship (:mod:`uotsel_train.cotuning`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

__all__ = ["Calibration", "Choice", "Fit", "calibrate", "choose", "fit", "objective", "predict"]


class Fit(NamedTuple):
    """A solution: ``weights`` ``[K, D]`` (float64 numpy), ``converged`` (the largest absolute
    gradient entry of the scaled objective reached ``tol`` within ``max_iter`` iterations, all
    finite), ``iterations`` run and that final ``gradient`` entry."""

    weights: np.ndarray
    converged: bool
    iterations: int
    gradient: float


class Choice(NamedTuple):
    """The regularisation chosen by validation accuracy: ``c``, its ``index`` in the grid,
    its ``fit`` on the training part and the validation ``accuracies``, one per grid value."""

    c: float
    index: int
    fit: Fit
    accuracies: tuple[float, ...]


class Calibration(NamedTuple):
    """``scale`` minimising the mean cross-entropy of ``logits * scale``; ``bracketed``: False
    when the minimum lies beyond ``max_scale`` in size and ``scale`` is that bound."""

    scale: float
    bracketed: bool


def objective(weights: Any, x: Any, labels: Any, c: float) -> jax.Array:
    """``mean_i NLL_i + ||W||^2 / (2 C N)``: scikit-learn's objective divided by ``C N``.

    Args:
      weights: ``W`` ``[K, D]``.
      x: rows ``[N, D]``.
      labels: integers ``[N]`` in ``0 ... K - 1``.
      c: the inverse regularisation ``C`` (> 0).
    """
    logits = x @ weights.T
    picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    nll = jax.nn.logsumexp(logits, axis=1) - picked
    return jnp.mean(nll) + 0.5 * jnp.vdot(weights, weights) / (c * x.shape[0])


@jax.jit
def _solve(start, x, labels, c, tol, max_iter):
    """L-BFGS from ``start`` ``[K, D]``; ``(weights, iterations, largest |gradient|)``."""

    def value(w):
        return objective(w, x, labels, c)

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(value)

    def keep_going(carry):
        _, _, steps, largest = carry
        return (steps < max_iter) & (largest > tol) & jnp.isfinite(largest)

    def step(carry):
        w, state, steps, _ = carry
        loss, grad = value_and_grad(w, state=state)
        updates, state = solver.update(grad, state, w, value=loss, grad=grad, value_fn=value)
        w = optax.apply_updates(w, updates)
        largest = jnp.max(jnp.abs(otu.tree_get(state, "grad")))
        return w, state, steps + 1, largest

    first = jnp.max(jnp.abs(jax.grad(value)(start)))
    carry = (start, solver.init(start), jnp.asarray(0), first)
    w, _, steps, largest = jax.lax.while_loop(keep_going, step, carry)
    return w, steps, largest


def _float_dtype() -> Any:
    return jnp.result_type(float)  # float64 under jax.enable_x64, float32 otherwise


def fit(
    x: Any,
    labels: Any,
    num_classes: int,
    c: float,
    *,
    start: Any = None,
    tol: float | None = None,
    max_iter: int = 1000,
) -> Fit:
    """Minimise :func:`objective` over ``W`` ``[num_classes, D]`` for rows ``x`` ``[N, D]``
    and integer ``labels`` ``[N]``, from ``start`` ``[num_classes, D]`` (zeros when None).

    ``tol`` bounds the largest absolute entry of the gradient (default 1e-9 in float64, 1e-5
    in float32, the dtype JAX computes in).
    """
    dtype = _float_dtype()
    x = jnp.asarray(x, dtype)
    labels = jnp.asarray(labels, jnp.int32)
    shape = (num_classes, x.shape[1])
    start = jnp.zeros(shape, dtype) if start is None else jnp.asarray(start, dtype)
    if tol is None:
        tol = 1e-9 if dtype == jnp.float64 else 1e-5
    w, steps, largest = _solve(start, x, labels, jnp.asarray(c, dtype), tol, max_iter)
    largest = float(largest)
    weights = np.asarray(w, np.float64)
    converged = math.isfinite(largest) and largest <= tol and bool(np.isfinite(weights).all())
    return Fit(weights, converged, int(steps), largest)


def predict(weights: Any, x: Any) -> np.ndarray:
    """The most probable class ``[N]`` of each row of ``x`` ``[N, D]`` under ``weights``
    ``[K, D]`` (the first on ties)."""
    return np.argmax(np.asarray(x, np.float64) @ np.asarray(weights, np.float64).T, axis=1)


def choose(
    train_x: Any,
    train_labels: Any,
    val_x: Any,
    val_labels: Any,
    num_classes: int,
    grid: Sequence[float],
    **fit_kwargs: Any,
) -> Choice:
    """Fit on ``train_x`` ``[N, D]`` / ``train_labels`` ``[N]`` at every ``C`` of ``grid``
    and keep the one of best accuracy on ``val_x`` ``[M, D]`` / ``val_labels`` ``[M]``, the
    first in ``grid`` order on ties. The fits run from the smallest ``C`` up, each started
    at the previous solution (the minimiser does not depend on the start).

    Raises:
      ValueError: starting with ``co_tuning:`` for an empty ``grid`` or a ``C`` <= 0.
    """
    grid = [float(c) for c in grid]
    if not grid or min(grid) <= 0 or not all(map(math.isfinite, grid)):
        raise ValueError(f"co_tuning: the C grid must hold finite numbers > 0, got {grid}")
    val_labels = np.asarray(val_labels)
    fits: dict[int, Fit] = {}
    start = None
    for i in sorted(range(len(grid)), key=lambda i: grid[i]):
        fits[i] = fit(train_x, train_labels, num_classes, grid[i], start=start, **fit_kwargs)
        start = fits[i].weights
    accuracies = tuple(
        float(np.mean(predict(fits[i].weights, val_x) == val_labels)) for i in range(len(grid))
    )
    best = int(np.argmax(accuracies))  # the first of the best
    return Choice(grid[best], best, fits[best], accuracies)


def _slope(z: np.ndarray, picked: np.ndarray, scale: float) -> float:
    """d/ds of the mean cross-entropy of ``z * s`` at ``s = scale``."""
    logits = z * scale
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return float(np.mean(np.sum(p * z, axis=1) - picked))


def calibrate(logits: Any, labels: Any, *, max_scale: float = 1e4) -> Calibration:
    """The scalar ``s`` minimising the mean cross-entropy of ``logits * s`` (``logits``
    ``[M, K]``, integer ``labels`` ``[M]``), in float64.

    The loss is convex in ``s``; its slope is bracketed by doubling outward from ``[0, 1]``
    and its root found by bisection to float64 resolution. When every label's logit is among
    the largest of its row the loss falls for ever as ``s`` grows (among the smallest: as it
    falls); that, or a minimum beyond ``max_scale`` in size, gives ``+-max_scale`` with
    ``bracketed`` False. A loss that does not depend on ``s`` (constant rows) gives 1.

    Raises:
      ValueError: starting with ``co_tuning:`` for no rows or shapes that disagree.
    """
    z = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    if z.ndim != 2 or labels.shape != z.shape[:1] or not labels.size:
        raise ValueError(
            f"co_tuning: calibration needs logits [M, K] and labels [M], M > 0, got "
            f"{list(z.shape)} and {list(labels.shape)}"
        )
    z = z - z.max(axis=1, keepdims=True)  # the loss of z * s is unchanged for every s
    picked = z[np.arange(z.shape[0]), labels]
    if not np.any(z):
        return Calibration(1.0, True)
    if np.all(picked == 0):
        return Calibration(max_scale, False)
    if np.all(picked == z.min(axis=1)):
        return Calibration(-max_scale, False)
    low, high = 0.0, 1.0
    slope_low, slope_high = _slope(z, picked, low), _slope(z, picked, high)
    if slope_high == 0.0:
        return Calibration(1.0, True)
    while slope_high < 0:  # the minimum lies above `high`
        if high >= max_scale:
            return Calibration(max_scale, False)
        low, slope_low, high = high, slope_high, min(2 * high, max_scale)
        slope_high = _slope(z, picked, high)
    while slope_low > 0:  # the minimum lies below `low`
        if low <= -max_scale:
            return Calibration(-max_scale, False)
        high, slope_high, low = low, slope_low, max(2 * low - 1, -max_scale)
        slope_low = _slope(z, picked, low)
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        slope = _slope(z, picked, middle)
        if slope == 0.0:
            return Calibration(middle, True)
        low, high = (middle, high) if slope < 0 else (low, middle)
    return Calibration(0.5 * (low + high), True)
