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
from train_helpers import image_folder, memory_cfg, normalised, tiny_overrides, tiny_project

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
    optim,
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


def _hand_probabilities(backbone, source, indices):
    """Per image, by hand: the softmax of the pre-trained classifier's logits times the
    release's 0.8840456604957581 ``[N, C_s]``, and the labels ``[N]``."""
    net = models.backbone("tiny")
    variables = {"params": backbone["params"], "batch_stats": backbone["batch_stats"]}
    head = backbone["source_head"]
    probs, labels = [], []
    for i in indices:
        img, label = source.load(int(i))
        pixels = normalised(data.eval_transform(img, 16, round(16 * 256 / 224)))[None]
        feats = np.asarray(net.apply(variables, pixels, train=False), np.float64)
        logits = feats @ head["kernel"] + head["bias"]
        probs.append(_softmax(logits * 0.8840456604957581)[0])
        labels.append(label)
    return np.stack(probs), np.array(labels)


def test_estimate_matches_a_per_image_hand_computation(tmp_path):
    path, _ = _weights_with_fc(tmp_path)
    backbone = initialise.load_backbone(path, with_head=True)
    source = input_pipeline.open_source(image_folder(tmp_path / "t", 2, 3, 0), "", "train", "t")
    indices = np.array([0, 1, 3, 4, 5])
    got = cotuning.estimate(
        backbone,
        backbone["source_head"],
        "tiny",
        source,
        indices,
        approach="direct",
        image_size=16,
        batch_size=2,
    )
    probs, labels = _hand_probabilities(backbone, source, indices)
    expected = np.stack([probs[labels == 0].mean(0), probs[labels == 1].mean(0)])
    assert (got.approach, got.images, got.diagnostics) == ("direct", 5, None)
    np.testing.assert_allclose(got.relationship, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_estimate_reverse_fits_on_the_seeded_split_of_the_hand_probabilities(tmp_path):
    path, _ = _weights_with_fc(tmp_path)
    backbone = initialise.load_backbone(path, with_head=True)
    source = input_pipeline.open_source(image_folder(tmp_path / "t", 2, 4, 0), "", "train", "t")
    indices = np.arange(8)
    got = cotuning.estimate(
        backbone, backbone["source_head"], "tiny", source, indices, seed=3, image_size=16
    )
    probs, labels = _hand_probabilities(backbone, source, indices)
    held = cotuning.split(labels, 3)
    assert held.sum() == 2  # one of every class's four images
    with jax.enable_x64(True):
        rel, diagnostics = cotuning.reverse_relationship(
            probs[~held], labels[~held], probs[held], labels[held], 2
        )
    assert (got.approach, got.images, got.diagnostics.val_images) == ("reverse", 8, 2)
    assert got.diagnostics.c == diagnostics.c
    np.testing.assert_allclose(got.relationship, rel, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.relationship.sum(1), 1.0, rtol=1e-6)


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
    )  # reverse, split by the run's seed 0
    np.testing.assert_allclose(rel, expected.relationship, rtol=1e-6)
    assert rel.shape == (2, 5)
    record = json.loads((out / "relationship.json").read_text())
    assert record["approach"] == "reverse" and record["c"] == expected.diagnostics.c


# --- the kept classifier's learning rate ----------------------------------------------------


def test_only_freshly_drawn_heads_are_in_the_ten_times_group():
    params = {"backbone": {"w": 0.0}, "target_head": {"w": 0.0}, "source_head": {"w": 0.0}}
    fresh = optim.param_groups(params)
    assert fresh == {
        "backbone": {"w": "backbone"},
        "target_head": {"w": "head"},
        "source_head": {"w": "head"},
    }
    kept = optim.param_groups(params, pretrained_head=True)
    assert kept == {
        "backbone": {"w": "backbone"},
        "target_head": {"w": "head"},
        "source_head": {"w": "backbone"},
    }


