import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

import jax
from train_helpers import image_folder, recorded

from uotsel import io
from uotsel_train import parallel

WORKER = os.path.join(os.path.dirname(__file__), "fit_worker.py")
SAMPLES_WORKER = os.path.join(os.path.dirname(__file__), "samples_fit_worker.py")


def test_single_process_placement():
    mesh = parallel.data_mesh()
    assert mesh.size == jax.device_count()
    assert parallel.local_rows(mesh, 8) == slice(0, 8)
    batch = parallel.global_batch(mesh, {"x": np.arange(8.0)}, {"x": 8})
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(8.0))
    tree = parallel.replicate(mesh, {"w": np.ones((2, 3)), "n": 3})
    assert tree["w"].sharding.is_fully_replicated and int(tree["n"]) == 3
    assert len(batch["x"].sharding.device_set) == jax.device_count()
    with pytest.raises(ValueError, match="batch_size: 7 does not split"):
        parallel.check_divisible(type("M", (), {"size": 2})(), "batch_size", 7)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


def _launch(args, env_extra=None, processes=1, worker=WORKER):
    env = {**os.environ, **(env_extra or {})}
    if processes == 1:
        procs = [subprocess.Popen([sys.executable, worker, *args], env=env)]
    else:
        port = _free_port()
        procs = [
            subprocess.Popen([sys.executable, worker, *args, str(i), str(processes), port], env=env)
            for i in range(processes)
        ]
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0] * processes


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    base = tmp_path_factory.mktemp("parallel")
    folders = (image_folder(base / "target", 2, 4, 0), image_folder(base / "pretrain", 3, 3, 1))
    out = base / "one"
    _launch([*folders, str(out)], {"XLA_FLAGS": ""})
    return folders, out


def _same_training(a, b):
    pa, pb = np.load(a / "params.npz"), np.load(b / "params.npz")
    assert sorted(pa.files) == sorted(pb.files)
    for k in pa.files:  # same global batches; only the order of summation differs
        np.testing.assert_allclose(pa[k], pb[k], rtol=1e-4, atol=1e-5, err_msg=k)
    ea = json.loads((a / "eval.json").read_text())
    eb = json.loads((b / "eval.json").read_text())
    assert ea["test_top1"] == pytest.approx(eb["test_top1"], abs=1 / 8 + 1e-9)


@pytest.mark.slow
def test_two_devices_train_like_one(one_device):
    folders, out = one_device
    two = out.parent / "two_devices"
    _launch([*folders, str(two)], {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    _same_training(out, two)


@pytest.mark.slow
def test_two_processes_train_like_one(one_device):
    folders, out = one_device
    two = out.parent / "two_processes"
    _launch([*folders, str(two)], {"XLA_FLAGS": ""}, processes=2)
    _same_training(out, two)


@pytest.mark.slow
def test_two_processes_train_on_a_per_sample_list_like_one(tmp_path):
    """The ``samples`` setting (a ``--samples-out`` list, best first) on two processes: each
    trains on the listed samples, loads pre-training images only from them (its own rows of
    every batch: together, the images one process loads), and both end with the parameters
    of the one-process run."""
    folders = (
        image_folder(tmp_path / "target", 2, 4, 0),
        image_folder(tmp_path / "pretrain", 3, 3, 1),
    )
    listed = np.array([7, 1, 4, 8])  # of the 9 pre-training images, in no order
    np.save(tmp_path / "ps.npy", listed)
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*folders, str(tmp_path / "ps.npy")]
    _launch([*args, str(one)], {"XLA_FLAGS": ""}, worker=SAMPLES_WORKER)
    _launch([*args, str(two)], {"XLA_FLAGS": ""}, processes=2, worker=SAMPLES_WORKER)
    for out, process in ((one, 0), (two, 0), (two, 1)):
        trained = np.load(out / f"pretrain-{process}.npy")
        np.testing.assert_array_equal(trained, np.sort(listed))
    alone = recorded(one / "loads-0.txt")
    assert alone.size == 4 * 4  # 2 epochs of 2 steps, 4 pre-training images a step
    assert set(alone.tolist()) == set(listed.tolist())  # the stream passes over the list
    halves = [recorded(two / f"loads-{i}.txt") for i in range(2)]
    assert [h.size for h in halves] == [8, 8]  # each process loads its 2 rows of every step
    for half in halves:
        assert set(half.tolist()) <= set(listed.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate(halves)), np.sort(alone))
    _same_training(one, two)
    p0, p1 = np.load(two / "params.npz"), np.load(two / "params-1.npz")
    assert sorted(p0.files) == sorted(p1.files)
    for k in p0.files:  # one replicated state: the same on both processes
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)


