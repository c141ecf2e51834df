"""The fine-tuning settings: one flat ``ml_collections.ConfigDict``, its defaults, its checks,
command-line overrides, and the file a run saves to be repeated.

Every setting a run depends on lives here, data paths included, so that a run folder's
``config.json`` is the whole recipe: ``uotsel-train finetune --config runs/x/config.json``
repeats the run. :data:`FIELDS` is the single home of the defaults and their meaning;
``docs/finetune.md`` lists them. The defaults are the paper's common settings (supervised
ResNet18, labelled pre-training data).

Loading (:func:`load`) takes a shipped experiment (``table1_resnet18:uot``, see
:mod:`uotsel_train.configs`), any Python file with ``get_config(arg)`` (``my.py:arg``), or a
saved ``config.json``. Overrides (:func:`override`) are ``key=value`` strings, written
``--config.key=value`` on the command line. :func:`validate` checks every setting and the
files they name, without importing JAX, so a bad config is refused in about a second.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import logging
import math
import os
from typing import Any, NamedTuple

import ml_collections

from uotsel import paper
from uotsel_train import objectives
from uotsel_train.streams import LONG_TAIL_PROFILES

__all__ = [
    "FIELDS",
    "MAX_WORKERS",
    "check_workers",
    "Field",
    "ConfigError",
    "default",
    "load",
    "override",
    "save",
    "to_dict",
    "validate",
]


class ConfigError(ValueError):
    """A bad setting; the message starts with the setting's name."""


class Field(NamedTuple):
    default: Any
    help: str


FIELDS: dict[str, Field] = {
    # what is trained
    "arch": Field("resnet18", "backbone: resnet18, resnet34, resnet50 (tiny: tests, demo)"),
    "weights": Field("", "Flax weights from 'uotsel-train convert' (the backbone is loaded)"),
    "objective": Field(
        "labelled",
        "vanilla, labelled (eq. 6), unlabelled (eq. 7) or co_tuning (the Co-Tuning baseline)",
    ),
    "lam": Field(0.3, "lambda, weight of the pre-training term"),
    "co_tuning_relationship": Field(
        "reverse",
        "co_tuning's p(y_s | y_t): reverse (the Co-Tuning release's: a calibrated classifier "
        "from source probabilities to target labels) or direct (per-class mean)",
    ),
    "min_confidence": Field(
        0.0, "eq. 7: least confidence of a pseudo-label for its image to count; 0: every image"
    ),
    "strong_view": Field("released", "eq. 7 strong view: released (the paper's code) or wide"),
    "bn_group_size": Field(
        0, "BatchNorm statistics per group of N images of a step; 0: the whole step batch"
    ),
    "precision": Field("float32", "float32, or bfloat16 (mixed; float32 parameters)"),
    # optimiser
    "lr": Field(0.003, "backbone learning rate (heads: lr x head_lr_multiplier)"),
    "head_lr_multiplier": Field(
        10.0, "learning-rate factor of the freshly drawn heads (a kept pre-trained one: 1)"
    ),
    "weight_decay": Field(1e-4, "L2 added to the gradient (coupled, torch style), all params"),
    "momentum": Field(0.9, "SGD momentum (Nesterov)"),
    "milestones": Field((60, 80), "epochs at which the learning rate is multiplied by lr_decay"),
    "lr_decay": Field(0.1, "learning-rate factor at each milestone"),
    "epochs": Field(100, "passes over the target training set (drop last)"),
    # batches and views
    "batch_size": Field(256, "target images per step, all devices together"),
    "source_batch_size": Field(256, "selected pre-training images per step"),
    "image_size": Field(224, "training and test crop (test: resize to size*256/224 first)"),
    "crop_scale": Field((0.08, 1.0), "area range of the random resized crop"),
    # data
    "target": Field("", "target training data: an image folder or tfds:NAME[:SPLIT]"),
    "test": Field("", "target test data (same classes, by name); '' : no test evaluation"),
    "pretrain": Field("", "pre-training data (not read by the vanilla objective)"),
    "data_dir": Field("", "TFDS data directory ('' : TFDS's default)"),
    "target_fraction": Field(1.0, "share of every target class kept (Fig. 3b: 0.2-1.0)"),
    "long_tail": Field(1.0, "long-tail imbalance of the target set (Table 3: 10); 1: none"),
    "long_tail_profile": Field("exponential", "exponential (Cui et al. 2019) or power"),
    "val_fraction": Field(0.0, "share of every target class held out for validation"),
    "subset_seed": Field(0, "seed of the target subset and the validation split"),
    # selection
    "selection": Field("", "'uotsel select' JSON file (its units, ranking and groups)"),
    "unit_ids": Field("", "per-sample unit ids (.npy, or a .npz with 'assignment'); '' : labels"),
    "selection_strategy": Field("", "refuse a selection file made by another strategy"),
    "units": Field(
        "selected",
        "the file's units to train on: selected (its 'selected' list) or top_k (the first "
        "top_k of its ranking); all: every pre-training unit, no selection file",
    ),
    "top_k": Field(
        paper.TOP_K_CLASSES,
        "with units=top_k: how many units of the file's ranking, best first (Fig. 3a), as "
        "uotsel.select's top_k",
    ),
    "group": Field(-1, "train on one score group of the file (Fig. 4b: 0-9); -1: by units"),
    "pretrain_fraction": Field(
        1.0,
        "share of every pre-training unit's images trained on, drawn with subset_seed (with "
        "units=all and 0.5: half of every ImageNet class, the paper's section 4.4)",
    ),
    "samples": Field(
        "",
        "per-sample list: the pre-training sample indices 'uotsel select --per-sample "
        "--samples-out' writes (.npy); train on those samples instead of whole units",
    ),
    # evaluation, checkpoints, machinery
    "eval_every": Field(10, "epochs between evaluations"),
    "eval_schedule": Field(
        "every",
        "every: after epochs eval_every, 2 eval_every, ... and the last; released: after "
        "epochs 1, 1 + eval_every, ..., as the released top-1 scripts (not after the last)",
    ),
    "log_every_steps": Field(10, "steps between training records (and at every epoch's end)"),
    "checkpoint_every": Field(1, "epochs between checkpoints (and always after the last)"),
    "seed": Field(0, "heads, data orders and every augmentation"),
    "workers": Field(
        4, "image decoding worker processes per training process, 0-256 (0: in the process)"
    ),
    "prefetch": Field(2, "batches each worker keeps ready ahead of the running step, 1-64"),
    "progress": Field(True, "a progress bar on a terminal, a line every 30 s otherwise"),
}

