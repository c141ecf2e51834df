"""Weights and checkpoint files: every bad file is one ValueError line, never a traceback, never a
suggestion to unpickle; weights or features with NaN/inf never give class means."""

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("PIL")

import jax
import jax.numpy as jnp
from PIL import Image

from uotsel_train import convert, extract, models

READERS = {"weights": convert.load_variables, "checkpoint": convert.load_state_dict}


def tiny_backbone(seed=0):
    return jax.tree_util.tree_map(
        np.asarray, models.backbone("tiny").init(jax.random.key(seed), jnp.zeros((1, 16, 16, 3)))
    )


def good_arrays(kind):
    """A valid file's arrays: converted variables (``weights``) or a torch-named state dict."""
    if kind == "weights":
        backbone = tiny_backbone()
        flat = jax.tree_util.tree_flatten_with_path(backbone)[0]
        return {"/".join(["backbone", *(str(k.key) for k in path)]): leaf for path, leaf in flat}
    rng = np.random.default_rng(0)
    return {
        "conv1.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "bn1.running_var": np.ones(8, np.float32),
        "bn1.num_batches_tracked": np.array(7),
    }


def read_error(kind, path):
    with pytest.raises(ValueError) as err:
        READERS[kind](str(path))
    message = str(err.value)
    assert "\n" not in message, message
    assert message.startswith(f"{kind}: "), message
    assert "pickle" not in message.lower(), message
    return message


@pytest.fixture(params=sorted(READERS))
def kind(request):
    return request.param


def test_good_files_round_trip(tmp_path, kind):
    arrays = good_arrays(kind)
    np.savez(tmp_path / "good.npz", **arrays)
    loaded = READERS[kind](str(tmp_path / "good.npz"))
    if kind == "weights":
        assert loaded["fc"] is None and loaded["moco_head"] is None
        flat = jax.tree_util.tree_flatten_with_path(loaded["backbone"])[0]
        loaded = {"/".join(["backbone", *(str(k.key) for k in p)]): v for p, v in flat}
    assert sorted(loaded) == sorted(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(loaded[key], value)


def test_a_directory(tmp_path, kind):
    (tmp_path / "w.npz").mkdir()
    assert "is a directory" in read_error(kind, tmp_path / "w.npz")


def test_a_missing_file(tmp_path, kind):
    assert "file not found" in read_error(kind, tmp_path / "none.npz")


def test_an_empty_file(tmp_path, kind):
    (tmp_path / "w.npz").write_bytes(b"")
    assert "empty file" in read_error(kind, tmp_path / "w.npz")


@pytest.mark.parametrize("cut", [0.5, 0.98])
def test_a_truncated_npz(tmp_path, kind, cut):
    np.savez(tmp_path / "good.npz", **good_arrays(kind))
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "w.npz").write_bytes(data[: int(cut * len(data))])
    assert "is not an .npz archive" in read_error(kind, tmp_path / "w.npz")


@pytest.mark.parametrize(
    "content",
    [
        b"conv1.weight 0.1 0.2\n",
        np.random.default_rng(1).bytes(4096),
        b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",  # a pickle stream
    ],
    ids=["text", "random bytes", "pickle"],
)
def test_a_file_that_is_not_an_npz(tmp_path, kind, content):
    (tmp_path / "w.npz").write_bytes(content)
    assert "is not an .npz archive" in read_error(kind, tmp_path / "w.npz")


def test_a_single_npy_array_named_npz(tmp_path, kind):
    with open(tmp_path / "w.npz", "wb") as fh:
        np.save(fh, np.ones(3, np.float32))
    assert "single .npy array" in read_error(kind, tmp_path / "w.npz")


def test_a_damaged_member(tmp_path, kind):
    np.savez(tmp_path / "good.npz", **good_arrays(kind))
    data = bytearray((tmp_path / "good.npz").read_bytes())
    data[200] ^= 0xFF  # inside the first array's bytes: the CRC no longer matches
    (tmp_path / "w.npz").write_bytes(bytes(data))
    assert "is damaged" in read_error(kind, tmp_path / "w.npz")


def test_an_npz_without_arrays(tmp_path, kind):
    np.savez(tmp_path / "w.npz")
    assert "holds no arrays" in read_error(kind, tmp_path / "w.npz")


def test_object_and_string_arrays(tmp_path, kind):
    key = next(iter(good_arrays(kind)))
    np.savez(tmp_path / "o.npz", **{key: np.array([{"a": 1}, None], dtype=object)})
    assert "holds Python objects" in read_error(kind, tmp_path / "o.npz")
    np.savez(tmp_path / "s.npz", **{key: np.array(["a", "b"])})
    assert f"key {key!r}" in read_error(kind, tmp_path / "s.npz")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_by_key(tmp_path, kind, bad):
    arrays = good_arrays(kind)
    key = sorted(k for k, v in arrays.items() if v.dtype.kind == "f")[-1]
    arrays[key] = arrays[key].copy()
    arrays[key].flat[0] = bad
    np.savez(tmp_path / "w.npz", **arrays)
    message = read_error(kind, tmp_path / "w.npz")
    assert message == f"{kind}: {tmp_path / 'w.npz'} holds non-finite values in {key}"


