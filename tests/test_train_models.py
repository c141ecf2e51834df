"""uotsel_train models and checkpoint conversion against an independent numpy forward pass in
torch's NCHW layout (and against torch itself when it is installed)."""

import numpy as np
import pytest

pytest.importorskip("flax")

import jax
import jax.numpy as jnp

from uotsel_train import convert, models

# --- an independent reference: torchvision's ResNet in numpy, NCHW, float64 -----------------


def conv2d(x, w, stride, pad):
    n, c, h, width = x.shape
    _o, _, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (width + 2 * pad - kw) // stride + 1
    cols = np.empty((n, c, kh, kw, oh, ow))
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
    return np.einsum("nckloq,dckl->ndoq", cols, w)


def batchnorm(x, sd, name):
    mean, var = sd[f"{name}.running_mean"], sd[f"{name}.running_var"]
    scale = sd[f"{name}.weight"] / np.sqrt(var + 1e-5)
    return (x - mean[None, :, None, None]) * scale[None, :, None, None] + sd[f"{name}.bias"][
        None, :, None, None
    ]


def maxpool(x):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    h, w = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
    out = np.full(x.shape[:2] + (h, w), -np.inf)
    for i in range(3):
        for j in range(3):
            out = np.maximum(out, x[:, :, i : i + 2 * h : 2, j : j + 2 * w : 2])
    return out