# Choices of modules that import JAX or PIL, written here so that validation imports neither;
# the tests check that they agree with those modules.
PRECISIONS = ("float32", "bfloat16")
STRONG_VIEWS = ("released", "wide")
EVAL_SCHEDULES = ("every", "released")
ARCHS = ("resnet18", "resnet34", "resnet50", "tiny")
STRATEGIES = ("", "uot", "greedy_ot", "nearest", "random", "label")
UNITS = ("selected", "top_k", "all")
CO_TUNING_RELATIONSHIPS = ("reverse", "direct")
MAX_WORKERS = 256  # worker processes: beyond any host's useful count
MAX_PREFETCH = 64
_PATHS = (
    "weights",
    "target",
    "test",
    "pretrain",
    "data_dir",
    "selection",
    "unit_ids",
    "samples",
)


def default() -> ml_collections.ConfigDict:
    """A fresh config holding every field at its default (types locked, keys locked)."""
    cfg = ml_collections.ConfigDict({k: f.default for k, f in FIELDS.items()})
    cfg.lock()
    return cfg


def _nearest(key: str) -> str:
    close = difflib.get_close_matches(key, list(FIELDS), n=3, cutoff=0.5)
    return f"; nearest: {', '.join(close)}" if close else ""


def _parse(key: str, text: str) -> Any:
    """``text`` as a value of ``key``'s type."""
    kind = type(FIELDS[key].default)
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {text!r}")
    if kind is str:
        return text
    if kind is tuple:
        body = text.strip().strip("()[]")
        parts = [p for p in (s.strip() for s in body.split(",")) if p]
        item = type(FIELDS[key].default[0])
        return tuple(_number(key, p, item) for p in parts)
    return _number(key, text, kind)