EXTRACT_WORKER = os.path.join(os.path.dirname(__file__), "extract_worker.py")


def _extract_run(folder, out, devices, processes=1):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    args = [sys.executable, EXTRACT_WORKER, folder, str(out)]
    if processes == 1:
        procs = [subprocess.Popen(args, env=env)]
    else:
        port = _free_port()
        procs = [
            subprocess.Popen([*args, str(i), str(processes), port], env=env)
            for i in range(processes)
        ]
    assert [p.wait(timeout=600) for p in procs] == [0] * processes
    return [np.load(f"{out}-{i}.npz") for i in range(processes)]


@pytest.mark.slow
def test_extraction_over_devices_and_processes_matches_one_device(tmp_path):
    """Batches of 3 over 2 devices (one blank padding image per batch), and two processes
    each extracting its own half: the class means and every image's features of one device."""
    folder = image_folder(tmp_path / "images", 3, 5, 2)
    (one,) = _extract_run(folder, tmp_path / "one", 1)
    (two,) = _extract_run(folder, tmp_path / "two", 2)
    halves = _extract_run(folder, tmp_path / "halves", 1, processes=2)
    assert int(two["devices"]) == 2
    np.testing.assert_allclose(two["features"], one["features"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(two["means"], one["means"], rtol=1e-5, atol=1e-6)
    assert [h["share"].tolist() for h in halves] == [list(range(8)), list(range(8, 15))]
    for half in halves:
        np.testing.assert_allclose(half["means"], one["means"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(half["counts"], one["counts"])
        rows = one["features"][half["share"]]
        np.testing.assert_allclose(half["features"], rows, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["npy", "json"])
@pytest.mark.slow
def test_extract_command_on_two_processes_writes_the_features(tmp_path, kind):
    """``uotsel-train extract --distributed`` on 2 processes: process 0 writes the class means,
    both processes their rows of one features file (``.npy``) or each its own part beside an
    index (``.json``); both equal a one-process run's. The unreadable image (the last, in
    process 1's share) has unit id -1 in the means file process 0 writes."""
    import jax.numpy as jnp

    from uotsel_train import convert, models

    folder = image_folder(tmp_path / "images", 3, 5, 3)
    (tmp_path / "images" / "c2" / "broken.png").write_bytes(b"not a png")
    variables = {
        "backbone": models.backbone("tiny").init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    }
    weights = str(tmp_path / "w.npz")
    convert.save_variables(variables, weights)
    cli = "import sys; from uotsel_train.cli import main; sys.exit(main(sys.argv[1:]))"
    base = [sys.executable, "-c", cli, "extract", "--data", folder, "--arch", "tiny"]
    base += ["--weights", weights, "--image-size", "16", "--batch-size", "2", "--quiet"]
    env = {**os.environ, "XLA_FLAGS": ""}

    def outputs(name, suffix):
        return [
            "--out",
            str(tmp_path / f"{name}.npz"),
            "--features-out",
            f"{tmp_path / name}.{suffix}",
        ]

    subprocess.run([*base, *outputs("one", "npy")], env=env, check=True, capture_output=True)
    port = _free_port()
    cluster = ["--distributed", "--coordinator", f"localhost:{port}", "--num-processes", "2"]
    procs = [
        subprocess.Popen([*base, *outputs("two", kind), *cluster, "--process-id", str(i)], env=env)
        for i in range(2)
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    np.testing.assert_allclose(two["means"], one["means"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(two["counts"], one["counts"])
    assert (
        two["assignment"].tolist()
        == one["assignment"].tolist()
        == [0] * 5 + [1] * 5 + [2] * 5 + [-1]
    )
    features = io.read_features(f"{tmp_path / 'two'}.{kind}", "--features")
    np.testing.assert_allclose(features[:], np.load(tmp_path / "one.npy"), rtol=1e-5, atol=1e-6)
    if kind == "json":
        assert [p.shape[0] for p in features.parts] == [8, 8]
        parts = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("two-"))
        assert parts == ["two-00000-of-00002.npy", "two-00001-of-00002.npy"]
    left = [p.name for p in tmp_path.iterdir() if "partial" in p.name or p.name.startswith(".")]
    assert left == []
