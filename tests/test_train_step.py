import numpy as np
import pytest

pytest.importorskip("optax")

import jax
import jax.numpy as jnp

from uotsel_train import models, optim, step


def _setup(num_source=0):
    model = models.FineTuner("tiny", num_target=3, num_source=num_source)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    tx = optim.sgd(0.05, 1e-4, steps_per_epoch=10)
    return model, tx, step.init_state(variables, tx)


def _ce(logits, labels):
    logits = np.asarray(logits, np.float64)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(len(labels)), labels].mean()


def _forward(model, state, images):
    (t, s, _), _ = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        images,
        train=True,
        mutable=["batch_stats"],
    )
    return t, s


@pytest.mark.parametrize("objective", step.OBJECTIVES)
def test_one_step_changes_parameters_and_reports_the_hand_computed_loss(objective):
    rng = np.random.default_rng(0)
    model, tx, state = _setup(num_source=7 if objective == "labelled" else 0)
    batch = {
        "target_images": jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32),
        "target_labels": jnp.array([0, 1, 2, 1]),
    }
    if objective == "labelled":
        batch["source_images"] = jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32)
        batch["source_labels"] = jnp.array([6, 0, 3, 3])
    if objective == "unlabelled":
        batch["weak_images"] = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
        batch["strong_images"] = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    images = jnp.concatenate([v for k, v in batch.items() if k.endswith("images")])
    t, s = _forward(model, state, images)
    expected = _ce(t[:4], np.asarray(batch["target_labels"]))
    if objective == "labelled":
        expected += 0.5 * _ce(s[4:], np.asarray(batch["source_labels"]))
    if objective == "unlabelled":
        q = np.asarray(jax.nn.softmax(t[4:6]), np.float64)
        logp = np.asarray(jax.nn.log_softmax(t[6:8]), np.float64)
        expected += 0.5 * np.mean(-(q * logp).sum(1))
    fn = jax.jit(step.train_step(model, tx, objective, lam=0.5))
    new, metrics = fn(state, batch)
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
    assert int(new.step) == 1 and bool(metrics["finite"])
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new.params)
    assert changed["backbone"]["conv1"]["kernel"] and changed["target_head"]["kernel"]
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.batch_stats, new.batch_stats)
    assert moved["backbone"]["bn1"]["mean"]


def test_unknown_objective():
    model, tx, _ = _setup()
    with pytest.raises(ValueError, match="objective: unknown 'fixmatch'"):
        step.train_step(model, tx, "fixmatch")
