"""Fine-tuning runs: train.fit on in-memory data, and `uotsel-train finetune` end to end."""

import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

import jax
import jax.numpy as jnp
from train_helpers import image_folder, memory_cfg, tiny_overrides, tiny_project

from uotsel_train import config, data, input_pipeline, models, streams, train

TARGET_CLASSES = ["a", "b"]


@pytest.fixture(scope="module")
def memory():
    """A 2-class target (8 images) and a 3-class pre-training set (9 images), 16 px."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(17, 16, 16, 3), dtype=np.uint8)
    labels = np.array([0, 1] * 4 + [0, 1, 2] * 3)
    images[labels == 1, :, :, 0] = 250  # a class signal
    target = data.ArraySource(images[:8], labels[:8], TARGET_CLASSES)
    pretrain = data.ArraySource(images[8:], labels[8:], ["p", "q", "r"])
    return target, pretrain


def _cfg(**changes):
    return memory_cfg(**{"lam": 0.5, **changes})


def _inputs(memory, cfg, units=(0, 2)):
    target, pretrain = memory
    needs = cfg.objective != "vanilla"
    return input_pipeline.Inputs(
        target=target,
        train_indices=np.arange(len(target)),
        val_indices=np.zeros(0, np.int64),
        test=target,
        pretrain=pretrain if needs else None,
        pretrain_indices=streams.selected_samples(pretrain.labels, units) if needs else None,
        num_source_classes=3 if cfg.objective == "labelled" else 0,
    )


def _backbone():
    return models.backbone("tiny").init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))


def _fit(memory, out, cfg=None, **kwargs):
    cfg = cfg or _cfg()
    return train.fit(cfg, _inputs(memory, cfg), _backbone(), str(out), log=lambda x: None, **kwargs)


def _records(run_dir, kind):
    from uotsel_train import metrics

    return metrics.read(str(run_dir), kind)


@pytest.mark.parametrize(
    ("objective", "terms"),
    [
        ("vanilla", {"target_ce"}),
        pytest.param("labelled", {"target_ce", "source_ce"}, marks=pytest.mark.slow),
        pytest.param("unlabelled", {"target_ce", "pseudo_ce", "mask_rate"}, marks=pytest.mark.slow),
    ],
)
def test_each_objective_trains_logs_and_reports_last_and_best(tmp_path, memory, objective, terms):
    out = _fit(memory, tmp_path, _cfg(objective=objective, log_every_steps=3))
    assert (out.step, out.epoch) == (6, 3)
    train_records = _records(tmp_path, "train")
    assert [x["step"] for x in train_records] == [2, 3, 4, 6]  # every 3 steps, every epoch end
    expected = terms | {"loss", "grad_norm", "lr_backbone", "lr_head", "step_s", "images_per_s"}
    for line in train_records:
        assert set(line) == expected | {"kind", "step", "epoch"}
        assert np.isfinite(line["loss"]) and line["step_s"] > 0
    assert [x["epoch"] for x in train_records] == [1.0, 1.5, 2.0, 3.0]
    evals = _records(tmp_path, "eval")
    assert [x["epoch"] for x in evals] == [1, 2, 3]
    running = np.maximum.accumulate([x["test_top1"] for x in evals])
    np.testing.assert_array_equal([x["best_test_top1"] for x in evals], running)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["last"] == out.last and result["last"]["epoch"] == 3
    best = max(evals, key=lambda x: x["test_top1"])  # the first epoch reaching the maximum
    assert result["best"]["epoch"] == best["epoch"]
    assert result["best"]["test_top1"] == best["test_top1"]
    if objective == "unlabelled":  # mask_rate: no threshold keeps every pseudo-label
        assert all(x["mask_rate"] == 1.0 for x in train_records)


@pytest.mark.slow
def test_milestones_follow_target_epochs_and_heads_get_ten_times(tmp_path, memory):
    # 8 target images / 4 = 2 steps an epoch; the pre-training stream (6 images / 2 = 3 steps a
    # pass) runs alongside and does not move the milestones.
    _fit(memory, tmp_path, _cfg(milestones="1,2"))
    lines = _records(tmp_path, "train")
    assert [x["step"] for x in lines] == [2, 4, 6]
    np.testing.assert_allclose([x["lr_backbone"] for x in lines], [0.05, 0.005, 0.0005])
    np.testing.assert_allclose([x["lr_head"] for x in lines], [0.5, 0.05, 0.005])


@pytest.mark.slow
def test_resume_after_an_interruption_is_bit_identical(tmp_path, memory):
    whole = _fit(memory, tmp_path / "whole")
    _fit(memory, tmp_path / "split", until_epoch=1)
    resumed = _fit(memory, tmp_path / "split", resume=True)
    assert resumed.step == whole.step == 6
    for a, b in zip(
        jax.tree.leaves((whole.state.params, whole.state.opt_state)),
        jax.tree.leaves((resumed.state.params, resumed.state.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    split, whole_records = _records(tmp_path / "split", None), _records(tmp_path / "whole", None)
    assert [(r["kind"], r["step"]) for r in split] == [
        (r["kind"], r["step"]) for r in whole_records
    ]
    assert split[-2]["loss"] == whole_records[-2]["loss"]  # the last train record
    assert split[-1]["best_test_top1"] == whole_records[-1]["best_test_top1"]


def _poison_from_step(monkeypatch, first):
    """Target images of steps >= ``first`` become NaN (the pipeline's output)."""
    original = input_pipeline.Pipeline.next

    def next_(self):
        s = self.step
        batch, after = original(self)
        if s >= first:
            batch["target_images"] = batch["target_images"] * jnp.nan
        return batch, after

    monkeypatch.setattr(input_pipeline.Pipeline, "next", next_)


@pytest.mark.slow
def test_a_nan_loss_stops_naming_step_and_epoch_with_the_checkpoint_intact(
    tmp_path, memory, monkeypatch
):
    from uotsel_train import checkpoints

    _poison_from_step(monkeypatch, 2)  # steps 0, 1 (epoch 1) are fine
    cfg = _cfg()
    with pytest.raises(train.Diverged, match=r"at step 3 \(epoch 2\).*checkpoint \(step 2\)"):
        _fit(memory, tmp_path, cfg)
    assert checkpoints.Store(str(tmp_path)).latest() == 2
    monkeypatch.undo()
    resumed = _fit(memory, tmp_path, cfg, resume=True)  # the last good state resumes
    assert resumed.step == 6


@pytest.mark.slow
def test_the_command_exits_3_on_divergence(tmp_path, monkeypatch, capsys):
    from uotsel_train.cli import main

    paths = tiny_project(tmp_path)
    _poison_from_step(monkeypatch, 0)
    args = ["finetune", "--config", "table1_resnet18", "--out-dir", str(tmp_path / "run")]
    assert main([*args, *tiny_overrides(paths)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert re.fullmatch(
        r"uotsel-train finetune: diverged: the loss became nan at step 1 \(epoch 1\); no "
        r"checkpoint had been written yet in .*",
        err[-1],
    )


@pytest.mark.slow
def test_finetune_reads_a_real_selection_and_its_saved_config_repeats_the_run(tmp_path, capsys):
    from uotsel_train.cli import main

    paths = tiny_project(tmp_path)
    first = tmp_path / "first"
    args = ["finetune", "--config", "table1_resnet18:uot", "--out-dir", str(first)]
    assert main([*args, *tiny_overrides(paths)]) == 0, capsys.readouterr().err
    out = capsys.readouterr()
    assert re.search(r"step 4, epoch 2; last \(epoch 2\): test_top1 [0-9.]+", out.out)
    assert "pre-training: selected units: 2 units, 6 images" in out.err
    again = tmp_path / "again"
    saved = str(first / "config.json")
    assert main(["finetune", "--config", saved, "--out-dir", str(again)]) == 0
    timing = ("step_s", "images_per_s")
    a = [{k: v for k, v in x.items() if k not in timing} for x in _records(first, None)]
    b = [{k: v for k, v in x.items() if k not in timing} for x in _records(again, None)]
    assert a == b and len(a) == 4  # a train and an eval record per epoch
    assert (
        json.loads((again / "config.json").read_text())["config"]
        == json.loads((first / "config.json").read_text())["config"]
    )
    assert main([*args, *tiny_overrides(paths)]) == 2  # the same folder, without --resume
    assert "already holds a run" in capsys.readouterr().err


def _load(paths, **changes):
    overrides = [p[len("--config.") :] for p in tiny_overrides(paths, **changes)]
    cfg = config.override(config.load("table1_resnet18"), overrides)
    config.validate(cfg)
    return input_pipeline.load_inputs(cfg)


@pytest.mark.slow
def test_the_selection_file_is_consumed_whole_and_checked(tmp_path):
    paths = tiny_project(tmp_path, pretrain_classes=4)
    record = json.loads(open(paths["selection"]).read())
    pretrain = data.ImageFolder(paths["pretrain"])

    def images_of(units):
        return np.flatnonzero(np.isin(pretrain.labels, units))

    got = _load(paths).pretrain_indices
    np.testing.assert_array_equal(got, images_of(record["selected"]))
    got = _load(paths, units="top_k", top_k=1).pretrain_indices
    np.testing.assert_array_equal(got, images_of(record["ranking"][:1]))
    got = _load(paths, group=3).pretrain_indices
    np.testing.assert_array_equal(got, images_of(record["groups"][3]))
    with pytest.raises(ValueError, match=r"group: the selection has 4 groups"):
        _load(paths, group=4)
    with pytest.raises(ValueError, match=r"selection: made by strategy 'uot'.*expects 'random'"):
        _load(paths, selection_strategy="random")
    other = image_folder(tmp_path / "other", 5, 2, 3)
    with pytest.raises(ValueError, match=r"selection: made for 4 pre-training units, .* has 5"):
        _load(paths, pretrain=other)
    renamed = dict(record, selected_names=list(reversed(record["selected_names"])))
    (tmp_path / "renamed.json").write_text(json.dumps(renamed))
    with pytest.raises(ValueError, match=r"selection: unit \d+ is 'c\d' in the selection but"):
        _load(paths, selection=str(tmp_path / "renamed.json"))


@pytest.mark.slow
def test_every_unit_or_a_share_of_every_unit_without_a_selection(tmp_path):
    """units=all reads no selection; pretrain_fraction keeps a seeded share of every unit (the
    sec44_every_class config)."""
    paths = tiny_project(tmp_path, pretrain_classes=4, per_class=4)
    labels = np.asarray(data.ImageFolder(paths["pretrain"]).labels)
    every = _load(paths, units="all", selection="").pretrain_indices
    np.testing.assert_array_equal(every, np.arange(labels.size))
    half = _load(paths, units="all", selection="", pretrain_fraction=0.5).pretrain_indices
    assert np.bincount(labels[half]).tolist() == [2, 2, 2, 2]
    again = _load(paths, units="all", selection="", pretrain_fraction=0.5).pretrain_indices
    np.testing.assert_array_equal(half, again)
    record = json.loads(open(paths["selection"]).read())
    chosen = _load(paths, pretrain_fraction=0.5).pretrain_indices
    assert set(labels[chosen]) == set(record["selected"])
    with pytest.raises(config.ConfigError, match=r"units: all .* reads no selection"):
        _load(paths, units="all")


@pytest.mark.slow
def test_cluster_selections_are_checked_against_their_unit_file(tmp_path):
    paths = tiny_project(tmp_path)
    ids = np.asarray(data.ImageFolder(paths["pretrain"]).labels)
    np.savez(tmp_path / "units.npz", means=np.ones((3, 4), np.float32), assignment=ids)
    with pytest.raises(ValueError, match=r"selection: was made from another unit file"):
        _load(paths, unit_ids=str(tmp_path / "units.npz"))
    np.save(tmp_path / "short.npy", ids[:-1])
    with pytest.raises(ValueError, match=r"unit_ids: .* holds 8 ids for 9 pre-training images"):
        _load(paths, unit_ids=str(tmp_path / "short.npy"))
    np.save(tmp_path / "ids.npy", ids)
    np.testing.assert_array_equal(
        _load(paths, unit_ids=str(tmp_path / "ids.npy")).pretrain_indices,
        _load(paths).pretrain_indices,
    )


@pytest.mark.slow
def test_target_subsets_and_the_validation_split(tmp_path):
    paths = tiny_project(tmp_path, target_per_class=10)
    labels = data.ImageFolder(paths["target"]).labels
    half = _load(paths, target_fraction=0.5, batch_size=2)
    assert np.bincount(labels[half.train_indices]).tolist() == [5, 5]
    tail = _load(paths, long_tail=10, batch_size=2)
    assert sorted(np.bincount(labels[tail.train_indices]).tolist()) == [1, 10]
    split = _load(paths, val_fraction=0.2, batch_size=2)
    assert np.bincount(labels[split.val_indices]).tolist() == [2, 2]
    assert not set(split.val_indices) & set(split.train_indices)
    assert len(split.train_indices) + len(split.val_indices) == 20


@pytest.mark.slow
def test_a_test_set_with_other_classes_is_refused(tmp_path, capsys):
    from uotsel_train.cli import main

    paths = tiny_project(tmp_path)
    other = image_folder(tmp_path / "other", 3, 2, 5)
    with pytest.raises(ValueError, match=r"test: its 3 classes are not the target's 2"):
        _load(paths, test=other)
    args = ["finetune", "--config", "table1_resnet18", "--out-dir", str(tmp_path / "run")]
    assert main([*args, *tiny_overrides(paths, test=other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: test: its 3 classes are not the target's 2" in err[0]


@pytest.mark.slow
def test_file_problems_are_one_line_and_touch_nothing(tmp_path, capsys):
    from uotsel_train.cli import main

    paths = tiny_project(tmp_path)
    (tmp_path / "afile").write_text("keep")
    (tmp_path / "text.npz").write_text("not a checkpoint")
    good = open(paths["weights"], "rb").read()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    weights = models.backbone("tiny").init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))
    weights = jax.tree.map(lambda x: np.full_like(x, np.nan), weights)
    from uotsel_train import convert

    convert.save_variables({"backbone": weights}, str(tmp_path / "nan.npz"))
    base = ["finetune", "--config", "table1_resnet18"]
    cases = [
        ([str(tmp_path / "afile")], {}, "out_dir: is a file"),
        ([str(tmp_path / "afile" / "run")], {}, "out_dir: cannot create"),
        ([str(tmp_path / "r1")], {"weights": str(tmp_path)}, "weights: is a folder"),
        ([str(tmp_path / "r2")], {"weights": str(tmp_path / "text.npz")}, "weights: "),
        ([str(tmp_path / "r3")], {"weights": str(tmp_path / "cut.npz")}, "weights: "),
        ([str(tmp_path / "r4")], {"weights": str(tmp_path / "nan.npz")}, "weights: "),
    ]
    for out, changes, message in cases:
        code = main([*base, "--out-dir", *out, *tiny_overrides(paths, **changes)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, (message, err)
        assert err[0].startswith(f"uotsel-train finetune: error: {message}"), err
    (tmp_path / "blocked" / "config.json").mkdir(parents=True)  # a write that fails
    code = main([*base, "--out-dir", str(tmp_path / "blocked"), *tiny_overrides(paths)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 3, err  # two lines of what was loaded, then the error
    assert err[-1].startswith("uotsel-train finetune: error: out_dir: cannot write")
    assert not (tmp_path / "blocked" / "metrics.jsonl").exists()
    assert (tmp_path / "afile").read_text() == "keep"
    assert not any((tmp_path / f"r{i}" / "metrics.jsonl").exists() for i in range(1, 5))
    assert (
        main(
            [
                *base,
                "--out-dir",
                str(tmp_path / "r5"),
                "--until-epoch",
                "-1",
                *tiny_overrides(paths),
            ]
        )
        == 2
    )
    assert "--until-epoch: must be >= 1, got -1" in capsys.readouterr().err
    late = [*base, "--out-dir", str(tmp_path / "r6"), "--until-epoch", "3", *tiny_overrides(paths)]
    assert main(late) == 2
    assert "--until-epoch: must be between 1 and 2, got 3" in capsys.readouterr().err


def _train_extra() -> set[str]:
    """The pip names of the ``train`` extra in setup.cfg, without their version bounds."""
    import configparser
    import pathlib

    cfg = configparser.ConfigParser()
    cfg.read(pathlib.Path(__file__).parents[1] / "setup.cfg")
    lines = cfg["options.extras_require"]["train"].split("\n")
    names = (re.match(r"[A-Za-z0-9_.-]+", line.strip()) for line in lines)
    return {m[0].lower().replace("_", "-") for m in names if m}


def test_the_missing_extra_check_covers_every_package_of_the_train_extra():
    from uotsel_train.cli import _NEEDS

    assert {pip.lower().replace("_", "-") for pip in _NEEDS.values()} == _train_extra()


def _without(modules: list[str]) -> subprocess.CompletedProcess:
    code = (
        f"import sys\nfor m in {modules!r}:\n    sys.modules[m] = None\n"
        "from uotsel_train.cli import main\nsys.exit(main(['--help']))\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


@pytest.mark.parametrize(
    "module,pip",
    [("flax", "flax"), ("orbax", "orbax-checkpoint"), ("tensorboardX", "tensorboardX")],
)
def test_without_the_train_extra_the_command_says_what_to_install(module, pip):
    done = _without([module])
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "uotsel-train: error: the training side needs the 'train' extra: "
        f"pip install 'uotsel[train]' (missing: {pip})"
    )


def test_without_any_of_the_train_extra_the_command_names_every_package():
    from uotsel_train.cli import _NEEDS

    done = _without([name.split(".")[0] for name in _NEEDS])
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "uotsel-train: error: the training side needs the 'train' extra: "
        f"pip install 'uotsel[train]' (missing: {', '.join(_NEEDS.values())})"
    )


@pytest.mark.slow
def test_resume_refuses_changed_settings(tmp_path, memory):
    _fit(memory, tmp_path, until_epoch=1)
    with pytest.raises(ValueError, match=r"lam: the run being resumed used 0.5, not 0.7"):
        _fit(memory, tmp_path, _cfg(lam=0.7), resume=True)
    with pytest.raises(ValueError, match=r"out_dir: .* already holds a run"):
        _fit(memory, tmp_path)


@pytest.mark.slow
def test_bfloat16_trains_with_float32_parameters(tmp_path, memory):
    out = _fit(memory, tmp_path, _cfg(precision="bfloat16", epochs=1, milestones=""))
    assert out.step == 2
    assert {x.dtype for x in jax.tree.leaves(out.state.params)} == {jnp.dtype(jnp.float32)}


@pytest.mark.slow
def test_unreadable_images_are_replaced_within_the_batch(tmp_path):
    root = image_folder(tmp_path / "target", 2, 4, 3)
    (tmp_path / "target" / "c1" / "9.png").write_bytes(b"not an image")
    target = data.ImageFolder(root)
    cfg = _cfg(objective="vanilla", epochs=2, batch_size=3, milestones="")
    inputs = input_pipeline.Inputs(
        target, np.arange(len(target)), np.zeros(0, np.int64), None, None, None, 0
    )
    with pytest.warns(UserWarning, match=r"replacing unreadable image .*9\.png: Unidentified"):
        out = train.fit(cfg, inputs, _backbone(), str(tmp_path / "run"), log=lambda x: None)
    assert out.step == 6


@pytest.mark.slow
def test_progress_on_a_terminal_in_a_log_and_quiet(tmp_path, memory, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    cfg = _cfg(objective="vanilla", epochs=1, batch_size=2, milestones="", progress=True)
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    _fit(memory, tmp_path / "shown", cfg)
    shown = screen.getvalue()
    # a tqdm bar: count, elapsed<ETA, and the epoch and loss beside it
    assert re.search(r"training: .* [1-4]/4 \[\d\d:\d\d<\d\d:\d\d, .*epoch=1/1, loss=", shown)
    log = io.StringIO()  # not a terminal: plain lines, the first and the last
    monkeypatch.setattr(sys, "stderr", log)
    _fit(memory, tmp_path / "log", cfg)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("training 1/4 (25%) epoch 1/1 loss ")
    assert re.fullmatch(r"training 4/4 \(100%\) epoch 1/1 loss \S+ \S+ step/s ETA 0s", lines[-1])
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    _fit(
        memory, tmp_path / "quiet", _cfg(objective="vanilla", epochs=1, batch_size=2, milestones="")
    )
    assert quiet.getvalue() == ""


def _events(run_dir):
    """``{tag: [(step, value)]}`` of the TensorBoard event files in ``run_dir``, read with the
    record framing of the format (length, CRC, payload, CRC) and the Event protocol buffer."""
    import struct

    from tensorboardX.proto import event_pb2

    tags = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (size,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + size])
            pos += 12 + size + 4
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append((event.step, value.simple_value))
    return tags


@pytest.mark.slow
def test_tensorboard_event_files_hold_every_curve(tmp_path, memory):
    pytest.importorskip("tensorboardX")
    _fit(memory, tmp_path, _cfg(objective="unlabelled", log_every_steps=1))
    tags = _events(tmp_path)
    for name in (
        "loss",
        "target_ce",
        "pseudo_ce",
        "mask_rate",
        "grad_norm",
        "lr_backbone",
        "lr_head",
        "images_per_s",
        "step_s",
    ):
        assert [step for step, _ in tags[f"train/{name}"]] == [1, 2, 3, 4, 5, 6], name
    for name in ("test_top1", "test_mean_class_acc", "best_test_top1"):
        assert [step for step, _ in tags[f"eval/{name}"]] == [2, 4, 6], name
    records = _records(tmp_path, "train")
    np.testing.assert_allclose(
        [v for _, v in tags["train/loss"]], [r["loss"] for r in records], rtol=1e-6
    )
    np.testing.assert_allclose(
        [v for _, v in tags["train/lr_head"]], [0.5] * 2 + [0.05] * 2 + [0.005] * 2, rtol=1e-6
    )
