"""Co-Tuning: the relationship p(y_s | y_t), its loss, the kept pre-trained classifier and the
``table1_resnet18:co_tuning`` arm, each against a hand computation."""

import json

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("PIL")

import jax
import jax.numpy as jnp
from test_train_models import random_state_dict, reference_logits
from train_helpers import image_folder, normalised, tiny_overrides, tiny_project

from uotsel_train import (
    config,
    convert,
    cotuning,
    data,
    initialise,
    input_pipeline,
    losses,
    metrics,
    models,
    objectives,
)


def _softmax(logits):
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_relationship_is_each_target_class_mean_of_the_classifier_softmax():
    rng = np.random.default_rng(0)
    probs = _softmax(rng.normal(size=(7, 5)))
    labels = np.array([2, 0, 2, 1, 0, 2, 1])
    expected = np.stack([probs[labels == y].mean(0) for y in range(3)])
    got = cotuning.relationship(probs, labels, 3)
    assert got.shape == (3, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-6)


def test_relationship_refuses_an_empty_class_and_bad_labels():
    probs = np.full((2, 4), 0.25)
    with pytest.raises(ValueError, match="co_tuning: target class 1 has no training image"):
        cotuning.relationship(probs, [0, 2], 3)
    with pytest.raises(ValueError, match=r"co_tuning: labels must lie in 0 \.\.\. 2"):
        cotuning.relationship(probs, [0, 3], 3)
    with pytest.raises(ValueError, match="co_tuning: expected probabilities"):
        cotuning.relationship(probs, [0, 1, 2], 3)


def test_co_tuning_loss_is_target_ce_plus_lambda_soft_ce_against_the_label_rows():
    rng = np.random.default_rng(1)
    target_logits = rng.normal(size=(4, 3)).astype(np.float32)
    source_logits = rng.normal(size=(4, 6)).astype(np.float32)
    labels = np.array([0, 2, 2, 1])
    rel = rng.dirichlet(np.ones(6), size=3).astype(np.float32)
    log_t = np.log(_softmax(target_logits))
    log_s = np.log(_softmax(source_logits))
    t = -log_t[np.arange(4), labels].mean()
    s = -(rel[labels] * log_s).sum(1).mean()
    loss, parts = losses.co_tuning_loss(
        jnp.asarray(target_logits), jnp.asarray(labels), jnp.asarray(source_logits), rel, 2.3
    )
    np.testing.assert_allclose(float(parts["target_ce"]), t, rtol=1e-5)
    np.testing.assert_allclose(float(parts["source_ce"]), s, rtol=1e-5)
    np.testing.assert_allclose(float(loss), t + 2.3 * s, rtol=1e-5)
    grad = jax.grad(lambda z: losses.co_tuning_loss(target_logits, labels, z, rel, 2.3)[0])
    expected = 2.3 * (_softmax(source_logits) - rel[labels]) / 4  # d soft-CE / d logits
    np.testing.assert_allclose(np.asarray(grad(jnp.asarray(source_logits))), expected, atol=1e-6)


def test_co_tuning_objective_needs_the_relationship():
    logits = {"target": (jnp.zeros((2, 3)), jnp.zeros((2, 5)))}
    batch = {"target_labels": jnp.array([0, 1])}
    with pytest.raises(ValueError, match=r"settings\.relationship"):
        losses.co_tuning(logits, batch, objectives.Settings())
    objective = objectives.get("co_tuning")
    assert objective.parts == ("target",) and objective.pretrained_head


def _weights_with_fc(tmp_path, num_source=5, seed=0):
    """A tiny torch-named state dict converted to a weights file; ``(path, state dict)``."""
    state = random_state_dict("tiny", np.random.default_rng(seed), num_classes=num_source)
    path = str(tmp_path / "with_fc.npz")
    convert.save_variables(convert.convert_state_dict(state, "tiny"), path)
    return path, state


@pytest.mark.slow
def test_the_pretrained_classifier_is_loaded_not_drawn(tmp_path):
    path, state = _weights_with_fc(tmp_path)
    backbone = initialise.load_backbone(path, with_head=True)
    model = models.FineTuner("tiny", num_target=3, num_source=5)
    first = initialise.variables(model, backbone, seed=0)
    other = initialise.variables(model, backbone, seed=1)
    head = first["params"]["source_head"]
    np.testing.assert_array_equal(head["kernel"], state["fc.weight"].T.astype(np.float32))
    np.testing.assert_array_equal(head["bias"], state["fc.bias"].astype(np.float32))
    np.testing.assert_array_equal(other["params"]["source_head"]["kernel"], head["kernel"])
    assert np.any(
        first["params"]["target_head"]["kernel"] != other["params"]["target_head"]["kernel"]
    )
    images = np.random.default_rng(2).normal(size=(2, 3, 29, 29))
    _, source_logits, _ = model.apply(first, jnp.asarray(images.transpose(0, 2, 3, 1)))
    ref = reference_logits(state, "tiny", images)  # the torch network's own 5-way logits
    got = np.asarray(source_logits, np.float64)
    assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref))


