"""torchvision / MoCo-v2 checkpoints to Flax variables for :mod:`uotsel_train.models`.

Layouts handled:

- a torchvision ResNet ``state_dict`` (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...,
  ``fc.weight``);
- a MoCo-v2 checkpoint whose ``state_dict`` keys are ``module.encoder_q.<torchvision names>``
  plus the MLP head ``module.encoder_q.fc.0/.2``; the key encoder (``module.encoder_k.*``) and
  the queue are dropped.

Conversions: conv ``OIHW -> HWIO``; linear weights transposed; BatchNorm ``weight/bias`` to
``scale/bias`` parameters and ``running_mean/running_var`` to ``mean/var`` batch statistics;
``num_batches_tracked`` dropped. Files: ``.npz`` with the torch key names (read without torch,
never unpickled), or ``.pth`` / ``.pth.tar`` through ``torch.load(weights_only=True)`` when torch
is installed.

Reading a file never raises anything but a one-line ``ValueError`` for a bad file: it starts with
``checkpoint:`` (:func:`load_state_dict`) or ``weights:`` (:func:`load_variables`) and names the
path and the problem (a directory, a missing or empty file, a truncated or foreign file, a key
that is missing, not a numeric array, or holds NaN or infinite values). Arrays are read with
``allow_pickle=False`` only.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from uotsel_train import models

__all__ = [
    "ConversionError",
    "Converted",
    "convert_state_dict",
    "load_state_dict",
    "load_variables",
    "save_npz",
    "save_variables",
]

MOCO_PREFIX = "module.encoder_q."


class ConversionError(ValueError):
    """A checkpoint that does not match the architecture; the message lists every problem."""


class Converted(dict):
    """``{"backbone": {"params", "batch_stats"}, "fc": {...} or None, "moco_head": {...} or
    None}`` as plain nested dicts of numpy arrays."""


def _check_file(path: str, what: str) -> None:
    """Raise a one-line ``ValueError`` unless ``path`` is a non-empty regular file."""
    if os.path.isdir(path):
        raise ValueError(f"{what}: is a directory, not a file: {path}")
    if not os.path.exists(path):
        raise ValueError(f"{what}: file not found: {path}")
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise ValueError(f"{what}: cannot read {path}: {_first_line(err)}") from None
    if size == 0:
        raise ValueError(f"{what}: empty file: {path}")


def _read_npz(path: str, what: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, read without pickle, as ``{key: array}``; any
    problem is one ``ValueError`` starting with ``what``."""
    _check_file(path, what)
    not_npz = f"{what}: {path} is not an .npz archive (a truncated or different file)"
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, ValueError):
        # ValueError: neither a zip nor an .npy header, which numpy would try to unpickle.
        raise ValueError(not_npz) from None
    except OSError as err:
        raise ValueError(f"{what}: cannot read {path}: {_first_line(err)}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{what}: {path} holds a single .npy array, not an .npz archive")
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                value = archive[key]
            except ValueError as err:
                if "Object arrays" in str(err):  # would need pickle: never loaded
                    raise ValueError(
                        f"{what}: key {key!r} in {path} holds Python objects, not a numeric array"
                    ) from None
                raise ValueError(f"{what}: {path} is damaged (key {key!r})") from None
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError) as err:
                raise ValueError(
                    f"{what}: {path} is damaged (key {key!r}: {_first_line(err)})"
                ) from None
            arrays[key] = _check_array(value, key, path, what)
    if not arrays:
        raise ValueError(f"{what}: {path} holds no arrays")
    return arrays


