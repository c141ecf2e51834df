"""Fine-tuning on a per-sample list: `uotsel select --per-sample --samples-out` chooses the
pre-training images one by one, and the `samples` setting makes them the pre-training
stream."""

import json
import re

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

from train_helpers import tiny_overrides, tiny_project

from uotsel.cli import main as uotsel_main
from uotsel_train import config, data, input_pipeline
from uotsel_train.cli import main


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny project (a 2-class target, a 4-class pre-training folder of 12 images), the
    pre-training features of every image, and a per-sample selection of 5 of them."""
    root = tmp_path_factory.mktemp("per_sample")
    paths = tiny_project(root, pretrain_classes=4)
    features = str(root / "features.npy")
    args = ["extract", "--data", paths["pretrain"], "--arch", "tiny", "--weights"]
    args += [paths["weights"], "--image-size", "16", "--workers", "0", "--quiet"]
    assert main([*args, "--out", str(root / "means.npz"), "--features-out", features]) == 0
    select = ["select", "--source", str(root / "means.npz"), "--features", features]
    select += ["--target", str(root / "target_means.npz"), "--per-sample"]
    select += ["--budget-images", "5", "--out", str(root / "ps.json")]
    assert uotsel_main([*select, "--samples-out", str(root / "ps.npy")]) == 0
    return {**paths, "means": str(root / "means.npz"), "ps": str(root), "features": features}


def _load(paths, **changes):
    overrides = [p[len("--config.") :] for p in tiny_overrides(paths, **changes)]
    cfg = config.override(config.load("table1_resnet18"), overrides)
    config.validate(cfg)
    return input_pipeline.load_inputs(cfg)


@pytest.mark.slow
def test_the_pre_training_stream_is_the_per_sample_list(project):
    chosen = np.load(f"{project['ps']}/ps.npy")
    assert chosen.size == 5
    alone = _load(project, selection="", samples=f"{project['ps']}/ps.npy")
    np.testing.assert_array_equal(alone.pretrain_indices, np.sort(chosen))
    assert "pre-training: per-sample list " in alone.notes[-1]
    assert alone.notes[-1].endswith(": 5 images")
    checked = _load(
        project, selection=f"{project['ps']}/ps.json", samples=f"{project['ps']}/ps.npy"
    )
    np.testing.assert_array_equal(checked.pretrain_indices, alone.pretrain_indices)
    # the selection's ranking of whole units still serves units=top_k and group
    record = json.loads(open(f"{project['ps']}/ps.json").read())
    labels = data.ImageFolder(project["pretrain"]).labels
    top = _load(project, selection=f"{project['ps']}/ps.json", units="top_k", top_k=1)
    np.testing.assert_array_equal(
        top.pretrain_indices, np.flatnonzero(np.isin(labels, record["ranking"][:1]))
    )


@pytest.mark.slow
def test_per_sample_lists_and_selections_that_do_not_fit_are_refused(project, tmp_path):
    ps = project["ps"]
    with pytest.raises(ValueError, match=r"^selection: chose samples one by one"):
        _load(project, selection=f"{ps}/ps.json")
    np.save(tmp_path / "four.npy", np.load(f"{ps}/ps.npy")[:4])
    with pytest.raises(
        ValueError, match=r"^samples: the list holds 4 samples, the selection chose 5"
    ):
        _load(project, selection=f"{ps}/ps.json", samples=str(tmp_path / "four.npy"))
    with pytest.raises(ValueError, match=r"^samples: the selection file chose whole units"):
        _load(project, samples=f"{ps}/ps.npy")  # tiny_project's own selection: top 2 units
    np.save(tmp_path / "far.npy", np.array([0, 12]))
    with pytest.raises(ValueError, match=r"^samples: .* lists sample 12, outside the 12 "):
        _load(project, selection="", samples=str(tmp_path / "far.npy"))
    np.save(tmp_path / "twice.npy", np.array([3, 1, 3]))
    with pytest.raises(ValueError, match=r"^samples: .* lists sample 3 more than once"):
        _load(project, selection="", samples=str(tmp_path / "twice.npy"))
    np.save(tmp_path / "none.npy", np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=r"^samples: .* lists no samples"):
        _load(project, selection="", samples=str(tmp_path / "none.npy"))
    np.save(tmp_path / "half.npy", np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"^samples: 0.5 is not a whole number"):
        _load(project, selection="", samples=str(tmp_path / "half.npy"))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"units": "top_k"}, "samples: a per-sample list is trained on as it is; it cannot be "),
        ({"group": 2}, "samples: a per-sample list is trained on as it is; it cannot be "),
        ({"samples": "", "selection": ""}, "selection: required (the labelled objective"),
        ({"samples": "missing.npy"}, "samples: file not found: missing.npy"),
    ],
)
def test_config_checks_of_the_samples_setting(tmp_path, changes, message):
    (tmp_path / "w.npz").write_bytes(b"")
    (tmp_path / "ps.npy").write_bytes(b"")
    settings = {"weights": tmp_path / "w.npz", "target": tmp_path, "pretrain": tmp_path}
    settings = {**settings, "samples": tmp_path / "ps.npy", **changes}
    cfg = config.override(config.default(), [f"{k}={v}" for k, v in settings.items()])
    with pytest.raises(config.ConfigError, match="^" + re.escape(message)):
        config.validate(cfg)


@pytest.mark.slow
def test_finetune_trains_on_a_per_sample_list(project, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--config", "table1_resnet18", "--out-dir", str(out)]
    changes = {"samples": f"{project['ps']}/ps.npy", "selection": f"{project['ps']}/ps.json"}
    assert main([*args, *tiny_overrides(project, epochs=1, milestones="", **changes)]) == 0
    err = capsys.readouterr().err
    assert "pre-training: per-sample list " in err and ": 5 images" in err
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["samples"] == changes["samples"]
    result = json.loads((out / "result.json").read_text())
    assert np.isfinite(result["last"]["test_top1"])
