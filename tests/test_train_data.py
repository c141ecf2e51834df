"""Image folders, the paper's transforms, batching, and class-mean extraction, on images the
tests draw themselves."""

import json
import warnings

import numpy as np
import pytest

pytest.importorskip("flax")
PIL = pytest.importorskip("PIL")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from PIL import Image  # noqa: E402
from train_helpers import direct_features  # noqa: E402

from uotsel import io  # noqa: E402
from uotsel_train import convert, data, extract, loader, models  # noqa: E402
from uotsel_train.cli import main  # noqa: E402


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (33, 47), (64, 64), (50, 21)]
    for c, name in enumerate(["cat", "bird", "aardvark"]):
        (tmp_path / name).mkdir()
        for i, (w, h) in enumerate(sizes[: 2 + c]):
            pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{i}.png")
    (tmp_path / "bird" / "notes.txt").write_text("not an image")
    return tmp_path


def test_image_folder_orders_classes_and_files(folder):
    src = data.ImageFolder(str(folder))
    assert src.classes == ["aardvark", "bird", "cat"]
    assert len(src) == 4 + 3 + 2
    assert src.labels.tolist() == [0] * 4 + [1] * 3 + [2] * 2
    img, label = src.load(4)
    assert label == 1 and img.mode == "RGB" and src.paths[4].endswith("bird/0.png")
    with pytest.raises(ValueError, match="data: image folder not found"):
        data.ImageFolder(str(folder / "missing"))


def test_eval_transform_is_resize_then_centre_crop():
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8))
    out = data.eval_transform(img)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # Independent computation: shorter side 300 -> 256, i.e. 400 -> 341; crop at (58, 16).
    ref = np.asarray(img.resize((341, 256), Image.BILINEAR))[16:240, 58:282]
    np.testing.assert_array_equal(out, ref)


def test_train_transform_shapes_ranges_and_seeding():
    img = Image.fromarray(np.full((120, 90, 3), 200, np.uint8))
    a = data.train_transform(img, np.random.default_rng(3), size=64)
    b = data.train_transform(img, np.random.default_rng(3), size=64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.full(a.shape, 200, np.uint8))
    crops = {
        data.train_transform(
            Image.fromarray(
                np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
            ),
            np.random.default_rng(s),
            size=32,
        ).tobytes()
        for s in range(5)
    }
    assert len(crops) == 5


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_batches_keep_order_and_skip_unreadable_images(folder, workers):
    (folder / "cat" / "broken.png").write_bytes(b"not a png")
    src = data.ImageFolder(str(folder))
    skipped = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = list(
            loader.batches(
                src,
                range(len(src)),
                lambda img, i: data.eval_transform(img, size=16, resize=18),
                4,
                workers=workers,
                skipped=skipped,
            )
        )
    broken = src.paths.index(str(folder / "cat" / "broken.png"))
    assert skipped == [broken]
    assert [str(w.message).split(": ")[0] for w in caught] == [
        f"skipping unreadable image {folder / 'cat' / 'broken.png'}"
    ]
    indices = np.concatenate([b.indices for b in out])
    assert indices.tolist() == [i for i in range(len(src)) if i != broken]
    assert np.concatenate([b.labels for b in out]).tolist() == src.labels[indices].tolist()
    assert out[0].images.shape == (4, 16, 16, 3)


def _tiny_variables(rng_seed=0):
    model = models.backbone("tiny")
    return {"backbone": model.init(jax.random.key(rng_seed), jnp.zeros((1, 32, 32, 3)))}


@pytest.mark.slow
def test_extracted_class_means_equal_direct_computation(folder, tmp_path):
    src = data.ImageFolder(str(folder))
    variables = _tiny_variables()
    res = extract.extract(
        src,
        variables,
        "tiny",
        image_size=32,
        resize=36,
        batch_size=3,
        workers=2,
        keep_features=True,
    )
    model = models.backbone("tiny")
    direct = direct_features(model, variables, src, 32, 36)
    np.testing.assert_allclose(res.features, direct, rtol=1e-5, atol=1e-6)
    given = {}

    def into(shape):
        given["map"] = np.lib.format.open_memmap(str(tmp_path / "f.npy"), "w+", np.float32, shape)
        return given["map"]

    mapped = extract.extract(
        src, variables, "tiny", image_size=32, resize=36, batch_size=3, features_into=into
    )
    assert mapped.features is given["map"]
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), res.features)
    for c in range(3):
        np.testing.assert_allclose(
            res.means[c], direct[src.labels == c].mean(0), rtol=1e-5, atol=1e-6
        )
    assert res.counts.tolist() == [4, 3, 2] and res.skipped == []


def _extract_argv(folder, weights):
    """``uotsel-train extract`` on ``folder`` with the tiny backbone at 32 x 32, quiet."""
    return ["extract", "--data", str(folder), "--arch", "tiny", "--weights", str(weights)] + [
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--quiet",
    ]