def _check_array(value: Any, key: str, path: str, what: str) -> np.ndarray:
    """A numeric array with only finite values, or a one-line ``ValueError`` naming ``key``."""
    value = np.asarray(value)
    if value.dtype.kind not in "fiub":
        raise ValueError(
            f"{what}: key {key!r} in {path} is not a numeric array (dtype {value.dtype})"
        )
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ValueError(f"{what}: {path} holds non-finite values in {key}")
    return value


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a checkpoint into ``{torch key: array}`` (see the module docstring for formats).

    Raises:
      ValueError: one line starting with ``checkpoint:`` for a directory, a missing, empty,
        truncated or foreign file, no arrays, a non-numeric array, or NaN/inf values (named
        by key).
    """
    if path.endswith(".npz"):
        return _read_npz(path, "checkpoint")
    _check_file(path, "checkpoint")
    if path.endswith((".pth", ".pth.tar", ".pt", ".tar")):
        try:
            import torch
        except ImportError:
            raise ValueError(
                f"checkpoint: reading {os.path.basename(path)} needs torch "
                "(pip install torch), or export it to .npz first"
            ) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch's own text may suggest unpickling: not repeated
            raise ValueError(
                f"checkpoint: {path} cannot be read as tensors only ({type(err).__name__})"
            ) from None
        if isinstance(obj, Mapping) and "state_dict" in obj:
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise ValueError(f"checkpoint: {path} holds no state dict")
        state = {
            k: _check_array(v.detach().cpu().numpy(), k, path, "checkpoint")
            for k, v in obj.items()
            if hasattr(v, "detach")
        }
        if not state:
            raise ValueError(f"checkpoint: {path} holds no tensors")
        return state
    raise ValueError(f"checkpoint: unknown file type {path!r} (expected .npz, .pth, .pth.tar)")


def save_npz(state: Mapping[str, np.ndarray], path: str) -> None:
    """Write a state dict as ``.npz`` with the torch key names (readable without torch)."""
    np.savez(path, **{k: np.asarray(v) for k, v in state.items()})


def _flax_path(key: str) -> tuple[str, tuple[str, ...], str] | None:
    """torch key -> (collection, module path, leaf), or None for keys to drop."""
    parts = key.split(".")
    leaf = parts[-1]
    if leaf == "num_batches_tracked":
        return None
    mods = parts[:-1]
    # layer1.0.conv1 -> layer1_0/conv1 ; layer1.0.downsample.0 -> layer1_0/downsample_0
    path: list[str] = []
    i = 0
    while i < len(mods):
        if re.fullmatch(r"layer\d+", mods[i]) and i + 1 < len(mods):
            path.append(f"{mods[i]}_{mods[i + 1]}")
            i += 2
        elif mods[i] in ("downsample", "fc") and i + 1 < len(mods) and mods[i + 1].isdigit():
            path.append(f"{mods[i]}_{mods[i + 1]}")
            i += 2
        else:
            path.append(mods[i])
            i += 1
    is_bn = bool(path) and (path[-1].startswith("bn") or path[-1] == "downsample_1")
    if leaf == "weight":
        return "params", tuple(path), "scale" if is_bn else "kernel"
    if leaf == "bias":
        return "params", tuple(path), "bias"
    if leaf == "running_mean":
        return "batch_stats", tuple(path), "mean"
    if leaf == "running_var":
        return "batch_stats", tuple(path), "var"
    return "unknown", tuple(path), leaf


def _to_flax(array: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if leaf == "kernel" and array.ndim == 2:
        return array.T  # [out, in] -> [in, out]
    return array


def _set(tree: dict, collection: str, path: tuple[str, ...], leaf: str, value: Any) -> None:
    node = tree.setdefault(collection, {})
    for name in path:
        node = node.setdefault(name, {})
    node[leaf] = value


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def expected_backbone(arch: str, image_size: int = 64) -> dict[tuple[str, ...], tuple]:
    """Flattened ``{(collection, ..., leaf): shape}`` of a backbone's variables."""
    shapes = jax.eval_shape(
        lambda: models.backbone(arch).init(
            jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))
        )
    )
    return {k: tuple(v.shape) for k, v in _flatten(shapes).items()}


