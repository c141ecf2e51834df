"""The source axis split over devices (uotsel.mesh): rules here, and the split paths against
the one-device path in processes with 8 CPU devices and with 2 processes."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from sharded_worker import features, samples

import uotsel
from uotsel import mesh as meshes

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)


def test_resolve_rules():
    assert meshes.resolve("off", 10**6, 10**4, 4) is None
    assert meshes.resolve("auto", 10, 10, 4) is None
    mesh = meshes.resolve("on", 10, 10, 4)
    assert mesh.axis_names == (meshes.AXIS,) and mesh.size == jax.device_count()
    assert meshes.resolve(mesh, 10, 10, 4) is mesh
    with pytest.raises(ValueError, match="shard: must be one of auto, on, off"):
        meshes.resolve("yes", 10, 10, 4)
    other = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
    with pytest.raises(ValueError, match="shard: the mesh needs an axis named 'sources'"):
        uotsel.transport(np.eye(3), np.eye(3), shard=other)
    with pytest.raises(ValueError, match="devices: needs at least one"):
        meshes.source_mesh([])


def test_padded_size():
    mesh = type("M", (), {"shape": {meshes.AXIS: 8}})()
    assert [meshes.padded_size(n, mesh) for n in (1, 8, 9, 203)] == [8, 8, 16, 208]


@pytest.mark.slow
def test_mesh_of_one_device_equals_no_mesh():
    source, target = features()
    one = uotsel.transport(source, target, shard="off")
    split = uotsel.transport(source, target, shard="on")
    np.testing.assert_allclose(one.log_row_sums, split.log_row_sums, atol=1e-6)
    assert int(one.n_iters) == int(split.n_iters)


def _env(devices):
    flags = f"--xla_force_host_platform_device_count={devices}"
    path = os.pathsep.join(filter(None, [ROOT, HERE, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": path}


@pytest.mark.slow
def test_eight_devices_match_one():
    """tests/multidevice_cases.py in a process that sees 8 CPU devices."""
    cases = os.path.join(HERE, "multidevice_cases.py")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", cases],
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


@pytest.mark.slow
def test_two_processes_match_one_device(tmp_path):
    out, port = tmp_path / "rows.npz", _free_port()
    worker = os.path.join(HERE, "sharded_worker.py")
    procs = [
        subprocess.Popen([sys.executable, worker, str(out), str(i), "2", port], env=_env(3))
        for i in range(2)
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    got = np.load(out)
    assert int(got["devices"]) == 6  # 3 per process: 301 rows padded to 306
    one = uotsel.transport(*features(), shard="off")
    assert int(got["n_iters"]) == int(one.n_iters)
    np.testing.assert_allclose(got["rows"], one.log_row_sums, atol=2e-5)
    np.testing.assert_allclose(got["cols"], one.log_col_sums, atol=2e-5)
    clusters = uotsel.kmeans(samples(), 5, seed=4, shard="off")
    np.testing.assert_array_equal(got["assignment"], clusters.assignment)
    np.testing.assert_allclose(got["centroids"], clusters.centroids, atol=2e-5)
    np.testing.assert_allclose(got["objective"], clusters.objective, rtol=1e-5)


@pytest.mark.slow
def test_cli_on_two_processes_writes_what_one_process_writes(tmp_path):
    """``uotsel kmeans`` and ``uotsel select`` with ``--distributed --shard on`` on 2 processes
    of 2 devices each: process 0 writes the same clusters and selection as one process."""
    np.save(tmp_path / "f.npy", samples())
    source, target = features()
    np.savez(tmp_path / "s.npz", means=source)
    np.savez(tmp_path / "t.npz", means=target)
    commands = {
        "kmeans": ["kmeans", "--features", str(tmp_path / "f.npy"), "--k", "5", "--quiet"],
        "select": ["select", "--source", str(tmp_path / "s.npz"), "--target"]
        + [str(tmp_path / "t.npz"), "--top-k", "30"],
    }
    suffix = {"kmeans": "npz", "select": "json"}
    for name, command in commands.items():
        one = tmp_path / f"one.{suffix[name]}"
        run = [sys.executable, "-m", "uotsel", *command, "--shard", "on"]
        subprocess.run([*run, "--out", str(one)], env=_env(1), check=True, capture_output=True)
        two = tmp_path / f"two.{suffix[name]}"
        port = _free_port()
        cluster = ["--distributed", "--coordinator", f"localhost:{port}", "--num-processes", "2"]
        procs = [
            subprocess.Popen(
                [*run, "--out", str(two), *cluster, "--process-id", str(i)],
                env=_env(2),
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        outs = [p.communicate(timeout=600)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
        assert f"-> {two}" in outs[0] and "->" not in outs[1]  # only process 0 reports
        if name == "kmeans":
            a, b = np.load(one), np.load(two)
            np.testing.assert_array_equal(a["assignment"], b["assignment"])
            np.testing.assert_allclose(a["means"], b["means"], atol=1e-5)
        else:
            a, b = json.loads(one.read_text()), json.loads(two.read_text())
            assert a["ranking"] == b["ranking"]
            np.testing.assert_allclose(a["log_scores"], b["log_scores"], atol=2e-5)


def test_cluster_flags_need_distributed(tmp_path, capsys):
    from uotsel.cli import main

    np.save(tmp_path / "f.npy", samples())
    code = main(
        ["kmeans", "--features", str(tmp_path / "f.npy"), "--k", "2", "--out"]
        + [str(tmp_path / "c.npz"), "--coordinator", "localhost:1"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == [
        "uotsel kmeans: error: --coordinator: given without --distributed"
    ]
    assert not (tmp_path / "c.npz").exists()