def test_weights_need_converted_keys_and_a_backbone(tmp_path):
    np.savez(tmp_path / "torch.npz", **good_arrays("checkpoint"))
    message = read_error("weights", tmp_path / "torch.npz")
    assert "not a converted weights file" in message and "uotsel-train convert" in message
    np.savez(tmp_path / "fc.npz", **{"fc/kernel": np.ones((4, 2), np.float32)})
    assert "holds no backbone parameters" in read_error("weights", tmp_path / "fc.npz")
    np.savez(tmp_path / "odd.npz", **{"backbone/conv1/kernel": np.ones(3, np.float32)})
    assert "backbone/params/" in read_error("weights", tmp_path / "odd.npz")
    np.savez(
        tmp_path / "clash.npz",
        **{"backbone/params/conv1": np.ones(3), "backbone/params/conv1/kernel": np.ones(3)},
    )
    assert "clashes with another key" in read_error("weights", tmp_path / "clash.npz")


def test_unknown_checkpoint_type(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"0123")
    assert "unknown file type" in read_error("checkpoint", tmp_path / "w.bin")


def test_convert_command_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    from uotsel_train.cli import main

    (tmp_path / "ckpt.npz").write_bytes(b"not an archive")
    args = ["convert", "--checkpoint", str(tmp_path / "ckpt.npz"), "--arch", "resnet18"]
    assert main(args + ["--out", str(tmp_path / "w.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an .npz archive" in err[0], err
    assert not (tmp_path / "w.npz").exists()


class Images:
    """A tiny image source: ``__len__``, ``load(i) -> (image, label)``, ``labels``,
    ``classes``; images listed in ``broken`` cannot be read."""

    def __init__(self, n=6, classes=2, broken=()):
        rng = np.random.default_rng(3)
        self.pixels = rng.integers(0, 256, size=(n, 20, 18, 3), dtype=np.uint8)
        self.labels = np.arange(n) % classes
        self.classes = [f"c{c}" for c in range(classes)]
        self.broken = set(broken)

    def __len__(self):
        return len(self.labels)

    def load(self, index):
        if index in self.broken:
            raise OSError(f"cannot identify image file {index}")
        return Image.fromarray(self.pixels[index]), int(self.labels[index])


def run_extract(variables, source=None, **kwargs):
    return extract.extract(
        Images() if source is None else source,
        variables,
        "tiny",
        image_size=16,
        resize=18,
        batch_size=4,
        workers=1,
        **kwargs,
    )


def test_extract_gives_finite_means():
    res = run_extract({"backbone": tiny_backbone()})
    assert res.means.shape == (2, 16) and np.all(np.isfinite(res.means))
    assert res.counts.tolist() == [3, 3]


def test_extract_refuses_weights_with_nan():
    backbone = tiny_backbone()
    backbone["params"]["conv1"]["kernel"] = backbone["params"]["conv1"]["kernel"].copy()
    backbone["params"]["conv1"]["kernel"].flat[5] = np.nan
    with pytest.raises(ValueError, match=r"^weights: non-finite values in backbone/params/conv1"):
        run_extract({"backbone": backbone})


@pytest.mark.slow
def test_extract_refuses_non_finite_features():
    # Finite weights so large that the forward pass overflows.
    backbone = tiny_backbone()
    kernel = backbone["params"]["conv1"]["kernel"]
    backbone["params"]["conv1"]["kernel"] = np.full_like(kernel, 3e38)
    with pytest.raises(ValueError, match=r"^weights: non-finite features for 4 image\(s\)"):
        run_extract({"backbone": backbone})


@pytest.mark.slow
def test_extract_refuses_all_zero_class_means():
    zeros = jax.tree_util.tree_map(np.zeros_like, tiny_backbone())
    zeros["batch_stats"] = jax.tree_util.tree_map(np.ones_like, zeros["batch_stats"])
    with pytest.raises(ValueError, match=r"^weights: the mean feature of 2 class\(es\) is all"):
        run_extract({"backbone": zeros})


@pytest.mark.slow
def test_extract_refuses_missing_parts_and_unreadable_data():
    with pytest.raises(ValueError, match=r"^weights: the weights have no backbone"):
        run_extract({"backbone": None})
    with pytest.raises(ValueError, match=r"^weights: moco_head requested"):
        run_extract({"backbone": tiny_backbone()}, moco_head=True)
    with pytest.raises(ValueError, match=r"^data: none of the 6 images could be read"):
        with pytest.warns(UserWarning):
            run_extract({"backbone": tiny_backbone()}, source=Images(broken=range(6)))
    with pytest.raises(ValueError, match=r"^data: holds no images"):
        run_extract({"backbone": tiny_backbone()}, source=Images(n=0))


@pytest.mark.slow
def test_extract_names_an_empty_class_unless_allowed():
    source = Images(n=4, classes=2)
    source.classes = ["c0", "c1", "c2"]  # no image of class 2
    with pytest.raises(
        ValueError, match=r"^data: 1 of 3 classes have no readable image \(first: 2 \(c2\)\)"
    ):
        run_extract({"backbone": tiny_backbone()}, source=source)
    res = run_extract({"backbone": tiny_backbone()}, source=source, allow_empty=True)
    assert res.counts.tolist() == [2, 2, 0] and not np.any(res.means[2])
    assert np.all(np.any(res.means[:2] != 0, axis=1))


@pytest.mark.slow
def test_extract_refuses_weights_of_another_arch_by_name():
    other = models.backbone("resnet18").init(jax.random.key(0), np.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"^weights: the backbone does not fit arch 'tiny' \("):
        run_extract({"backbone": jax.tree_util.tree_map(np.asarray, dict(other))})
    backbone = tiny_backbone()
    kernel = backbone["params"]["conv1"]["kernel"]
    backbone["params"]["conv1"]["kernel"] = np.zeros(kernel.shape[:-1] + (kernel.shape[-1] + 1,))
    with pytest.raises(ValueError, match=r"\['conv1'\]\['kernel'\]: expected shape"):
        run_extract({"backbone": backbone})
