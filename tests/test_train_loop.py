import dataclasses
import json
import re

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

import jax
import jax.numpy as jnp
from train_helpers import image_folder

from uotsel_train import data, loop, models, streams


def _folder(root, classes, per_class, seed):
    return data.ImageFolder(image_folder(root, classes, per_class, seed))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("loop")
    return (_folder(base / "target", 2, 4, 0), _folder(base / "pretrain", 3, 3, 1))


def _run(tmp_path, sources, objective, precision="float32", lam=0.5, **kwargs):
    target, pretrain = sources
    cfg = loop.Config(
        precision=precision,
        arch="tiny",
        objective=objective,
        lr=0.05,
        lam=lam,
        epochs=3,
        milestones=(2,),
        batch_size=4,
        source_batch_size=3,
        image_size=16,
        eval_every=1,
        workers=2,
    )
    model = models.FineTuner("tiny", num_target=2, num_source=3 if objective == "labelled" else 0)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    picked = streams.selected_samples(pretrain.labels, [0, 2])
    return loop.fit(
        cfg,
        model,
        variables,
        target,
        str(tmp_path),
        target_test=target,
        pretrain=pretrain,
        pretrain_indices=picked,
        log=lambda line: None,
        **kwargs,
    )


@pytest.mark.parametrize("objective", ["vanilla", "labelled", "unlabelled"])
def test_training_runs_logs_and_evaluates(tmp_path, sources, objective):
    out = _run(tmp_path, sources, objective)
    assert out["step"] == 6 and out["epoch"] == 3
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert all(np.isfinite(x["loss"]) and 0 <= x["top1"] <= 1 for x in lines)


def test_resume_after_an_interruption_is_bit_identical(tmp_path, sources):
    whole = _run(tmp_path / "whole", sources, "labelled")
    _run(tmp_path / "split", sources, "labelled", until_epoch=1)
    resumed = _run(tmp_path / "split", sources, "labelled", resume=True)
    assert resumed["step"] == whole["step"] == 6
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
        whole["state"].params,
        resumed["state"].params,
    )
    assert all(jax.tree.leaves(same))
    same_opt = jax.tree.map(
        lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
        whole["state"].opt_state,
        resumed["state"].opt_state,
    )
    assert all(jax.tree.leaves(same_opt))


