"""Every shipped experiment config runs on tiny data; the grid search selects on validation."""

import json

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

from train_helpers import tiny_overrides, tiny_project

from uotsel_train import config, configs
from uotsel_train.cli import main


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    return root, tiny_project(root, target_per_class=6, pretrain_classes=10, per_class=2)


@pytest.mark.parametrize("name", list(configs.NAMES))
@pytest.mark.slow
def test_each_experiment_config_trains_one_epoch_on_tiny_data(project, name, capsys):
    root, paths = project
    cfg = config.load(name)
    extra = {"epochs": 1, "milestones": "", "batch_size": 4, "source_batch_size": 2}
    if cfg.bn_group_size:  # the released 4-replica grouping, at this batch: 2 groups
        views = {"vanilla": 0, "labelled": 1, "unlabelled": 2}[cfg.objective]
        extra["bn_group_size"] = (4 + 2 * views) // 2
    if cfg.units == "top_k":
        extra["top_k"] = 3  # of the 10 ranked pre-training classes
    if cfg.target_fraction < 1 or cfg.long_tail > 1:
        extra["batch_size"] = 2
    if cfg.units == "all":
        extra["selection"] = ""  # reads no selection
    out = root / name
    args = ["finetune", "--config", name, "--out-dir", str(out), *tiny_overrides(paths, **extra)]
    assert main(args) == 0, capsys.readouterr().err
    from uotsel_train import metrics

    lines = metrics.read(str(out), "train")
    assert len(lines) == 1 and np.isfinite(lines[0]["loss"])
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["objective"] == cfg.objective and saved["group"] == cfg.group
    assert saved["long_tail"] == cfg.long_tail and saved["units"] == cfg.units
    assert saved["top_k"] == extra.get("top_k", config.FIELDS["top_k"].default)


def test_configs_command_lists_and_shows(capsys):
    assert main(["configs"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(configs.NAMES)
    assert main(["configs", "fig4b_domain_gap:3", "--config.lr=0.5"]) == 0
    shown = dict(line.split(" = ", 1) for line in capsys.readouterr().out.splitlines())
    assert shown["group"] == "3" and shown["lr"] == "0.5" and set(shown) == set(config.FIELDS)
    assert main(["configs", "fig4b_domain_gap:x,y"]) == 2
    assert "unexpected 'x'" in capsys.readouterr().err


@pytest.mark.slow
def test_grid_selects_on_validation_and_reports_test(project, capsys):
    root, paths = project
    out = root / "grid"
    args = ["grid", "--config", "table1_resnet18:finetune", "--out-dir", str(out)]
    args += tiny_overrides(paths, epochs=1, milestones="", batch_size=2)
    args += ["--lrs", "0.01,0.1", "--seeds", "0,1", "--config.val_fraction=0.34"]
    assert main(args) == 0, capsys.readouterr().err
    record = json.loads((out / "grid.json").read_text())
    assert record["select_on"] == "val" and [r["lr"] for r in record["results"]] == [0.01, 0.1]
    for row in record["results"]:
        assert len(row["val_top1"]) == len(row["test_top1"]) == 2
        assert row["val_top1_mean"] == pytest.approx(np.mean(row["val_top1"]))
        for seed, val in zip((0, 1), row["val_top1"], strict=True):
            folder = out / f"lr{row['lr']:g}_wd{row['weight_decay']:g}_lam{row['lam']:g}"
            result = json.loads((folder / f"seed{seed}" / "result.json").read_text())
            assert result["last"]["val_top1"] == val  # the figure the run measured
    best = max(record["results"], key=lambda r: r["val_top1_mean"])
    assert record["chosen"] == best
    assert "chosen on val: lr" in capsys.readouterr().out
    on_test = root / "grid_test"
    args = [a if a != str(out) else str(on_test) for a in args] + ["--select-on-test"]
    assert main(args) == 0
    record = json.loads((on_test / "grid.json").read_text())
    assert record["chosen"] == max(record["results"], key=lambda r: r["test_top1_mean"])


def test_the_two_mocov2_finetune_baselines_differ_only_in_weight_decay():
    """docs/finetune.md: Table 1(b)'s one MoCo-v2 fine-tuning baseline, from either config."""
    labelled = config.load("table1_mocov2_labelled:finetune")
    unlabelled = config.load("table1_mocov2_unlabelled:finetune")
    differ = {k for k in config.FIELDS if getattr(labelled, k) != getattr(unlabelled, k)}
    assert differ == {"weight_decay"}
    assert (labelled.weight_decay, unlabelled.weight_decay) == (1e-4, 1e-5)