def _number(key: str, text: str, kind: type) -> Any:
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        value = text.strip()
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {text!r}") from None
    if kind is int:
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise ConfigError(f"{key}: expected a whole number, got {text!r}")
        return int(value)
    return float(value)


def override(cfg: ml_collections.ConfigDict, pairs: list[str]) -> ml_collections.ConfigDict:
    """A copy of ``cfg`` with ``key=value`` strings applied (values parsed by the field's
    type: ``milestones=30,40``, ``crop_scale=0.35,1``, ``progress=false``).

    Raises:
      ConfigError: an unknown key (naming the nearest valid ones) or a value of the wrong type.
    """
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.lock()
    given = set()
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"{key or pair}: expected KEY=VALUE, got {pair!r}")
        if key in RENAMED:
            raise ConfigError(f"{key}: renamed {RENAMED[key]}")
        if key not in FIELDS:
            raise ConfigError(f"{key}: unknown setting{_nearest(key)}")
        cfg[key] = _parse(key, text)
        given.add(key)
    if "top_k" in given and cfg.units != "top_k":
        raise ConfigError(
            "top_k: read only with units=top_k; add --config.units=top_k (units=selected, the "
            "default, trains on the file's 'selected' units)"
        )
    return cfg


# Settings renamed since runs were first saved: old name -> new name. A saved config.json
# with an old name loads under the new one, with a log line; on the command line the old name
# is refused with the new one.
RENAMED = {"threshold": "min_confidence"}


def _before_units(record: dict, origin: str) -> dict:
    """A mapping from before the ``units`` setting, when ``top_k`` 0 meant the file's
    ``selected`` units and any other ``top_k`` the first ``top_k`` of its ranking, in today's
    settings (with a log line); any other mapping unchanged."""
    top_k = record.get("top_k")
    if "units" in record or isinstance(top_k, bool) or not isinstance(top_k, int):
        return record
    units = "selected" if top_k == 0 else "top_k"
    logging.getLogger("uotsel_train").info(
        "top_k: %d in %s is read as units=%s (top_k 0 was the file's selected units)",
        top_k,
        origin,
        units,
    )
    record = {**record, "units": units}
    if top_k == 0:
        del record["top_k"]
    return record


def _from_mapping(record: dict, origin: str) -> ml_collections.ConfigDict:
    record = _before_units(record, origin)
    cfg = default()
    for key, value in record.items():
        if key in RENAMED and RENAMED[key] not in record:
            logging.getLogger("uotsel_train").info(
                "%s: renamed %s; the value in %s is read as such", key, RENAMED[key], origin
            )
            key = RENAMED[key]
        if key not in FIELDS:
            raise ConfigError(f"{key}: unknown setting in {origin}{_nearest(key)}")
        want = type(FIELDS[key].default)
        if want is tuple and isinstance(value, list | tuple):
            value = tuple(value)
        elif want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ConfigError(
                f"{key}: expected {want.__name__} in {origin}, got {type(value).__name__}"
            )
        cfg[key] = value
    return cfg