def convert_state_dict(state: Mapping[str, np.ndarray], arch: str) -> Converted:
    """Convert a torchvision or MoCo-v2 state dict for ``arch`` (see the module docstring).

    Raises:
      ConversionError: listing every missing key, unexpected key and shape mismatch.
    """
    if any(k.startswith(MOCO_PREFIX) for k in state):
        state = {k[len(MOCO_PREFIX) :]: v for k, v in state.items() if k.startswith(MOCO_PREFIX)}
    backbone_tree: dict = {}
    fc: dict = {}
    moco: dict = {}
    unexpected = []
    for key, value in state.items():
        mapped = _flax_path(key)
        if mapped is None:
            continue
        collection, path, leaf = mapped
        value = _to_flax(np.asarray(value, np.float32), leaf)
        if path and path[0] == "fc":  # torchvision classifier
            _set(fc, collection, (), leaf, value)
        elif path and path[0] in ("fc_0", "fc_2"):  # MoCo MLP head
            _set(moco, collection, path, leaf, value)
        elif collection == "unknown":
            unexpected.append(key)
        else:
            _set(backbone_tree, collection, path, leaf, value)
    want = expected_backbone(arch)
    got = {k: tuple(np.shape(v)) for k, v in _flatten(backbone_tree).items()}
    missing = sorted("/".join(k) for k in want.keys() - got.keys())
    unexpected += sorted("/".join(k) for k in got.keys() - want.keys())
    wrong = sorted(
        f"{'/'.join(k)}: {got[k]} != {want[k]}"
        for k in want.keys() & got.keys()
        if got[k] != want[k]
    )
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)}: {', '.join(missing[:20])}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:20])}")
        if wrong:
            problems.append(f"wrong shape {len(wrong)}: {'; '.join(wrong[:20])}")
        raise ConversionError(f"checkpoint: does not fit {arch}: " + " | ".join(problems))
    return Converted(
        backbone=backbone_tree, fc=fc.get("params") or None, moco_head=moco.get("params") or None
    )


def save_variables(converted: Mapping[str, Any], target: Any) -> None:
    """Write converted variables as one ``.npz`` with ``/``-joined keys (no pickle) to
    ``target``, a path (written atomically) or a binary file."""
    flat = {
        "/".join(k): np.asarray(v)
        for k, v in _flatten(
            {name: tree for name, tree in converted.items() if tree is not None}
        ).items()
    }
    if not isinstance(target, str | os.PathLike):
        np.savez(target, **flat)
        return
    from uotsel.outputs import atomic_writer

    with atomic_writer(os.fspath(target), "wb") as fh:
        np.savez(fh, **flat)


_PARTS = ("backbone", "fc", "moco_head")


def load_variables(path: str) -> dict[str, Any]:
    """Read :func:`save_variables` output back into nested dicts (missing parts are None).

    Raises:
      ValueError: one line starting with ``weights:`` for a directory, a missing, empty,
        truncated or foreign file, a file without ``backbone/params/...`` arrays (e.g. an
        unconverted torch state dict), a non-numeric array, or NaN/inf values (named by key).
    """
    arrays = _read_npz(path, "weights")
    out: dict[str, Any] = {name: None for name in _PARTS}
    for key, value in arrays.items():
        parts = key.split("/")
        if len(parts) < 2 or parts[0] not in _PARTS or not all(parts):
            raise ValueError(
                f"weights: {path} is not a converted weights file (key {key!r}; expected "
                "backbone/..., fc/..., moco_head/...); convert a checkpoint with "
                "'uotsel-train convert' first"
            )
        if parts[0] == "backbone" and (len(parts) < 3 or parts[1] not in ("params", "batch_stats")):
            raise ValueError(
                f"weights: key {key!r} in {path} is not backbone/params/... or "
                "backbone/batch_stats/..."
            )
        node = out[parts[0]]
        if node is None:
            node = out[parts[0]] = {}
        for name in parts[1:-1]:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ValueError(f"weights: key {key!r} in {path} clashes with another key")
        if parts[-1] in node:
            raise ValueError(f"weights: key {key!r} in {path} clashes with another key")
        node[parts[-1]] = value
    if out["backbone"] is None or "params" not in out["backbone"]:
        raise ValueError(
            f"weights: {path} holds no backbone parameters (keys: "
            f"{', '.join(sorted(arrays)[:5])}{', ...' if len(arrays) > 5 else ''})"
        )
    return out
