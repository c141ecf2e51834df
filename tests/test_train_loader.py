"""The grain input pipeline: batches as a function of the step whatever the workers, resume with
other worker counts, uint8 pixels normalised on the device, and worker processes that die."""

import json
import time

import numpy as np
import pytest

pytest.importorskip("grain")
pytest.importorskip("orbax.checkpoint")

import jax
import jax.numpy as jnp
from PIL import Image
from train_helpers import KillingSource, image_folder, memory_cfg, normalised, spawned_children

from uotsel_train import (
    augment,
    data,
    input_pipeline,
    loader,
    models,
    parallel,
    streams,
    train,
)


@pytest.fixture(scope="module")
def memory():
    """A 2-class target (8 images) and a 3-class pre-training set (9 images), 16 px."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(17, 20, 18, 3), dtype=np.uint8)
    labels = np.array([0, 1] * 4 + [0, 1, 2] * 3)
    target = data.ArraySource(images[:8], labels[:8], ["a", "b"])
    pretrain = data.ArraySource(images[8:], labels[8:], ["p", "q", "r"])
    return target, pretrain


def _inputs(memory, cfg, target=None):
    t, pretrain = memory
    target = target or t
    return input_pipeline.Inputs(
        target=target,
        train_indices=np.arange(len(target)),
        val_indices=np.zeros(0, np.int64),
        test=t,
        pretrain=pretrain,
        pretrain_indices=streams.selected_samples(pretrain.labels, [0, 2]),
        num_source_classes=3 if cfg.objective == "labelled" else 0,
    )


def _run(ds, workers, prefetch=2):
    with loader.iterate(ds, workers, prefetch) as it:
        return list(it)


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if key == "bad":
            assert a[key] == b[key]
        else:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


@pytest.mark.parametrize("objective", ["labelled", "unlabelled"])
def test_a_step_batch_is_its_seeded_views_of_its_stream_positions(memory, objective):
    cfg = memory_cfg(objective=objective, seed=3)
    inputs = _inputs(memory, cfg)
    ds = input_pipeline.steps(cfg, inputs, parallel.data_mesh())
    target_order = loader.stream_order(inputs.train_indices, 3)
    source_order = loader.stream_order(inputs.pretrain_indices, 4)
    for step in (0, 1, 5):  # step 5 is in the target's third and the source's fourth epoch
        got = ds[step]
        t_idx = [target_order[step * 4 + r] for r in range(4)]
        s_idx = [source_order[step * 2 + r] for r in range(2)]
        for row, i in enumerate(t_idx):  # an independent recomputation of each crop
            img = Image.fromarray(memory[0].images[i])
            rng = np.random.default_rng([3, step, 0, i, 0])
            want = np.asarray(data.random_resized_crop(img, rng, 16))
            np.testing.assert_array_equal(got["target_images"][row], want)
        assert got["target_labels"].tolist() == memory[0].labels[t_idx].tolist()
        assert got["target_images"].dtype == np.uint8
        views = ("train",) if objective == "labelled" else ("weak", "strong")
        for name in views:
            number = augment.VIEW_NUMBERS[name]
            for row, i in enumerate(s_idx):
                img = Image.fromarray(memory[1].images[i])
                rng = np.random.default_rng([3, step, 1, i, number])
                _, _, make = augment.view(name, 16)
                np.testing.assert_array_equal(got[f"source_{name}_images"][row], make(img, rng))
        assert ("source_labels" in got) == (objective == "labelled")


@pytest.mark.slow
def test_batches_are_the_same_whatever_the_workers_and_the_first_step(memory):
    cfg = memory_cfg(objective="unlabelled")
    ds = input_pipeline.steps(cfg, _inputs(memory, cfg), parallel.data_mesh())
    here = _run(ds[0:7], 0)
    for got, want in zip(_run(ds[0:7], 2, prefetch=3), here, strict=True):
        _same(got, want)
    for got, want in zip(_run(ds[3:7], 1), here[3:], strict=True):
        _same(got, want)


@pytest.mark.slow
def test_a_resume_with_other_workers_and_prefetch_is_bit_identical(tmp_path, memory):
    def fit(out, cfg, **kw):
        backbone = models.backbone("tiny").init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))
        return train.fit(cfg, _inputs(memory, cfg), backbone, str(out), log=lambda x: None, **kw)

    whole = fit(tmp_path / "whole", memory_cfg())
    fit(tmp_path / "split", memory_cfg(), until_epoch=1)
    resumed = fit(tmp_path / "split", memory_cfg(workers=2, prefetch=3), resume=True)
    assert resumed.step == whole.step == 6
    for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_a_worker_that_dies_is_named_with_its_image_and_the_run_resumes(tmp_path, memory):
    armed = tmp_path / "armed"
    target = KillingSource(memory[0], victim=5, armed=armed)
    cfg = memory_cfg(objective="vanilla", workers=2)
    backbone = models.backbone("tiny").init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))

    def fit(**kw):
        inputs = _inputs(memory, cfg, target)
        return train.fit(cfg, inputs, backbone, str(tmp_path / "run"), log=lambda x: None, **kw)

    fit(until_epoch=1)
    armed.write_text("")
    with pytest.raises(
        loader.WorkerDied,
        match=r"^data worker process [01] of 2 died \(exit code -9\) while reading "
        r"in-memory image 5$",
    ):
        fit(resume=True)
    deadline = time.monotonic() + 10
    while spawned_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spawned_children() == []  # no worker left behind, none a zombie
    armed.unlink()
    assert fit(resume=True).step == 6  # the checkpoint of epoch 1 is intact


def test_a_dead_worker_ends_the_command_with_status_4(tmp_path, monkeypatch, capsys):
    from uotsel_train.cli import main

    def dies(*args, **kwargs):
        raise loader.WorkerDied("data worker process 1 of 4 died (exit code -9) while reading x")

    monkeypatch.setattr(train, "run", dies)
    argv = ["finetune", "--config", "table1_resnet18", "--out-dir", str(tmp_path / "r")]
    weights = tmp_path / "w.npz"
    np.savez(weights, x=np.zeros(1))
    sel = tmp_path / "s.json"
    sel.write_text(json.dumps({}))
    argv += [f"--config.weights={weights}", f"--config.target={tmp_path}"]
    argv += [f"--config.pretrain={tmp_path}", f"--config.selection={sel}"]
    assert main(argv) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "uotsel-train finetune: error: data worker process 1 of 4 died (exit code -9) while "
        "reading x"
    ]


def test_decoding_gives_the_pixels_of_a_plain_rgb_conversion(tmp_path):
    root = tmp_path / "folder" / "c"
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "a.jpg", quality=90)
    Image.fromarray(pixels[..., 0]).save(root / "b.png")
    Image.fromarray(pixels).convert("P").save(root / "c.png")
    Image.fromarray(pixels).convert("RGBA").save(root / "d.png")
    Image.fromarray(pixels).convert("CMYK").save(root / "e.jpg")
    src = data.ImageFolder(str(tmp_path / "folder"))
    for i, path in enumerate(src.paths):
        img, _ = src.load(i)
        with Image.open(path) as ref:
            np.testing.assert_array_equal(np.asarray(img), np.asarray(ref.convert("RGB")))
        assert img.mode == "RGB"


def test_uint8_pixels_are_normalised_on_the_device_as_on_the_host():
    pixels = np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 16, 16, 3)
    got = np.asarray(jax.jit(models.normalise)(pixels))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, normalised(pixels), rtol=0, atol=2e-6)


def test_unreadable_training_images_are_replaced_and_named(tmp_path):
    root = image_folder(tmp_path / "t", 2, 3, 0)
    (tmp_path / "t" / "c0" / "bad.png").write_bytes(b"\x89PNG broken")
    target = data.ImageFolder(root)
    cfg = memory_cfg(objective="vanilla", batch_size=7)
    inputs = input_pipeline.Inputs(
        target, np.arange(len(target)), np.zeros(0, np.int64), None, None, None, 0
    )
    batch = input_pipeline.steps(cfg, inputs, parallel.data_mesh())[0]
    bad = target.paths.index(str(tmp_path / "t" / "c0" / "bad.png"))
    assert [b[:2] for b in batch["bad"]] == [(bad, target.paths[bad])]
    assert batch["target_images"].shape == (7, 16, 16, 3)  # the batch keeps its size
    everything = {x.tobytes() for x in batch["target_images"]}
    assert len(everything) == 6  # six readable images, one of them twice
