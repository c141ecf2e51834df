import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("orbax.checkpoint")

import jax
from train_helpers import image_folder

from uotsel_train import feed, parallel

WORKER = os.path.join(os.path.dirname(__file__), "fit_worker.py")


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


def test_feeder_keeps_order_and_hands_over_errors():
    with feed.Feeder(lambda s: s * s, start=3, depth=2) as feeder:
        assert [feeder.next() for _ in range(4)] == [9, 16, 25, 36]

    def broken(s):
        if s == 2:
            raise ValueError("data: broken at 2")
        return s

    feeder = feed.Feeder(broken, start=0)
    assert feeder.next() == 0 and feeder.next() == 1
    with pytest.raises(ValueError, match="broken at 2"):
        feeder.next()
    feeder.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


def _launch(args, env_extra=None, processes=1):
    env = {**os.environ, **(env_extra or {})}
    if processes == 1:
        procs = [subprocess.Popen([sys.executable, WORKER, *args], env=env)]
    else:
        port = _free_port()
        procs = [
            subprocess.Popen([sys.executable, WORKER, *args, str(i), str(processes), port], env=env)
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


def test_two_devices_train_like_one(one_device):
    folders, out = one_device
    two = out.parent / "two_devices"
    _launch([*folders, str(two)], {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    _same_training(out, two)


def test_two_processes_train_like_one(one_device):
    folders, out = one_device
    two = out.parent / "two_processes"
    _launch([*folders, str(two)], {"XLA_FLAGS": ""}, processes=2)
    _same_training(out, two)
