"""The fine-tuning config: defaults, overrides, files, validation, the shipped experiments."""

import json
import re
import subprocess
import sys

import pytest

pytest.importorskip("ml_collections")

from uotsel import paper
from uotsel_train import config, configs, selected


def _valid(**changes):
    cfg = config.override(config.default(), [f"{k}={v}" for k, v in changes.items()])
    config.validate(cfg, check_files=False)
    return cfg


def test_defaults_are_the_papers_common_settings():
    cfg = config.default()
    config.validate(cfg, check_files=False)
    assert cfg.momentum == 0.9 and cfg.head_lr_multiplier == 10.0 and cfg.lr_decay == 0.1
    assert cfg.milestones == (60, 80) and cfg.epochs == 100
    assert cfg.batch_size == cfg.source_batch_size == 256 and cfg.image_size == 224
    assert cfg.crop_scale == (0.08, 1.0) and cfg.strong_view == "released"
    assert cfg.long_tail_profile == "exponential" and cfg.min_confidence == 0.0


def test_overrides_parse_by_the_fields_type():
    cfg = config.override(
        config.default(),
        ["lr=0.01", "epochs=3", "milestones=1,2", "crop_scale=(0.35, 1)", "progress=false"],
    )
    assert cfg.lr == 0.01 and cfg.epochs == 3 and cfg.milestones == (1, 2)
    assert cfg.crop_scale == (0.35, 1.0) and cfg.progress is False
    assert config.override(cfg, ["epochs=1e2"]).epochs == 100
    assert config.override(cfg, ["target=tfds:cub:train"]).target == "tfds:cub:train"


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("lrr=0.1", "lrr: unknown setting; nearest: lr"),
        ("weight_decy=1", "weight_decy: unknown setting; nearest: weight_decay"),
        ("epochs=1.5", "epochs: expected a whole number, got '1.5'"),
        ("epochs=nan", "epochs: expected a whole number, got 'nan'"),
        ("lr=fast", "lr: expected a number, got 'fast'"),
        ("progress=maybe", "progress: expected true or false, got 'maybe'"),
        ("lr", "lr: expected KEY=VALUE, got 'lr'"),
    ],
)
def test_bad_overrides_are_one_line_naming_the_key(pair, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.override(config.default(), [pair])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs: must be between 1 and 10^7, got 0"),
        ({"epochs": 10**12}, "epochs: must be between 1 and 10^7"),
        ({"eval_every": 0}, "eval_every: must be between 1 and 10^7"),
        ({"workers": -1}, "workers: must be a number of worker processes between 0 and 256"),
        ({"workers": 257}, "workers: must be a number of worker processes between 0 and 256"),
        ({"workers": 10**30}, "workers: must be a number of worker processes between 0 and 256"),
        ({"workers": 1.5}, "workers: expected a whole number, got '1.5'"),
        ({"prefetch": 0}, "prefetch: must be between 1 and 64, got 0"),
        ({"lr": 0.0}, "lr: must be in (0, inf), got 0.0"),
        ({"lr": "inf"}, "lr: must be in (0, inf), got inf"),
        ({"lam": "nan"}, "lam: must be in [0, inf), got nan"),
        ({"momentum": 1.0}, "momentum: must be in [0, 1)"),
        ({"min_confidence": 1.5}, "min_confidence: must be in [0, 1)"),
        ({"target_fraction": 0.0}, "target_fraction: must be in (0, 1)"),
        ({"long_tail": 0.5}, "long_tail: must be a finite imbalance >= 1, got 0.5"),
        ({"seed": -1}, "seed: must be between 0 and 2^31 - 1, got -1"),
        ({"seed": 2**64}, "seed: must be between 0 and 2^31 - 1"),
        ({"crop_scale": "0.5,0.2"}, "crop_scale: need two numbers 0 < low <= high <= 1"),
        ({"crop_scale": "0.5"}, "crop_scale: need two numbers"),
        ({"milestones": "80,60"}, "milestones: need ascending epochs in [0, 100]"),
        ({"milestones": "120"}, "milestones: need ascending epochs in [0, 100]"),
        ({"objective": "fixmatch"}, "objective: unknown 'fixmatch'; valid: vanilla, labelled"),
        ({"precision": "fp8"}, "precision: unknown 'fp8'"),
        ({"strong_view": "auto"}, "strong_view: unknown 'auto'; valid: released, wide"),
        ({"arch": "vit"}, "arch: unknown 'vit'"),
        ({"selection_strategy": "best"}, "selection_strategy: unknown 'best'"),
        ({"target_fraction": 0.5, "long_tail": 10}, "target_fraction: cannot be combined"),
        ({"group": -2}, "group: must be between -1 and 10^7, got -2"),
        ({"units": "ranking"}, "units: unknown 'ranking'; valid: selected, top_k"),
        ({"units": "top_k", "top_k": 0}, "top_k: must be between 1 and 10^7, got 0"),
        ({"units": "top_k", "group": 3}, "units: top_k cannot be combined with group (pick one)"),
        ({"pretrain_fraction": 0.0}, "pretrain_fraction: must be in (0, 1), got 0.0"),
        ({"pretrain_fraction": 1.5}, "pretrain_fraction: must be in (0, 1), got 1.5"),
        ({"units": "all", "group": 3}, "units: all cannot be combined with group (pick one)"),
    ],
)
def test_settings_out_of_range_are_refused_by_name(changes, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        _valid(**changes)


def test_files_are_checked_before_any_work(tmp_path):
    (tmp_path / "w.npz").write_bytes(b"x")
    base = {"weights": str(tmp_path / "w.npz"), "target": str(tmp_path), "objective": "vanilla"}
    config.validate(config.override(config.default(), [f"{k}={v}" for k, v in base.items()]))
    cases = [
        ({"weights": ""}, "weights: required; set --config.weights=..."),
        ({"weights": str(tmp_path)}, "weights: is a folder, expected a file"),
        ({"weights": str(tmp_path / "none.npz")}, "weights: file not found"),
        ({"target": str(tmp_path / "w.npz")}, "target: not a folder"),
        ({"objective": "labelled"}, "pretrain: required (the labelled objective reads it)"),
        ({"objective": "labelled", "pretrain": str(tmp_path)}, "selection: required"),
        ({"test": str(tmp_path / "missing")}, "test: not a folder"),
    ]
    for changes, message in cases:
        cfg = config.override(
            config.default(), [f"{k}={v}" for k, v in {**base, **changes}.items()]
        )
        with pytest.raises(config.ConfigError, match=re.escape(message)):
            config.validate(cfg)


def test_batch_norm_groups_must_split_every_part():
    _valid(bn_group_size=128)  # 256 + 256 in groups of 64 + 64
    _valid(objective="unlabelled", bn_group_size=192)  # 64 + 64 weak + 64 strong
    with pytest.raises(config.ConfigError, match=r"bn_group_size: 100 does not split"):
        _valid(bn_group_size=100)
    with pytest.raises(config.ConfigError, match=r"bn_group_size: 128 does not split"):
        _valid(batch_size=63, source_batch_size=193, bn_group_size=128)


def test_choices_agree_with_the_modules_that_implement_them():
    from uotsel_train import augment, models, train

    assert set(config.ARCHS) == set(models.ARCHS)
    assert set(config.STRONG_VIEWS) == set(augment.POLICIES)
    assert set(config.PRECISIONS) == set(train.DTYPES)


def test_a_saved_config_loads_back_identically(tmp_path):
    cfg = _valid(lr=0.02, milestones="3,4", crop_scale="0.3,0.9", target="tfds:cub")
    config.save(cfg, str(tmp_path / "config.json"), {"devices": 1})
    again = config.load(str(tmp_path / "config.json"))
    assert config.to_dict(again) == config.to_dict(cfg)
    assert again.milestones == (3, 4) and isinstance(again.crop_scale, tuple)


def test_a_user_file_with_get_config(tmp_path):
    (tmp_path / "mine.py").write_text(
        "def get_config(arg=None):\n    return {'lr': float(arg or 0.5), 'epochs': 7}\n"
    )
    cfg = config.load(f"{tmp_path / 'mine.py'}:0.25")
    assert cfg.lr == 0.25 and cfg.epochs == 7 and cfg.arch == "resnet18"
    (tmp_path / "typo.py").write_text("def get_config():\n    return {'lrate': 1.0}\n")
    with pytest.raises(config.ConfigError, match=r"lrate: unknown setting in .*nearest: lr"):
        config.load(str(tmp_path / "typo.py"))
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(config.ConfigError, match=r"config: .* defines no get_config"):
        config.load(str(tmp_path / "none.py"))
    (tmp_path / "typed.json").write_text(json.dumps({"config": {"epochs": "ten"}}))
    with pytest.raises(config.ConfigError, match=r"epochs: expected int in .*got str"):
        config.load(str(tmp_path / "typed.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(config.ConfigError, match=r"config: cannot read"):
        config.load(str(tmp_path / "bad.json"))
    with pytest.raises(config.ConfigError, match=r"config: 'table1_resnet' is neither .*nearest"):
        config.load("table1_resnet")


@pytest.mark.parametrize("name", list(configs.NAMES))
def test_every_shipped_config_loads_and_validates(name):
    cfg = config.load(name)
    config.validate(cfg, check_files=False)
    # Every shipped experiment trains on UOT's selection, but the one that reads none.
    assert cfg.selection_strategy == ("" if cfg.units == "all" else "uot")


def test_shipped_configs_follow_the_paper():
    r18 = config.load("table1_resnet18")
    assert (r18.arch, r18.lr, r18.weight_decay, r18.lam, r18.bn_group_size) == (
        "resnet18",
        0.003,
        1e-4,
        0.3,
        0,
    )
    moco = config.load("table1_mocov2_labelled:random")
    assert (moco.arch, moco.lr, moco.weight_decay, moco.lam) == ("resnet50", 0.01, 1e-4, 1.0)
    assert moco.selection_strategy == "random" and moco.bn_group_size == 128  # 64 + 64
    unl = config.load("table1_mocov2_unlabelled:greedy_ot")
    assert (unl.objective, unl.weight_decay, unl.bn_group_size) == ("unlabelled", 1e-5, 192)
    vanilla = config.load("table1_mocov2_labelled:finetune")
    assert vanilla.objective == "vanilla" and vanilla.bn_group_size == 64
    fig3a = config.load("fig3a_num_selected:150")
    assert (fig3a.units, fig3a.top_k) == ("top_k", 150)
    low = config.load("fig3b_low_data:0.2,finetune,mocov2_labelled")
    assert (low.target_fraction, low.objective, low.arch) == (0.2, "vanilla", "resnet50")
    assert config.load("table3_long_tail").long_tail == 10.0
    assert config.load("fig4b_domain_gap:7").group == 7


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("fig3a_num_selected:12.5", "expected a whole number, got '12.5'"),
        ("fig3a_num_selected:greedy_ot", "the number of selected classes is an experiment on"),
        ("fig4b_domain_gap:3,finetune", "the score groups come from a UOT selection file"),
        ("table1_resnet18:uot,uot", "unexpected 'uot'"),
        ("table1_resnet18:best", "unexpected 'best'"),
    ],
)
def test_bad_experiment_arguments(spec, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(spec)


def test_every_setting_is_documented():
    with open("docs/finetune.md", encoding="utf-8") as fh:
        text = fh.read()
    for key in config.FIELDS:
        assert f"| `{key}` |" in text, key
    for name in configs.NAMES:
        assert f"{name}" in text, name


def test_a_bad_config_is_refused_without_loading_jax(tmp_path):
    """The command checks the whole config before JAX, Flax or any data loads."""
    code = (
        "import sys\n"
        "from uotsel_train.cli import main\n"
        f"rc = main(['finetune', '--config', 'table1_resnet18', '--out-dir', {str(tmp_path)!r},"
        " '--config.lrr=0.1'])\n"
        "assert rc == 2, rc\n"
        "heavy = [m for m in ('jax', 'flax', 'optax', 'tensorflow_datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == (
        "uotsel-train finetune: error: lrr: unknown setting; nearest: lr"
    )
    assert not list(tmp_path.iterdir())


def test_an_old_name_in_a_saved_config_loads_under_the_new_one(tmp_path, caplog):
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"config": {"objective": "unlabelled", "threshold": 0.7}}))
    with caplog.at_level("INFO", logger="uotsel_train"):
        cfg = config.load(str(saved))
    assert cfg.min_confidence == 0.7
    assert "threshold: renamed min_confidence" in caplog.text
    with pytest.raises(config.ConfigError, match=r"^threshold: renamed min_confidence$"):
        config.override(config.default(), ["threshold=0.7"])