@pytest.mark.slow
def test_weights_without_a_classifier_are_refused_for_co_tuning(tmp_path):
    backbone = models.backbone("tiny").init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    path = str(tmp_path / "no_fc.npz")
    convert.save_variables({"backbone": backbone}, path)
    assert "source_head" not in initialise.load_backbone(path)
    with pytest.raises(ValueError, match=r"weights: .* holds no pre-trained classifier"):
        initialise.load_backbone(path, with_head=True)
    wide, _ = _weights_with_fc(tmp_path, num_source=4)
    model = models.FineTuner("tiny", num_target=3, num_source=5)
    with pytest.raises(ValueError, match="weights: the pre-trained classifier has kernel"):
        initialise.variables(model, initialise.load_backbone(wide, with_head=True), seed=0)


def test_estimate_matches_a_per_image_hand_computation(tmp_path):
    path, _ = _weights_with_fc(tmp_path)
    backbone = initialise.load_backbone(path, with_head=True)
    source = input_pipeline.open_source(image_folder(tmp_path / "t", 2, 3, 0), "", "train", "t")
    indices = np.array([0, 1, 3, 4, 5])
    got = cotuning.estimate(
        backbone, backbone["source_head"], "tiny", source, indices, image_size=16, batch_size=2
    )
    net = models.backbone("tiny")
    variables = {"params": backbone["params"], "batch_stats": backbone["batch_stats"]}
    head = backbone["source_head"]
    rows = {0: [], 1: []}
    for i in indices:
        img, label = source.load(int(i))
        pixels = normalised(data.eval_transform(img, 16, round(16 * 256 / 224)))[None]
        feats = np.asarray(net.apply(variables, pixels, train=False), np.float64)
        rows[int(label)].append(_softmax(feats @ head["kernel"] + head["bias"])[0])
    expected = np.stack([np.mean(rows[0], 0), np.mean(rows[1], 0)])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_the_co_tuning_arm_reads_no_pretraining_data_and_is_resnet18_only():
    cfg = config.load("table1_resnet18:co_tuning")
    assert (cfg.objective, cfg.lam, cfg.selection_strategy) == ("co_tuning", 2.3, "")
    assert (cfg.arch, cfg.lr, cfg.weight_decay) == ("resnet18", 0.003, 1e-4)
    cfg = config.override(cfg, ["weights=w.npz", "target=t"])
    config.validate(cfg, check_files=False)
    with pytest.raises(config.ConfigError, match="co_tuning: keeps a supervised ImageNet"):
        config.load("table1_mocov2_labelled:co_tuning")


@pytest.mark.slow
def test_table1_resnet18_co_tuning_trains_one_epoch_on_tiny_data(tmp_path, capsys):
    pytest.importorskip("orbax.checkpoint")
    from uotsel_train.cli import main

    paths = tiny_project(tmp_path, target_per_class=4, pretrain_classes=3, per_class=2)
    weights, _ = _weights_with_fc(tmp_path)
    paths["weights"] = weights
    extra = {"epochs": 1, "milestones": "", "test": paths["target"]}
    args = [
        a for a in tiny_overrides(paths, **extra) if "pretrain" not in a and "selection" not in a
    ]
    out = tmp_path / "run"
    cmd = ["finetune", "--config", "table1_resnet18:co_tuning", "--out-dir", str(out), *args]
    assert main(cmd) == 0, capsys.readouterr().err
    lines = metrics.read(str(out), "train")
    assert len(lines) == 1 and np.isfinite(lines[0]["loss"]) and "source_ce" in lines[0]
    saved = json.loads((out / "config.json").read_text())["config"]
    assert (saved["objective"], saved["lam"], saved["pretrain"]) == ("co_tuning", 2.3, "")
    rel = np.load(out / "relationship.npy")
    backbone = initialise.load_backbone(weights, with_head=True)
    source = input_pipeline.open_source(paths["target"], "", "train", "target")
    expected = cotuning.estimate(
        backbone, backbone["source_head"], "tiny", source, np.arange(len(source)), image_size=16
    )
    np.testing.assert_allclose(rel, expected, rtol=1e-6)
    assert rel.shape == (2, 5)
