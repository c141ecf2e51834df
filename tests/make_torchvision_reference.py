"""Reference outputs of torchvision's ResNet18 and ResNet50 for the torch-free parity tests.

Run it where torch, torchvision and numpy are installed (nothing of this project is needed),
from the repository root::

    python tests/make_torchvision_reference.py

It writes ``tests/data/torchvision_resnet18.npz`` and ``tests/data/torchvision_resnet50.npz``
(``--out-dir`` and ``--arch`` change where and which), for the tests in
``tests/test_train_torchvision_reference.py``, which compare them with the converted Flax models
and need no torch.

Neither the weights nor the images are stored: both are drawn here with numpy and drawn again
by the tests (:func:`random_state_dict`, :func:`random_images`). Every tensor of
torchvision's ``state_dict`` is filled in sorted key order from one ``default_rng(SEED)``
stream of uniform floats (float64, scaled, then cast to float32) and written into the torch model
with ``load_state_dict(strict=True)``; the names and shapes come from :func:`state_dict_shapes`,
and the script stops if torchvision's own differ.

Each file holds (``np.load(path, allow_pickle=False)``):

- ``eval_logits`` ``[2, 1000]``: ``model.eval()`` logits;
- ``train_logits`` ``[2, 1000]``: logits of one ``model.train()`` forward pass (BatchNorm on the
  batch statistics), and for every BatchNorm ``<name>`` (torch module names) the running
  statistics after that pass, ``train.<name>.running_mean`` and ``train.<name>.running_var``
  ``[C]``, and ``count.<name>``, the number of values per channel it normalised
  (batch x height x width);
- ``rounding.eval_logits``, ``rounding.train_logits``, ``rounding.running_mean`` and
  ``rounding.running_var``: how far torch's own float32 results lie from the same model run in
  float64, as ``max |float32 - float64| / max |float64|`` (for the running statistics: of the
  step one pass moves them, ``new - 0.9 old``, the largest over all BatchNorms), the rounding
  that any float32 implementation carries and that the tests' tolerances must exceed;
- ``weights_fingerprint`` (float64 sum of every tensor, sorted key order) and
  ``images_fingerprint``, so that a test can tell a generator that no longer reproduces the
  weights from a model that does not match;
- ``torch_version``, ``torchvision_version``, ``numpy_version``, ``seed`` and ``image_shape``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import numpy as np

SEED = 20250
IMAGE_SHAPE = (2, 3, 64, 48)  # [B, C, H, W]: rectangular, so that H and W cannot be confused
NUM_CLASSES = 1000
ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def reference_path(arch: str, directory: str = DATA_DIR) -> str:
    """Where the reference outputs of ``arch`` live."""
    return os.path.join(directory, f"torchvision_{arch}.npz")


def state_dict_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """``{torchvision state_dict key: shape}`` of ``torchvision.models.<arch>()``."""
    block, stages = ARCHS[arch]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, out: int, cin: int, k: int) -> None:
        shapes[f"{name}.weight"] = (out, cin, k, k)

    def bn(name: str, c: int) -> None:
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{leaf}"] = (c,)
        shapes[f"{name}.num_batches_tracked"] = ()

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    expansion = 1 if block == "basic" else 4
    for s, count in enumerate(stages):
        planes = 64 * 2**s
        out = planes * expansion
        for i in range(count):
            p = f"layer{s + 1}.{i}"
            if block == "basic":
                conv(f"{p}.conv1", planes, cin, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            else:
                conv(f"{p}.conv1", planes, cin, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", out, planes, 1)
                bn(f"{p}.bn3", out)
            if i == 0 and (s > 0 or cin != out):
                conv(f"{p}.downsample.0", out, cin, 1)
                bn(f"{p}.downsample.1", out)
            cin = out
    shapes["fc.weight"] = (NUM_CLASSES, cin)
    shapes["fc.bias"] = (NUM_CLASSES,)
    return shapes


def _uniform(rng: np.random.Generator, low: float, high: float, shape) -> np.ndarray:
    return (low + (high - low) * rng.random(shape)).astype(np.float32)


def random_state_dict(arch: str, seed: int = SEED) -> dict[str, np.ndarray]:
    """The reference weights: a torchvision state dict of float32 numpy arrays.

    Keys are filled in sorted order from one ``np.random.default_rng(seed)``: convolutions
    He-uniform (``+-sqrt(6 / fan_in)``), BatchNorm weight U(0.5, 1.5), bias U(-0.2, 0.2),
    running mean U(-0.2, 0.2), running variance U(0.5, 2), the classifier
    ``+-1 / sqrt(fan_in)``; ``num_batches_tracked`` is 0 (int64) and draws nothing.
    """
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in sorted(state_dict_shapes(arch).items()):
        leaf = key.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            state[key] = np.zeros(shape, np.int64)
        elif len(shape) == 4:
            bound = np.sqrt(6.0 / (shape[1] * shape[2] * shape[3]))
            state[key] = _uniform(rng, -bound, bound, shape)
        elif key.startswith("fc."):
            bound = 1.0 / np.sqrt(state_dict_shapes(arch)["fc.weight"][1])
            state[key] = _uniform(rng, -bound, bound, shape)
        elif leaf == "weight":
            state[key] = _uniform(rng, 0.5, 1.5, shape)
        elif leaf in ("bias", "running_mean"):
            state[key] = _uniform(rng, -0.2, 0.2, shape)
        elif leaf == "running_var":
            state[key] = _uniform(rng, 0.5, 2.0, shape)
        else:
            raise AssertionError(f"no distribution for {key}")
    return state


def random_images(seed: int = SEED) -> np.ndarray:
    """The reference inputs: ``IMAGE_SHAPE`` float32 NCHW, U(-2, 2) (about the range of
    ImageNet-normalised pixels), from ``default_rng(seed + 1)``."""
    return _uniform(np.random.default_rng(seed + 1), -2.0, 2.0, IMAGE_SHAPE)


def weights_fingerprint(state: dict[str, np.ndarray]) -> np.ndarray:
    """float64 sum of every tensor, in sorted key order."""
    return np.array([np.sum(state[k], dtype=np.float64) for k in sorted(state)])


def batchnorm_names(arch: str) -> list[str]:
    """torch module names of every BatchNorm of ``arch``, sorted."""
    suffix = ".running_mean"
    return sorted(k[: -len(suffix)] for k in state_dict_shapes(arch) if k.endswith(suffix))


def running_step(new, old) -> np.ndarray:
    """What one training pass added to a running statistic, ``new - 0.9 old`` in float64
    (torch's momentum 0.1: a tenth of the batch statistic)."""
    return np.asarray(new, np.float64) - 0.9 * np.asarray(old, np.float64)


def _relative(got, exact) -> np.ndarray:
    got, exact = np.asarray(got, np.float64), np.asarray(exact, np.float64)
    return np.array(np.max(np.abs(got - exact)) / np.max(np.abs(exact)))


def make_reference(arch: str, seed: int = SEED) -> dict[str, np.ndarray]:
    """Run torchvision's ``arch`` on the reference weights and images (needs torch)."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)(weights=None, num_classes=NUM_CLASSES)
    state = random_state_dict(arch, seed)
    theirs = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in state.items()}
    if theirs != ours:
        diff = sorted(set(theirs.items()) ^ set(ours.items()))
        raise SystemExit(f"torchvision's {arch} state dict differs from ours: {diff[:10]}")
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    net64 = copy.deepcopy(net).double()
    images = torch.from_numpy(random_images(seed))

    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        exact_eval = net64.eval()(images.double()).numpy()
        exact_train = net64.train()(images.double()).numpy()
        out["eval_logits"] = net.eval()(images).numpy()
        counts: dict[str, int] = {}
        hooks = [
            module.register_forward_hook(
                lambda mod, inp, _out, name=name: counts.__setitem__(
                    name, inp[0].numel() // inp[0].shape[1]
                )
            )
            for name, module in net.named_modules()
            if isinstance(module, torch.nn.BatchNorm2d)
        ]
        out["train_logits"] = net.train()(images).numpy()
        for hook in hooks:
            hook.remove()
    after = net.state_dict()
    if sorted(counts) != batchnorm_names(arch):
        raise SystemExit(f"{arch}: BatchNorm modules differ from the state dict")
    for name in batchnorm_names(arch):
        for leaf in ("running_mean", "running_var"):
            out[f"train.{name}.{leaf}"] = after[f"{name}.{leaf}"].numpy().astype(np.float32)
        out[f"count.{name}"] = np.array(counts[name], np.int64)
    exact = net64.state_dict()
    out["rounding.eval_logits"] = _relative(out["eval_logits"], exact_eval)
    out["rounding.train_logits"] = _relative(out["train_logits"], exact_train)
    for leaf in ("running_mean", "running_var"):
        out[f"rounding.{leaf}"] = max(
            _relative(
                running_step(after[f"{name}.{leaf}"].numpy(), state[f"{name}.{leaf}"]),
                running_step(exact[f"{name}.{leaf}"].numpy(), state[f"{name}.{leaf}"]),
            )
            for name in batchnorm_names(arch)
        )
    out["weights_fingerprint"] = weights_fingerprint(state)
    out["images_fingerprint"] = np.array(np.sum(random_images(seed), dtype=np.float64))
    out["torch_version"] = np.array(torch.__version__)
    out["torchvision_version"] = np.array(torchvision.__version__)
    out["numpy_version"] = np.array(np.__version__)
    out["seed"] = np.array(seed, np.int64)
    out["image_shape"] = np.array(IMAGE_SHAPE, np.int64)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out-dir", default=DATA_DIR, help="default: tests/data")
    parser.add_argument("--arch", nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS))
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    for arch in args.arch:
        ref = make_reference(arch)
        path = reference_path(arch, args.out_dir)
        np.savez_compressed(path, **ref)
        print(
            f"{path}: {os.path.getsize(path)} bytes (torch {ref['torch_version']}, "
            f"torchvision {ref['torchvision_version']}, numpy {ref['numpy_version']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