def test_top_k_as_in_the_library_and_the_files_selected_units_by_name(tmp_path, caplog):
    cfg = config.default()
    assert (cfg.units, cfg.top_k) == ("selected", paper.TOP_K_CLASSES)
    for pair in ("top_k=150", "top_k=0"):
        with pytest.raises(
            config.ConfigError, match=r"^top_k: read only with units=top_k; add --config.units="
        ):
            config.override(cfg, [pair])
    assert config.override(cfg, ["units=top_k", "top_k=150"]).top_k == 150
    saved = tmp_path / "config.json"
    for old, units, top_k in [(0, "selected", paper.TOP_K_CLASSES), (150, "top_k", 150)]:
        saved.write_text(json.dumps({"config": {"top_k": old, "group": -1}}))
        with caplog.at_level("INFO", logger="uotsel_train"):
            loaded = config.load(str(saved))
        assert (loaded.units, loaded.top_k) == (units, top_k)
        assert f"top_k: {old} in {saved} is read as units={units}" in caplog.text
        config.save(loaded, str(saved))
        again = config.load(str(saved))
        assert (again.units, again.top_k) == (units, top_k)


def test_the_units_a_run_trains_on():
    record = {"selected": [4, 2], "ranking": [4, 2, 0, 1, 3], "groups": [[4, 2, 0], [1, 3]]}
    assert selected.units(record).units.tolist() == [4, 2]
    assert selected.units(record, top_k=3).units.tolist() == [4, 2]
    assert selected.units(record, units="top_k", top_k=3).units.tolist() == [4, 2, 0]
    assert selected.units(record, units="top_k", top_k=5, group=1).units.tolist() == [1, 3]
    for top_k in (0, 6):
        with pytest.raises(ValueError, match=f"^top_k: {top_k} is not between 1 and the 5 ranked"):
            selected.units(record, units="top_k", top_k=top_k)
    with pytest.raises(ValueError, match=r"^units: unknown 'all'; valid: selected, top_k"):
        selected.units(record, units="all")


