"""Converted Flax ResNet18 and ResNet50 against torchvision's own outputs, without torch.

``tests/data/torchvision_<arch>.npz`` holds what torchvision computed on weights and images that
``make_torchvision_reference`` draws from a seed with numpy (see its docstring for how to make
the files again). Here the same weights are drawn again, written as an ``.npz`` with the torch
key names, converted by ``uotsel-train convert`` as a user would convert a torchvision
checkpoint, and run through ``models.backbone`` plus the converted classifier.

Tolerances: both sides compute in float32 but add up in different orders (torch's CPU kernels
against XLA's), so neither is exact. The reference file records how far torch's own float32
results lie from the same model run in float64 (``rounding.*``); each tolerance is at least 5
times that (``test_torchvision_tolerances_exceed_float32_rounding``), since Flax may err as much
in the other direction. Every comparison is ``max |flax - torch| <= tol * max |torch|``:

- evaluation mode, 1e-5: torch's float32 rounding is below 5e-7 for both networks (Flax against
  torch measured 4.6e-7 for ResNet18, 7.7e-7 for ResNet50);
- training mode (logits and the step of the running statistics), 1e-4 for ResNet18 and 1e-3 for
  ResNet50: with every BatchNorm on its batch statistics, rounding grows with depth (torch's own
  float32 running variance is about 1e-6 off float64 in layer1, and up to 4e-6 in ResNet18's
  layer4 and 1e-4 in ResNet50's); Flax against torch measured 5.5e-6 and 9.6e-5.

A wrong conversion is off by more than 0.1
(``test_torchvision_reference_detects_a_wrong_conversion``).
"""

import re

import numpy as np
import pytest

pytest.importorskip("flax")

import jax.numpy as jnp
import make_torchvision_reference as reference

from uotsel_train import convert, models

EVAL_TOL = {"resnet18": 1e-5, "resnet50": 1e-5}
TRAIN_TOL = {"resnet18": 1e-4, "resnet50": 1e-3}


def load_reference(arch):
    with np.load(reference.reference_path(arch), allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def convert_like_a_user(state, arch, folder):
    """The torch-named ``.npz`` through ``uotsel-train convert``, read back as users read it."""
    from uotsel_train.cli import main

    checkpoint, weights = folder / f"{arch}_torch.npz", folder / f"{arch}_flax.npz"
    np.savez(checkpoint, **state)
    code = main(["convert", "--checkpoint", str(checkpoint), "--arch", arch, "--out", str(weights)])
    assert code == 0
    return convert.load_variables(str(weights))


def run_flax(variables, arch, images_nchw):
    """Eval logits, train logits and the batch statistics after one train-mode pass."""
    net = models.backbone(arch)
    fc = variables["fc"]
    x = jnp.asarray(images_nchw.transpose(0, 2, 3, 1))
    feats = net.apply(variables["backbone"], x, train=False)
    train_feats, updates = net.apply(variables["backbone"], x, train=True, mutable=["batch_stats"])
    return (
        np.asarray(feats @ fc["kernel"] + fc["bias"]),
        np.asarray(train_feats @ fc["kernel"] + fc["bias"]),
        updates["batch_stats"],
    )


def flax_path(torch_name):
    """``layer1.0.downsample.1`` -> ``("layer1_0", "downsample_1")``."""
    name = re.sub(r"layer(\d+)\.(\d+)", r"layer\1_\2", torch_name)
    return tuple(name.replace("downsample.", "downsample_").split("."))


def lookup(tree, path):
    for name in path:
        tree = tree[name]
    return np.asarray(tree, np.float64)


def relative_error(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(a, marks=[] if a == "resnet18" else [pytest.mark.slow])
        for a in sorted(reference.ARCHS)
    ],
)
def case(request, tmp_path_factory):
    arch = request.param
    state = reference.random_state_dict(arch)
    images = reference.random_images()
    variables = convert_like_a_user(state, arch, tmp_path_factory.mktemp(arch))
    eval_logits, train_logits, stats = run_flax(variables, arch, images)
    return {
        "arch": arch,
        "ref": load_reference(arch),
        "state": state,
        "images": images,
        "eval_logits": eval_logits,
        "train_logits": train_logits,
        "stats": stats,
    }