def test_nan_loss_stops_with_the_last_checkpoint_intact(tmp_path, sources):
    target, _ = sources
    model = models.FineTuner("tiny", num_target=2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    cfg = loop.Config(
        arch="tiny",
        objective="vanilla",
        lr=1e30,
        epochs=3,
        batch_size=4,
        image_size=16,
        eval_every=100,
    )
    with pytest.raises(FloatingPointError, match="the loss became"):
        loop.fit(cfg, model, variables, target, str(tmp_path), log=lambda line: None)
    with pytest.raises(ValueError, match="pretrain: the labelled objective needs"):
        loop.fit(loop.Config(arch="tiny"), model, variables, target, str(tmp_path))


def test_finetune_command(tmp_path, sources, capsys):
    from uotsel_train import convert
    from uotsel_train.cli import main

    target, pretrain = sources
    backbone = models.backbone("tiny").init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))
    convert.save_variables({"backbone": backbone}, str(tmp_path / "w.npz"))
    (tmp_path / "sel.json").write_text(
        json.dumps({"format": "uotsel.selection/1", "selected": [0, 2]})
    )
    args = [
        "finetune",
        "--preset",
        "resnet18-labelled",
        "--arch",
        "tiny",
        "--target",
        target.root,
        "--test",
        target.root,
        "--pretrain",
        pretrain.root,
        "--selection",
        str(tmp_path / "sel.json"),
        "--weights",
        str(tmp_path / "w.npz"),
        "--out-dir",
        str(tmp_path / "run"),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--source-batch-size",
        "3",
        "--image-size",
        "16",
        "--eval-every",
        "1",
    ]
    assert main(args) == 0, capsys.readouterr().err
    assert "step 4, epoch 2, top-1" in capsys.readouterr().out
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    assert main([*args, "--eval-every", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith("error: --eval-every: must be >= 1, got 0")
    assert main(args) == 2  # the same folder again, without --resume
    assert "error: --out-dir: " in capsys.readouterr().err
    assert main([a for a in args if a not in ("--selection", str(tmp_path / "sel.json"))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "uotsel-train finetune: error: --pretrain: the labelled objective needs --pretrain "
        "and --selection"
    )


def test_grid_command_reports_mean_and_best(tmp_path, sources, capsys):
    from uotsel_train import convert
    from uotsel_train.cli import main

    target, _ = sources
    backbone = models.backbone("tiny").init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))
    convert.save_variables({"backbone": backbone}, str(tmp_path / "w.npz"))
    args = [
        "grid",
        "--preset",
        "resnet18-vanilla",
        "--arch",
        "tiny",
        "--target",
        target.root,
        "--test",
        target.root,
        "--weights",
        str(tmp_path / "w.npz"),
        "--out-dir",
        str(tmp_path / "grid"),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--image-size",
        "16",
        "--lrs",
        "0.01,0.1",
        "--seeds",
        "0,1",
    ]
    assert main(args) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert [r["lr"] for r in record["results"]] == [0.01, 0.1]
    for r in record["results"]:
        assert len(r["top1"]) == 2
        assert r["mean"] == pytest.approx(np.mean(r["top1"])) and r["best"] == max(r["top1"])
    assert "best by mean top-1" in capsys.readouterr().out


def test_bfloat16_precision_trains_with_float32_parameters(tmp_path, sources):
    model = models.FineTuner("tiny", num_target=2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    images = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    full, _, _ = model.apply(variables, images)
    half, _, feats = model.clone(dtype=jnp.bfloat16).apply(variables, images)
    assert half.dtype == feats.dtype == jnp.float32
    assert not np.array_equal(np.asarray(half), np.asarray(full))  # bf16 really ran
    np.testing.assert_allclose(half, full, rtol=0.05, atol=0.02)
    out = _run(tmp_path, sources, "labelled", precision="bfloat16")
    assert out["step"] == 6
    assert {x.dtype for x in jax.tree.leaves(out["state"].params)} == {jnp.dtype(jnp.float32)}
    with pytest.raises(ValueError, match="precision: unknown 'fp8'"):
        _run(tmp_path / "bad", sources, "labelled", precision="fp8")


def test_unreadable_images_are_replaced_within_the_batch(tmp_path):
    target = _folder(tmp_path / "target", 2, 4, 3)
    (tmp_path / "target" / "c1" / "9.png").write_bytes(b"not an image")
    target = data.ImageFolder(str(tmp_path / "target"))
    assert len(target) == 9
    model = models.FineTuner("tiny", num_target=2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    cfg = loop.Config(
        arch="tiny", objective="vanilla", epochs=2, batch_size=3, image_size=16, progress=False
    )
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        out = loop.fit(cfg, model, variables, target, str(tmp_path / "run"), log=lambda x: None)
    assert out["step"] == 6


def test_finetune_flags_are_checked_before_any_work(tmp_path, capsys):
    from uotsel_train.cli import main

    base = ["finetune", "--preset", "resnet18-vanilla", "--target", str(tmp_path)]
    base += ["--weights", str(tmp_path / "none.npz"), "--out-dir", str(tmp_path / "run")]
    assert main([*base, "--coordinator", "localhost:1234"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["uotsel-train finetune: error: --coordinator: given without --distributed"]
    assert main([*base, "--precision", "fp16"]) == 2
    assert "--precision: invalid choice" in capsys.readouterr().err
    assert main([*base, "--objective", "labelled"]) == 2
    assert "--pretrain: the labelled objective needs" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_progress_line_on_a_terminal(tmp_path, sources, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    target, _ = sources
    model = models.FineTuner("tiny", num_target=2)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    cfg = loop.Config(arch="tiny", objective="vanilla", epochs=1, batch_size=2, image_size=16)
    loop.fit(cfg, model, variables, target, str(tmp_path), log=lambda line: None)
    shown = screen.getvalue()
    assert "\r\x1b[2Kepoch 1/1 step 1/4 loss " in shown and "step 3/4" in shown
    assert "img/s" in shown and shown.endswith("\r\x1b[2K")  # cleared before the epoch line
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    cfg = dataclasses.replace(cfg, progress=False)
    loop.fit(cfg, model, variables, target, str(tmp_path / "quiet"), log=lambda line: None)
    assert quiet.getvalue() == ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs: must be >= 1, got 0"),
        ({"eval_every": 0}, "eval_every: must be >= 1"),
        ({"lr": 0.0}, "lr: must be a finite number > 0"),
        ({"lam": float("nan")}, "lam: must be a finite number >= 0"),
        ({"crop_scale": (0.5, 0.2)}, "crop_scale: need 0 < low <= high <= 1"),
        ({"threshold": 1.5}, "threshold: must be in"),
    ],
)
def test_settings_out_of_range_are_refused(tmp_path, sources, change, message):
    target, _ = sources
    model = models.FineTuner("tiny", num_target=2)
    cfg = dataclasses.replace(loop.Config(arch="tiny", objective="vanilla", batch_size=2), **change)
    with pytest.raises(ValueError, match=re.escape(message)):
        loop.fit(cfg, model, {}, target, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_finished_run_is_not_overwritten(tmp_path, sources):
    _run(tmp_path, sources, "vanilla", until_epoch=1)
    with pytest.raises(ValueError, match=r"out_dir: .* already holds a run"):
        _run(tmp_path, sources, "vanilla")


def test_resume_refuses_changed_settings_and_records_them(tmp_path, sources):
    _run(tmp_path, sources, "labelled", until_epoch=1)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["lam"] == 0.5 and saved["objective"] == "labelled" and saved["devices"] >= 1
    with pytest.raises(ValueError, match=r"lam: the run being resumed used 0.5, not 0.7"):
        _run(tmp_path, sources, "labelled", resume=True, lam=0.7)