def test_the_command_lines_seed_bound_is_the_configs():
    from uotsel_train.commands import MAX_SEED

    config.validate(config.override(config.default(), [f"seed={MAX_SEED}"]), check_files=False)
    with pytest.raises(config.ConfigError, match=r"^seed: "):
        config.validate(
            config.override(config.default(), [f"seed={MAX_SEED + 1}"]), check_files=False
        )


def test_evaluation_schedules():
    from uotsel_train import train

    every = config.override(config.default(), ["epochs=100", "eval_every=10"])
    released = config.override(every, ["eval_schedule=released"])
    assert [e for e in range(1, 101) if train.evaluates_after(e, every)] == list(range(10, 101, 10))
    assert [e for e in range(1, 101) if train.evaluates_after(e, released)] == list(
        range(1, 92, 10)
    )
    odd = config.override(config.default(), ["epochs=25", "eval_every=10"])
    assert [e for e in range(1, 26) if train.evaluates_after(e, odd)] == [10, 20, 25]
    with pytest.raises(config.ConfigError, match=r"^eval_schedule: unknown 'weekly'"):
        config.validate(config.override(odd, ["eval_schedule=weekly"]), check_files=False)


def test_the_paper_arms_of_fig3a_and_table1():
    rand = config.load("fig3a_num_selected:150,random")
    assert rand.selection_strategy == "random" and rand.top_k == 150
    assert config.load("fig3a_num_selected:50").selection_strategy == "uot"
    with pytest.raises(ValueError, match="uot and random arms"):
        config.load("fig3a_num_selected:50,greedy_ot")
    assert config.load("table1_resnet18:label").selection_strategy == "label"