@pytest.mark.slow
def test_torchvision_reference_is_reproduced(case):
    """The numpy draw still gives the weights and images the reference was made from, so a
    failure below is the model's, not the generator's."""
    ref = case["ref"]
    assert ref["image_shape"].tolist() == list(reference.IMAGE_SHAPE)
    assert int(ref["seed"]) == reference.SEED
    for key in ("torch_version", "torchvision_version", "numpy_version"):
        assert ref[key].dtype.kind == "U" and str(ref[key])
    np.testing.assert_allclose(
        reference.weights_fingerprint(case["state"]), ref["weights_fingerprint"], rtol=1e-9
    )
    np.testing.assert_allclose(
        np.sum(case["images"], dtype=np.float64), ref["images_fingerprint"], rtol=1e-9
    )


def test_torchvision_tolerances_exceed_float32_rounding(case):
    rounding = {k.split(".", 1)[1]: float(v) for k, v in case["ref"].items() if "rounding." in k}
    assert sorted(rounding) == ["eval_logits", "running_mean", "running_var", "train_logits"]
    assert EVAL_TOL[case["arch"]] >= 5 * rounding.pop("eval_logits")
    assert TRAIN_TOL[case["arch"]] >= 5 * max(rounding.values())


def test_torchvision_eval_logits_match(case):
    assert case["eval_logits"].shape == (reference.IMAGE_SHAPE[0], reference.NUM_CLASSES)
    error = relative_error(case["eval_logits"], case["ref"]["eval_logits"])
    assert error <= EVAL_TOL[case["arch"]]


def test_torchvision_train_logits_match(case):
    error = relative_error(case["train_logits"], case["ref"]["train_logits"])
    assert error <= TRAIN_TOL[case["arch"]]


def test_torchvision_train_running_means_match(case):
    """One pass moves the running mean by a tenth of the batch mean: that step is compared."""
    ref, names = case["ref"], reference.batchnorm_names(case["arch"])
    assert len(names) == sum(k.startswith("count.") for k in ref)
    for name in names:
        old = case["state"][f"{name}.running_mean"]
        got = reference.running_step(lookup(case["stats"], flax_path(name) + ("mean",)), old)
        want = reference.running_step(ref[f"train.{name}.running_mean"], old)
        assert relative_error(got, want) <= TRAIN_TOL[case["arch"]], name


def test_torchvision_train_running_vars_match_up_to_bessel(case):
    """torch moves the running variance towards the unbiased batch variance, Flax towards the
    biased one: the steps differ by ``n / (n - 1)``, n the values per channel."""
    ref = case["ref"]
    largest_gap = 0.0
    for name in reference.batchnorm_names(case["arch"]):
        n = int(ref[f"count.{name}"])
        old = case["state"][f"{name}.running_var"]
        got_step = reference.running_step(lookup(case["stats"], flax_path(name) + ("var",)), old)
        torch_step = reference.running_step(ref[f"train.{name}.running_var"], old)
        assert relative_error(got_step, torch_step * (n - 1) / n) <= TRAIN_TOL[case["arch"]], name
        largest_gap = max(largest_gap, relative_error(got_step, torch_step))
    # The difference is real at this batch (layer4 normalises 2 x 2 x 2 values per channel).
    assert largest_gap > 0.1


def test_torchvision_reference_detects_a_wrong_conversion(tmp_path):
    """The tolerances are far below what a plausible conversion mistake gives: one ResNet18
    layer4 kernel with height and width swapped (``OIHW -> WHIO`` instead of ``HWIO``)."""
    variables = convert_like_a_user(reference.random_state_dict("resnet18"), "resnet18", tmp_path)
    conv = variables["backbone"]["params"]["layer4_1"]["conv2"]
    conv["kernel"] = conv["kernel"].transpose(1, 0, 2, 3)
    eval_logits, train_logits, _ = run_flax(variables, "resnet18", reference.random_images())
    ref = load_reference("resnet18")
    assert relative_error(eval_logits, ref["eval_logits"]) > 0.1
    assert relative_error(train_logits, ref["train_logits"]) > 0.1