@pytest.mark.slow
def test_extract_command_writes_a_file_uotsel_select_reads(folder, tmp_path, capsys):
    from uotsel.cli import main as uotsel_main
    from uotsel_train.cli import main

    variables = _tiny_variables()
    convert.save_variables(variables, str(tmp_path / "w.npz"))
    out = tmp_path / "means.npz"
    code = main(
        [
            "extract",
            "--data",
            str(folder),
            "--arch",
            "tiny",
            "--weights",
            str(tmp_path / "w.npz"),
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--features-out",
            str(tmp_path / "f.npy"),
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0 and "3 class means from 9 images" in capsys.readouterr().out
    args = ["extract", "--data", str(folder), "--arch", "tiny", "--weights"]
    args += [str(tmp_path / "w.npz"), "--image-size", "32", "--batch-size", "4"]
    assert main([*args, "--out", str(tmp_path / "again.npz")]) == 0
    log = capsys.readouterr().err.splitlines()  # not a terminal: the first and the last line
    assert log[0].startswith("extracting 4/9 (44%) ") and " img/s ETA " in log[0]
    assert log[-1].startswith("extracting 9/9 (100%) ") and log[-1].endswith("ETA 0s")
    with np.load(out, allow_pickle=False) as m:
        assert m["means"].shape == (3, 16) and m["names"].tolist()[0] == "aardvark"
    assert np.load(tmp_path / "f.npy").shape == (9, 16)
    code = uotsel_main(
        [
            "select",
            "--source",
            str(out),
            "--strategy",
            "random",
            "--top-k",
            "2",
            "--out",
            str(tmp_path / "s.json"),
        ]
    )
    assert code == 0
    assert len(json.loads((tmp_path / "s.json").read_text())["selected_names"]) == 2
    code = main(
        [
            "extract",
            "--data",
            str(tmp_path / "nowhere"),
            "--arch",
            "tiny",
            "--weights",
            str(tmp_path / "w.npz"),
            "--out",
            str(tmp_path / "x.npz"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--data: image folder not found" in err[0]
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.slow
def test_extract_features_as_parts_read_back_as_the_single_file(folder, tmp_path):
    """``--features-out x.json`` from one process: an index and one part, read by
    ``uotsel.io.read_features`` (and so by ``uotsel kmeans``) as the ``.npy`` run's array."""
    args = _extract_argv(folder, tmp_path / "w.npz")
    convert.save_variables(_tiny_variables(), str(tmp_path / "w.npz"))
    assert (
        main([*args, "--out", str(tmp_path / "a.npz"), "--features-out", str(tmp_path / "a.npy")])
        == 0
    )
    assert (
        main([*args, "--out", str(tmp_path / "b.npz"), "--features-out", str(tmp_path / "b.json")])
        == 0
    )
    index = json.loads((tmp_path / "b.json").read_text())
    assert index["parts"] == [{"file": "b-00000-of-00001.npy", "rows": 9}]
    features = io.read_features(str(tmp_path / "b.json"), "--features")
    np.testing.assert_allclose(features[:], np.load(tmp_path / "a.npy"), rtol=1e-6, atol=1e-7)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_tfds_sources_read_mock_data_without_tensorflow():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        pets = data.TfdsSource("pets", "train")
        assert pets.name == "oxford_iiit_pet" and len(pets) == 12
        img, label = pets.load(3)
        assert img.mode == "RGB" and label == pets.labels[3]
        batch = next(  # in this process: the mock is this process's
            loader.batches(
                pets,
                range(4),
                lambda im, i: data.eval_transform(im, size=16, resize=18),
                4,
            )
        )
        assert batch.images.shape == (4, 16, 16, 3)
        # Caltech101 without its background class, labels renumbered.
        cal = data.TfdsSource("caltech101", "train")
        assert len(cal.classes) == 101 and "background_google" not in cal.classes
        assert cal.labels.max() < 101 and cal.labels.min() >= 0
        dtd = data.TfdsSource("dtd", "train")
        assert dtd.split == "train+validation"
    with pytest.raises(ValueError, match="data: TFDS data set 'no_such_dataset'"):
        data.TfdsSource("no_such_dataset", "train")


@pytest.mark.slow
def test_extract_command_reads_tfds(tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    from uotsel_train.cli import main

    convert.save_variables(_tiny_variables(), str(tmp_path / "w.npz"))
    args = [
        "extract",
        "--data",
        "tfds:pets",
        "--arch",
        "tiny",
        "--weights",
        str(tmp_path / "w.npz"),
        "--image-size",
        "32",
        "--quiet",
        "--out",
        str(tmp_path / "m.npz"),
    ]
    with tfds.testing.mock_data(num_examples=10):
        # 10 images cannot cover 37 classes: refused unless empty classes are allowed.
        assert main(args) == 2
        assert "pass --allow-empty-classes" in capsys.readouterr().err
        assert main([*args, "--allow-empty-classes"]) == 0
    with np.load(tmp_path / "m.npz", allow_pickle=False) as m:
        assert m["counts"].sum() == 10 and m["means"].shape == (37, 16)
    code = main(
        [
            "extract",
            "--data",
            "tfds:no_such_dataset",
            "--arch",
            "tiny",
            "--weights",
            str(tmp_path / "w.npz"),
            "--out",
            str(tmp_path / "x.npz"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 2
        and len(err) == 1
        and err[0].startswith(
            "uotsel-train extract: error: --data: TFDS data set 'no_such_dataset'"
        )
    )


@pytest.mark.parametrize("features, number", [("f.json", 2), ("f.json", 3), ("f.npy", 2)])
@pytest.mark.slow
def test_extract_outputs_all_or_nothing_when_a_write_fails(
    folder, tmp_path, tmp_path_factory, monkeypatch, capsys, features, number
):
    """A full disk at the means (2nd write) or the index (3rd, after the features' map): the
    earlier run's means, index and part stay as they were, and no temporary is left."""
    import errno
    import os

    out = tmp_path_factory.mktemp("out")
    args = _extract_argv(folder, tmp_path / "w.npz") + ["--out", str(out / "m.npz")]
    args += ["--features-out", str(out / features)]
    convert.save_variables(_tiny_variables(), str(tmp_path / "w.npz"))
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    convert.save_variables(_tiny_variables(1), str(tmp_path / "w.npz"))
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == number:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