def _memory_target():
    """An in-memory 2-class target of 8 images, 16 px (a class signal in channel 0)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8)
    labels = np.array([0, 1] * 4)
    images[labels == 1, :, :, 0] = 250
    return data.ArraySource(images, labels, ["a", "b"])


def _memory_inputs(objective):
    target = _memory_target()
    labelled = objective == "labelled"
    pretrain = data.ArraySource(target.images[:6], np.array([0, 1, 2] * 2), ["p", "q", "r"])
    return input_pipeline.Inputs(
        target=target,
        train_indices=np.arange(len(target)),
        val_indices=np.zeros(0, np.int64),
        test=target,
        pretrain=pretrain if labelled else None,
        pretrain_indices=np.arange(6) if labelled else None,
        num_source_classes=3 if labelled else 0,
    )


def _memory_backbone(tmp_path, objective):
    """The tiny backbone of a converted weights file, with its 5-way ``fc`` for Co-Tuning."""
    path, _ = _weights_with_fc(tmp_path, num_source=5)
    return initialise.load_backbone(path, with_head=objectives.get(objective).pretrained_head)


def _first_step_rates(tx, params, momentum=0.9):
    """The learning rate of every top-level module of ``params`` from ``tx``'s first update
    with the gradient 0.5 everywhere, which Nesterov SGD without weight decay makes
    ``-lr (1 + momentum) g``: ``{module: lr}``, checked to be one value a module."""
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, p.dtype), params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    rates = {}
    for name, module in updates.items():
        values = np.concatenate([np.ravel(u) for u in jax.tree.leaves(module)])
        values = -values / ((1 + momentum) * 0.5)
        np.testing.assert_allclose(values, values[0], rtol=1e-6)
        rates[name] = float(values[0])
    return rates


RATES = [("co_tuning", 1.0), ("labelled", 10.0)]


@pytest.mark.parametrize(("objective", "source_factor"), RATES)
def test_the_kept_classifier_learns_at_the_backbone_rate_and_fresh_heads_at_ten_times(
    objective, source_factor
):
    """The optimiser a run builds from its config: one step with a known gradient moves the
    backbone at lr, the target head at 10x and the source head at 1x when the objective keeps
    the pre-trained classifier (Co-Tuning), at 10x when it draws it fresh (``labelled``)."""
    from uotsel_train import train

    cfg = memory_cfg(objective=objective, weight_decay=0.0, lr=0.05)
    tx, schedules = train._optimiser(cfg, steps_per_epoch=2)
    params = {
        "backbone": {"conv": {"kernel": jnp.ones((3, 2))}, "bn": {"scale": jnp.ones(2)}},
        "target_head": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)},
        "source_head": {"kernel": jnp.ones((2, 5)), "bias": jnp.zeros(5)},
    }
    rates = _first_step_rates(tx, params)
    expected = {"backbone": 0.05, "target_head": 0.5, "source_head": 0.05 * source_factor}
    assert rates == pytest.approx(expected, rel=1e-6)
    # the logged rates: the backbone's (the kept classifier's) and the fresh heads'
    assert {k: float(v(0)) for k, v in schedules.items()} == pytest.approx(
        {"backbone": 0.05, "head": 0.5}, rel=1e-6
    )


@pytest.mark.slow
@pytest.mark.parametrize(("objective", "source_factor"), RATES)
def test_a_runs_model_and_optimiser_put_the_kept_classifier_at_the_backbone_rate(
    tmp_path, objective, source_factor
):
    """The same through ``fit``'s start, on the tiny model's own parameter tree (its source
    head loaded from the weights' ``fc`` for Co-Tuning, drawn for ``labelled``)."""
    pytest.importorskip("orbax.checkpoint")
    from uotsel_train import train

    cfg = memory_cfg(objective=objective, weight_decay=0.0, lr=0.05)
    inputs = _memory_inputs(objective)
    backbone = _memory_backbone(tmp_path, objective)
    _, _, tx, state, *_ = train._start(cfg, inputs, backbone, str(tmp_path / "run"), False, print)
    if objective == "co_tuning":
        np.testing.assert_array_equal(
            state.params["source_head"]["kernel"], backbone["source_head"]["kernel"]
        )
    rates = _first_step_rates(tx, state.params)
    expected = {"backbone": 0.05, "target_head": 0.5, "source_head": 0.05 * source_factor}
    assert rates == pytest.approx(expected, rel=1e-6)


# --- a resumed run reuses its relationship --------------------------------------------------


def _refuse_estimate(*args, **kwargs):
    raise AssertionError("cotuning.estimate was called")


def _relationship_settings(out_dir, saved, *, resumed=True, lead=True, width=5):
    """``objective_settings.settings`` of a 2-class Co-Tuning run with a ``width``-way source
    head whose folder ``out_dir`` holds ``saved`` as ``relationship.npy`` (None: no file);
    ``(settings, log lines)``."""
    import types

    from uotsel_train import objective_settings

    if saved is not None:
        np.save(out_dir / "relationship.npy", saved)
    cfg = config.override(config.default(), ["objective=co_tuning", "arch=tiny"])
    inputs = types.SimpleNamespace(
        target=types.SimpleNamespace(classes=["a", "b"]), train_indices=np.arange(4)
    )
    head = {"kernel": np.zeros((8, width), np.float32), "bias": np.zeros(width, np.float32)}
    lines = []
    got = objective_settings.settings(
        cfg, inputs, {"source_head": head}, str(out_dir), lead, lines.append, resumed=resumed
    )
    return got, lines


def test_a_resumed_run_reads_its_relationship_back_instead_of_estimating(tmp_path, monkeypatch):
    monkeypatch.setattr(cotuning, "estimate", _refuse_estimate)
    saved = np.random.default_rng(3).dirichlet(np.ones(5), size=2).astype(np.float32)
    got, lines = _relationship_settings(tmp_path, saved)
    np.testing.assert_array_equal(got.relationship, saved)
    assert got.relationship.dtype == np.float32
    path = tmp_path / "relationship.npy"
    assert lines == [f"co_tuning: p(y_s | y_t) [2, 5] reused from {path}"]
    got, lines = _relationship_settings(tmp_path, None, lead=False)  # every process reads it
    np.testing.assert_array_equal(got.relationship, saved)
    assert not lines


def test_a_saved_relationship_that_does_not_fit_the_run_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(cotuning, "estimate", _refuse_estimate)
    path = tmp_path / "relationship.npy"
    needs = r"but this run needs \[2, 5\] \(target classes x source head width\)"
    for shape in [(3, 5), (2, 4), (10,)]:
        message = rf"^co_tuning: {path} holds p\(y_s \| y_t\) {list(shape)}, ".replace("[", r"\[")
        with pytest.raises(ValueError, match=message + needs):
            _relationship_settings(tmp_path, np.full(shape, 0.2, np.float32))
    with pytest.raises(ValueError, match=rf"^co_tuning: {path} must hold finite probabilities"):
        _relationship_settings(tmp_path, np.full((2, 5), np.nan, np.float32))
    with pytest.raises(ValueError, match=rf"^co_tuning: {path} must hold finite probabilities"):
        _relationship_settings(tmp_path, np.full((2, 5), -0.2, np.float32))
    path.write_bytes(b"not an array")
    with pytest.raises(ValueError, match=rf"^co_tuning: cannot read {path}: ") as caught:
        _relationship_settings(tmp_path, None)
    assert "\n" not in str(caught.value)


def test_a_new_run_or_a_resumed_one_without_the_file_estimates(tmp_path, monkeypatch):
    rel = np.full((2, 5), 0.2, np.float32)
    calls = []

    def fake_estimate(backbone, head, arch, source, indices, **kwargs):
        calls.append(kwargs["approach"])
        return cotuning.Estimate(rel, kwargs["approach"], len(indices), None)

    monkeypatch.setattr(cotuning, "estimate", fake_estimate)
    got, lines = _relationship_settings(tmp_path, None, resumed=True)
    assert calls == ["reverse"] and got.relationship is rel and "reused" not in lines[0]
    np.testing.assert_array_equal(np.load(tmp_path / "relationship.npy"), rel)
    stale = np.full((2, 5), 0.5, np.float32)  # a folder left by a run without a checkpoint
    got, _ = _relationship_settings(tmp_path, stale, resumed=False)
    assert len(calls) == 2 and got.relationship is rel
    np.testing.assert_array_equal(np.load(tmp_path / "relationship.npy"), rel)


@pytest.mark.slow
def test_a_co_tuning_run_resumes_on_its_saved_relationship_bit_identically(tmp_path, monkeypatch):
    """A tiny Co-Tuning run stopped after its first epoch and resumed with the estimator
    refusing to run ends where the uninterrupted run ends, parameters and optimiser state."""
    pytest.importorskip("orbax.checkpoint")
    from uotsel_train import train

    cfg = memory_cfg(objective="co_tuning", co_tuning_relationship="direct", lam=0.5)
    inputs = _memory_inputs("co_tuning")
    backbone = _memory_backbone(tmp_path, "co_tuning")

    def fit(out, **kwargs):
        return train.fit(cfg, inputs, backbone, str(tmp_path / out), log=lines.append, **kwargs)

    lines = []
    whole = fit("whole")
    fit("split", until_epoch=1)
    saved = np.load(tmp_path / "split" / "relationship.npy")
    monkeypatch.setattr(cotuning, "estimate", _refuse_estimate)
    lines.clear()
    resumed = fit("split", resume=True)
    assert resumed.step == whole.step == 6
    path = tmp_path / "split" / "relationship.npy"
    assert f"co_tuning: p(y_s | y_t) [2, 5] reused from {path}" in lines
    np.testing.assert_array_equal(np.load(path), saved)
    for a, b in zip(
        jax.tree.leaves((whole.state.params, whole.state.opt_state)),
        jax.tree.leaves((resumed.state.params, resumed.state.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_checkpoint_of_other_optimiser_groups_is_refused_in_one_line(tmp_path):
    """A Co-Tuning checkpoint from before the kept classifier learnt at the backbone's rate
    (its momentum in the heads' group) does not restore into today's state."""
    pytest.importorskip("orbax.checkpoint")
    from uotsel_train import checkpoints, step

    params = {"backbone": {"w": jnp.ones(2)}, "source_head": {"w": jnp.ones(3)}}
    variables = {"params": params, "batch_stats": {}}
    before = step.init_state(variables, optim.sgd(0.1, 0.0, 1))
    store = checkpoints.Store(str(tmp_path))
    store.save(before._replace(step=jnp.int32(2)), 0, (8, 0))
    same = store.restore(before, 0)
    assert same.positions == (8, 0) and int(same.state.step) == 2
    now = step.init_state(variables, optim.sgd(0.1, 0.0, 1, pretrained_head=True))
    message = r"^out_dir: the checkpoint at step 2 in .* is laid out otherwise than this run's"
    with pytest.raises(ValueError, match=message):
        store.restore(now, 0)