def _python_config(path: str, arg: str | None, origin: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("_uotsel_train_user_config", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise ConfigError(f"config: cannot run {path}: {type(err).__name__}: {err}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config: {path} defines no get_config()")
    try:
        made = module.get_config(arg) if arg is not None else module.get_config()
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config: {origin}: {err}") from None
    return _from_mapping(dict(made.items() if hasattr(made, "items") else made), origin)


def load(spec: str) -> ml_collections.ConfigDict:
    """The config named by ``spec``: a shipped experiment ``NAME[:ARG]`` (``uotsel-train
    configs`` lists them), a Python file ``PATH.py[:ARG]`` whose ``get_config(arg)`` returns a
    mapping of settings, or a run's saved ``config.json``.

    Raises:
      ConfigError: unknown name, unreadable file, unknown keys or values of the wrong type.
    """
    from uotsel_train import configs

    path, _, arg = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    arg = arg or None
    if path.endswith(".json"):
        if os.path.isdir(path) or not os.path.exists(path):
            raise ConfigError(f"config: not a file: {path}")
        try:
            with open(path) as fh:
                record = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"config: cannot read {path}: {err}") from None
        if not isinstance(record, dict):
            raise ConfigError(f"config: {path} does not hold a mapping of settings")
        return _from_mapping(record.get("config", record), path)
    if path.endswith(".py"):
        if not os.path.isfile(path):
            raise ConfigError(f"config: not a file: {path}")
        return _python_config(path, arg, spec)
    if path not in configs.NAMES:
        close = difflib.get_close_matches(path, list(configs.NAMES), n=3, cutoff=0.4)
        hint = f"; nearest: {', '.join(close)}" if close else ""
        raise ConfigError(
            f"config: {path!r} is neither a shipped config, a .py file nor a .json file{hint}"
        )
    return _python_config(configs.path_of(path), arg, spec)


def check_workers(value: Any, name: str) -> None:
    """Refuse a worker-process count outside ``0 ... MAX_WORKERS`` (the message starts with
    ``name``): the one rule for ``workers`` and ``--workers`` of every command."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WORKERS:
        raise ConfigError(
            f"{name}: must be a number of worker processes between 0 and {MAX_WORKERS} "
            f"(0: decode in this process), got {value!r}"
        )


def _check_ranges(cfg: ml_collections.ConfigDict) -> None:
    for key in ("epochs", "batch_size", "source_batch_size", "image_size", "eval_every"):
        if not 1 <= cfg[key] <= 10**7:
            raise ConfigError(f"{key}: must be between 1 and 10^7, got {cfg[key]}")
    for key in ("checkpoint_every", "log_every_steps"):
        if not 1 <= cfg[key] <= 10**4:
            raise ConfigError(f"{key}: must be between 1 and 10^4, got {cfg[key]}")
    check_workers(cfg.workers, "workers")
    if not 1 <= cfg.prefetch <= MAX_PREFETCH:
        raise ConfigError(f"prefetch: must be between 1 and {MAX_PREFETCH}, got {cfg.prefetch}")
    for key, low in (("bn_group_size", 0), ("top_k", 1), ("group", -1)):
        if not low <= cfg[key] <= 10**7:
            raise ConfigError(f"{key}: must be between {low} and 10^7, got {cfg[key]}")
    if not 0 <= cfg.seed < 2**31 or not 0 <= cfg.subset_seed < 2**31:
        bad = "seed" if not 0 <= cfg.seed < 2**31 else "subset_seed"
        raise ConfigError(f"{bad}: must be between 0 and 2^31 - 1, got {cfg[bad]}")
    for key, low, high, closed in (
        ("lr", 0.0, math.inf, False),
        ("head_lr_multiplier", 0.0, math.inf, False),
        ("weight_decay", 0.0, math.inf, True),
        ("lam", 0.0, math.inf, True),
        ("momentum", 0.0, 1.0, True),
        ("lr_decay", 0.0, 1.0, False),
        ("min_confidence", 0.0, 1.0, True),
        ("target_fraction", 0.0, 1.0, False),
        ("val_fraction", 0.0, 1.0, True),
        ("pretrain_fraction", 0.0, 1.0, False),
    ):
        value = cfg[key]
        ok = math.isfinite(value) and (low <= value if closed else low < value) and value <= high
        if not ok or (key in ("momentum", "min_confidence", "val_fraction") and value >= 1):
            shown = "[" if closed else "("
            raise ConfigError(f"{key}: must be in {shown}{low:g}, {high:g}), got {value}")
    if not (math.isfinite(cfg.long_tail) and cfg.long_tail >= 1):
        raise ConfigError(f"long_tail: must be a finite imbalance >= 1, got {cfg.long_tail}")
    if cfg.target_fraction < 1 and cfg.long_tail > 1:
        raise ConfigError("target_fraction: cannot be combined with long_tail (pick one)")
    scale = cfg.crop_scale
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"crop_scale: need two numbers 0 < low <= high <= 1, got {scale}")
    ms = cfg.milestones
    if any(not 0 <= m <= cfg.epochs for m in ms) or list(ms) != sorted(ms):
        raise ConfigError(f"milestones: need ascending epochs in [0, {cfg.epochs}], got {ms}")


def _check_choices(cfg: ml_collections.ConfigDict) -> None:
    for key, valid in (
        ("arch", ARCHS),
        ("objective", tuple(objectives.REGISTRY)),
        ("precision", PRECISIONS),
        ("strong_view", STRONG_VIEWS),
        ("eval_schedule", EVAL_SCHEDULES),
        ("long_tail_profile", LONG_TAIL_PROFILES),
        ("selection_strategy", STRATEGIES),
        ("units", UNITS),
        ("co_tuning_relationship", CO_TUNING_RELATIONSHIPS),
    ):
        if cfg[key] not in valid:
            shown = ", ".join(v or "''" for v in valid)
            raise ConfigError(f"{key}: unknown {cfg[key]!r}; valid: {shown}")


def _check_data(cfg: ml_collections.ConfigDict) -> None:
    objective = objectives.get(cfg.objective)
    needs_source = objective.needs_source
    required = ["weights", "target"] + (["pretrain", "selection"] if needs_source else [])
    if cfg.samples or cfg.units == "all":
        required = [key for key in required if key != "selection"]
    for key in required:
        if not cfg[key]:
            why = (
                f" (the {cfg.objective} objective reads it)"
                if key in ("pretrain", "selection")
                else ""
            )
            raise ConfigError(f"{key}: required{why}; set --config.{key}=...")
    for key in _PATHS:
        path = cfg[key]
        if not path or path.startswith("tfds:"):
            continue
        if key in ("target", "test", "pretrain", "data_dir"):
            if not os.path.isdir(path):
                raise ConfigError(f"{key}: not a folder: {path}")
        elif os.path.isdir(path):
            raise ConfigError(f"{key}: is a folder, expected a file: {path}")
        elif not os.path.isfile(path):
            raise ConfigError(f"{key}: file not found: {path}")


def _check_combinations(cfg: ml_collections.ConfigDict) -> None:
    if cfg.units != "selected" and cfg.group >= 0:
        raise ConfigError(f"units: {cfg.units} cannot be combined with group (pick one)")
    if cfg.units == "all" and cfg.selection:
        raise ConfigError("units: all trains on every pre-training unit; it reads no selection")
    if cfg.samples and (cfg.units != "selected" or cfg.group >= 0):
        chosen = "units=top_k" if cfg.units != "selected" else f"group={cfg.group}"
        raise ConfigError(
            f"samples: a per-sample list is trained on as it is; it cannot be combined with "
            f"{chosen} (pick one)"
        )
    objective = objectives.get(cfg.objective)
    if cfg.bn_group_size:
        views = len(objective.source_views)
        total = cfg.batch_size + views * cfg.source_batch_size
        parts = [cfg.batch_size] + ([cfg.source_batch_size] if views else [])
        groups = total // cfg.bn_group_size
        if total % cfg.bn_group_size or any(p % groups for p in parts):
            raise ConfigError(
                f"bn_group_size: {cfg.bn_group_size} does not split a step of {total} images "
                f"({' + '.join(map(str, parts))} per view) into equal groups"
            )


def validate(cfg: ml_collections.ConfigDict, *, check_files: bool = True) -> None:
    """Check every setting (types, ranges, choices, combinations) and, with ``check_files``,
    that the files and folders it names exist.

    Raises:
      ConfigError: one line starting with the first bad setting's name.
    """
    unknown = set(cfg.keys()) - set(FIELDS)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{key}: unknown setting{_nearest(key)}")
    _check_choices(cfg)
    _check_ranges(cfg)
    _check_combinations(cfg)
    if check_files:
        _check_data(cfg)


def save(cfg: ml_collections.ConfigDict, path: str, extra: dict | None = None) -> None:
    """Write ``cfg`` as JSON (``{"config": {...}, **extra}``), atomically; :func:`load`
    reads it back."""
    from uotsel.io import write_json

    write_json(path, {"config": to_dict(cfg), **(extra or {})})


def to_dict(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Plain JSON-ready values (tuples as lists), in :data:`FIELDS` order."""
    return {k: list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k] for k in FIELDS}