def reference_logits(sd, arch, images_nchw):
    block, stages, _ = models.ARCHS[arch]
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    x = relu(batchnorm(conv2d(images_nchw, sd["conv1.weight"], 2, 3), sd, "bn1"))
    x = maxpool(x)
    for s, count in enumerate(stages):
        for i in range(count):
            p = f"layer{s + 1}.{i}"
            stride = 2 if s > 0 and i == 0 else 1
            if block == "basic":
                y = relu(batchnorm(conv2d(x, sd[f"{p}.conv1.weight"], stride, 1), sd, f"{p}.bn1"))
                y = batchnorm(conv2d(y, sd[f"{p}.conv2.weight"], 1, 1), sd, f"{p}.bn2")
            else:
                y = relu(batchnorm(conv2d(x, sd[f"{p}.conv1.weight"], 1, 0), sd, f"{p}.bn1"))
                y = relu(batchnorm(conv2d(y, sd[f"{p}.conv2.weight"], stride, 1), sd, f"{p}.bn2"))
                y = batchnorm(conv2d(y, sd[f"{p}.conv3.weight"], 1, 0), sd, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                x = batchnorm(
                    conv2d(x, sd[f"{p}.downsample.0.weight"], stride, 0), sd, f"{p}.downsample.1"
                )
            x = relu(y + x)
    feats = x.mean(axis=(2, 3))
    return feats @ sd["fc.weight"].T + sd["fc.bias"]


def random_state_dict(arch, rng, num_classes=10):
    """A torchvision-layout state dict with He-scaled random weights and random BN stats."""
    block, stages, width = models.ARCHS[arch]
    sd = {}

    def conv(name, o, i, k):
        sd[f"{name}.weight"] = rng.normal(0, np.sqrt(2 / (i * k * k)), (o, i, k, k))

    def bn(name, c):
        sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c)
        sd[f"{name}.bias"] = rng.normal(0, 0.1, c)
        sd[f"{name}.running_mean"] = rng.normal(0, 0.1, c)
        sd[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c)
        sd[f"{name}.num_batches_tracked"] = np.array(7)

    conv("conv1", width, 3, 7)
    bn("bn1", width)
    cin = width
    for s, count in enumerate(stages):
        planes = width * 2**s
        for i in range(count):
            p = f"layer{s + 1}.{i}"
            stride = 2 if s > 0 and i == 0 else 1
            if block == "basic":
                conv(f"{p}.conv1", planes, cin, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                out = planes
            else:
                conv(f"{p}.conv1", planes, cin, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1)
                bn(f"{p}.bn3", planes * 4)
                out = planes * 4
            if stride != 1 or cin != out:
                conv(f"{p}.downsample.0", out, cin, 1)
                bn(f"{p}.downsample.1", out)
            cin = out
    sd["fc.weight"] = rng.normal(0, 0.05, (num_classes, cin))
    sd["fc.bias"] = rng.normal(0, 0.05, num_classes)
    return sd


def flax_logits(converted, arch, images_nhwc):
    feats = models.backbone(arch).apply(
        converted["backbone"], jnp.asarray(images_nhwc), train=False
    )
    fc = converted["fc"]
    return np.asarray(feats @ fc["kernel"] + fc["bias"], np.float64)


@pytest.mark.parametrize(
    "arch, size",
    [
        ("tiny", 29),
        pytest.param("resnet18", 64, marks=pytest.mark.slow),
        pytest.param("resnet18", 50, marks=pytest.mark.slow),
    ],
)
def test_converted_resnet_matches_reference(arch, size):
    rng = np.random.default_rng(0)
    sd = random_state_dict(arch, rng)
    images = rng.normal(size=(2, 3, size, size))  # odd and even sizes: padding must match
    ref = reference_logits(sd, arch, images)
    got = flax_logits(
        convert.convert_state_dict(sd, arch), arch, images.transpose(0, 2, 3, 1).astype(np.float32)
    )
    assert np.max(np.abs(got - ref)) <= 1e-4


@pytest.mark.slow
def test_resnet50_bottleneck_matches_reference():
    rng = np.random.default_rng(1)
    sd = random_state_dict("resnet50", rng)
    images = rng.normal(size=(1, 3, 32, 32))
    ref = reference_logits(sd, "resnet50", images)
    got = flax_logits(
        convert.convert_state_dict(sd, "resnet50"),
        "resnet50",
        images.transpose(0, 2, 3, 1).astype(np.float32),
    )
    # Random un-normalised weights give logits in the hundreds here: float32 relative accuracy.
    assert np.max(np.abs(got - ref)) <= 2e-6 * np.max(np.abs(ref))


def test_moco_checkpoint_layout(tmp_path):
    rng = np.random.default_rng(2)
    sd = random_state_dict("tiny", rng)
    del sd["fc.weight"], sd["fc.bias"]
    moco = {f"module.encoder_q.{k}": v for k, v in sd.items()}
    moco["module.encoder_q.fc.0.weight"] = rng.normal(size=(32, 16))
    moco["module.encoder_q.fc.0.bias"] = rng.normal(size=32)
    moco["module.encoder_q.fc.2.weight"] = rng.normal(size=(8, 32))
    moco["module.encoder_q.fc.2.bias"] = rng.normal(size=8)
    moco.update({f"module.encoder_k.{k}": v for k, v in sd.items()})
    moco["module.queue"] = rng.normal(size=(8, 100))
    moco["module.queue_ptr"] = np.array([0])
    convert.save_npz(moco, tmp_path / "moco.npz")
    converted = convert.convert_state_dict(
        convert.load_state_dict(str(tmp_path / "moco.npz")), "tiny"
    )
    assert converted["fc"] is None
    head = models.MocoHead(hidden=32, out=8)
    x = rng.normal(size=(3, 16)).astype(np.float32)
    out = head.apply({"params": converted["moco_head"]}, x)
    w0, b0 = moco["module.encoder_q.fc.0.weight"], moco["module.encoder_q.fc.0.bias"]
    w2, b2 = moco["module.encoder_q.fc.2.weight"], moco["module.encoder_q.fc.2.bias"]
    np.testing.assert_allclose(out, np.maximum(x @ w0.T + b0, 0) @ w2.T + b2, rtol=1e-4, atol=1e-4)


def test_mismatched_checkpoints_list_every_problem():
    rng = np.random.default_rng(3)
    sd = random_state_dict("tiny", rng)
    del sd["layer1.0.bn1.running_var"]
    sd["layer9.0.conv1.weight"] = np.zeros((1, 1, 1, 1))
    sd["layer1.0.conv2.weight"] = np.zeros((8, 8, 5, 5))
    with pytest.raises(convert.ConversionError) as err:
        convert.convert_state_dict(sd, "tiny")
    message = str(err.value)
    assert "missing 1: batch_stats/layer1_0/bn1/var" in message
    assert "unexpected 1: params/layer9_0/conv1/kernel" in message
    assert "wrong shape 1: params/layer1_0/conv2/kernel: (5, 5, 8, 8) != (3, 3, 8, 8)" in message


@pytest.mark.slow
def test_fine_tuner_heads():
    model = models.FineTuner("tiny", num_target=5, num_source=1000)
    variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
    target, source, feats = model.apply(variables, jnp.ones((2, 32, 32, 3)))
    assert target.shape == (2, 5) and source.shape == (2, 1000) and feats.shape == (2, 16)
    head = np.asarray(variables["params"]["source_head"]["kernel"])
    assert np.all(variables["params"]["target_head"]["bias"] == 0)
    assert abs(head.std() - np.sqrt(2 / 2048)) < 0.1 * np.sqrt(2 / 2048)
    # BatchNorm statistics move with torch's momentum 0.1 in training mode.
    _, updates = model.apply(
        variables, jnp.ones((2, 32, 32, 3)), train=True, mutable=["batch_stats"]
    )
    old = variables["batch_stats"]["backbone"]["bn1"]["mean"]
    new = updates["batch_stats"]["backbone"]["bn1"]["mean"]
    batch_mean = (new - 0.9 * old) / 0.1
    assert np.all(np.isfinite(np.asarray(batch_mean)))
    with pytest.raises(ValueError, match="arch: unknown architecture 'resnet9'"):
        models.backbone("resnet9")


def test_convert_command_round_trip(tmp_path, capsys):
    from uotsel_train.cli import main

    rng = np.random.default_rng(4)
    sd = random_state_dict("tiny", rng)
    convert.save_npz(sd, tmp_path / "ckpt.npz")
    assert (
        main(
            [
                "convert",
                "--checkpoint",
                str(tmp_path / "ckpt.npz"),
                "--arch",
                "tiny",
                "--out",
                str(tmp_path / "w.npz"),
            ]
        )
        == 0
    )
    assert "for tiny" in capsys.readouterr().out
    loaded = convert.load_variables(str(tmp_path / "w.npz"))
    images = rng.normal(size=(1, 3, 29, 29))
    np.testing.assert_allclose(
        flax_logits(loaded, "tiny", images.transpose(0, 2, 3, 1).astype(np.float32)),
        reference_logits(sd, "tiny", images),
        atol=1e-4,
    )
    # A checkpoint for another architecture: one line, exit 2, no output file.
    assert (
        main(
            [
                "convert",
                "--checkpoint",
                str(tmp_path / "ckpt.npz"),
                "--arch",
                "resnet18",
                "--out",
                str(tmp_path / "bad.npz"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("uotsel-train convert: error: checkpoint: does")
    assert not (tmp_path / "bad.npz").exists()
    assert (
        main(
            [
                "convert",
                "--checkpoint",
                str(tmp_path / "none.pth"),
                "--arch",
                "tiny",
                "--out",
                str(tmp_path / "x.npz"),
            ]
        )
        == 2
    )


def test_against_torchvision_when_installed():
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    images = np.random.default_rng(5).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(images)).numpy()
    got = flax_logits(
        convert.convert_state_dict(sd, "resnet18"), "resnet18", images.transpose(0, 2, 3, 1)
    )
    assert np.max(np.abs(got - ref)) <= 1e-4
