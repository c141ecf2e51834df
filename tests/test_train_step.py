import numpy as np
import pytest

pytest.importorskip("optax")

import jax
import jax.numpy as jnp
from hypothesis import given, settings
from hypothesis import strategies as st

from uotsel_train import models, objectives, optim, step


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


@pytest.mark.parametrize("objective", list(objectives.REGISTRY))
@pytest.mark.slow
def test_one_step_changes_parameters_and_reports_the_hand_computed_loss(objective):
    rng = np.random.default_rng(0)
    model, tx, state = _setup(num_source=7 if objectives.get(objective).source_head else 0)
    relationship = rng.dirichlet(np.ones(7), size=3).astype(np.float32)  # co_tuning: [C_t, C_s]
    batch = {
        "target_images": jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32),
        "target_labels": jnp.array([0, 1, 2, 1]),
    }
    if objective == "labelled":
        batch["source_train_images"] = jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32)
        batch["source_labels"] = jnp.array([6, 0, 3, 3])
    if objective == "unlabelled":
        batch["source_weak_images"] = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
        batch["source_strong_images"] = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    images = jnp.concatenate([v for k, v in batch.items() if k.endswith("images")])
    t, s = _forward(model, state, images)
    expected = _ce(t[:4], np.asarray(batch["target_labels"]))
    if objective == "labelled":
        expected += 0.5 * _ce(s[4:], np.asarray(batch["source_labels"]))
    if objective == "unlabelled":
        q = np.asarray(jax.nn.softmax(t[4:6]), np.float64)
        logp = np.asarray(jax.nn.log_softmax(t[6:8]), np.float64)
        expected += 0.5 * np.mean(-(q * logp).sum(1))
    if objective == "co_tuning":
        logp = np.asarray(jax.nn.log_softmax(s[:4]), np.float64)
        soft = relationship[np.asarray(batch["target_labels"])]
        expected += 0.5 * np.mean(-(soft * logp).sum(1))
    settings = objectives.Settings(lam=0.5, relationship=relationship)
    fn = jax.jit(step.train_step(model, tx, objective, settings))
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


@settings(max_examples=30, deadline=None)
@given(
    groups=st.integers(1, 4),
    per_group=st.lists(st.integers(1, 3), min_size=1, max_size=3),
)
@pytest.mark.slow
def test_interleave_puts_a_share_of_every_part_in_each_group_and_inverts(groups, per_group):
    sizes = [groups * n for n in per_group]
    parts = [jnp.arange(n) + 100 * i for i, n in enumerate(sizes)]
    joined = np.asarray(step.interleave(parts, groups))
    width = sum(per_group)
    for g in range(groups):  # group g: the g-th slice of every part, in part order
        expected = np.concatenate(
            [np.asarray(p)[g * n : (g + 1) * n] for p, n in zip(parts, per_group, strict=True)]
        )
        np.testing.assert_array_equal(joined[g * width : (g + 1) * width], expected)
    back = step.uninterleave(jnp.asarray(joined), sizes, groups)
    for a, b in zip(back, parts, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_grouped_batch_norm_step_equals_two_separate_half_batches():
    """bn_groups=2 on target + source: the loss is that of each half (half the target and half
    the source images) normalised on its own, computed here by two bn_groups=1 passes."""
    rng = np.random.default_rng(3)
    model = models.FineTuner("tiny", num_target=3, num_source=5, bn_groups=2)
    single = models.FineTuner("tiny", num_target=3, num_source=5)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    tx = optim.sgd(0.05, 1e-4, steps_per_epoch=10)
    state = step.init_state(variables, tx)
    batch = {
        "target_images": jnp.asarray(rng.normal(size=(4, 16, 16, 3)), jnp.float32),
        "target_labels": jnp.array([0, 1, 2, 1]),
        "source_train_images": jnp.asarray(rng.normal(size=(6, 16, 16, 3)), jnp.float32),
        "source_labels": jnp.array([4, 0, 3, 3, 1, 2]),
    }
    t_parts, s_parts = [], []
    for half in range(2):
        images = jnp.concatenate(
            [
                batch["target_images"][2 * half : 2 * half + 2],
                batch["source_train_images"][3 * half : 3 * half + 3],
            ]
        )
        t, s = _forward(single, state, images)
        t_parts.append(np.asarray(t[:2]))
        s_parts.append(np.asarray(s[2:]))
    expected = _ce(np.concatenate(t_parts), np.asarray(batch["target_labels"]))
    expected += 0.5 * _ce(np.concatenate(s_parts), np.asarray(batch["source_labels"]))
    fn = jax.jit(step.train_step(model, tx, "labelled", objectives.Settings(0.5), bn_groups=2))
    _, metrics = fn(state, batch)
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
    whole = jax.jit(step.train_step(single, tx, "labelled", objectives.Settings(0.5)))
    assert abs(float(whole(state, batch)[1]["loss"]) - expected) > 1e-4  # groups matter here
