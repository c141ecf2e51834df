"""Sharded paths against the one-device path, in a process with 8 CPU devices.

Run by tests/test_sharding.py as ``XLA_FLAGS=--xla_force_host_platform_device_count=8
python -m pytest tests/multidevice_cases.py``; skipped anywhere with fewer devices.
"""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from reference import pot_plan

import uotsel
from uotsel import feature_transport, io, lloyd, samples, unbalanced
from uotsel import mesh as meshes

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")


@pytest.fixture
def features():
    rng = np.random.default_rng(7)
    # 203 rows: not a multiple of 8, so the padding rows are exercised.
    return rng.normal(size=(203, 24)).astype(np.float32), rng.normal(size=(11, 24)).astype(
        np.float32
    )


def _same(a, b, atol=2e-5):
    assert int(a.n_iters) == int(b.n_iters)
    assert bool(a.converged) and bool(b.converged)
    np.testing.assert_allclose(a.log_row_sums, b.log_row_sums, atol=atol)
    np.testing.assert_allclose(a.log_col_sums, b.log_col_sums, atol=atol)
    np.testing.assert_allclose(a.f, b.f, atol=atol)
    np.testing.assert_allclose(a.g, b.g, atol=atol)


@pytest.mark.parametrize("cost", uotsel.COSTS)
def test_split_equals_one_device(features, cost):
    source, target = features
    weights = np.linspace(0.5, 2.0, len(source)).astype(np.float32)
    kw = dict(cost=cost, eps_c=0.05, eps=0.5, tau_target=20.0, source_weights=weights)
    one = uotsel.transport(source, target, shard="off", **kw)
    split = uotsel.transport(source, target, shard="on", **kw)
    assert split.log_row_sums.shape == (len(source),)
    _same(one, split)


def test_split_matches_pot_float64(features):
    source, target = features
    split = uotsel.transport(source, target, shard="on", threshold=1e-6)
    cost = np.asarray(uotsel.cost_matrix(source.astype(np.float64), target.astype(np.float64)))
    plan = pot_plan(cost)
    np.testing.assert_allclose(np.exp(split.log_row_sums), plan.sum(1), rtol=5e-5)
    np.testing.assert_allclose(np.exp(split.log_col_sums), plan.sum(0), rtol=5e-5)


def test_split_hands_over_to_the_log_domain():
    """The case of test_transport's hand-over: the second program runs on the mesh too."""
    source = np.array([[0.0]] * 5 + [[300.0]] * 5, np.float32)
    target = np.array([[0.0], [200.0]], np.float32)
    before = feature_transport._transport_rest._cache_size()
    split = uotsel.transport(source, target, cost="l2", tau_target=0.05, shard="on")
    assert feature_transport._transport_rest._cache_size() == before + 1
    one = uotsel.transport(source, target, cost="l2", tau_target=0.05, shard="off")
    _same(one, split)


def test_split_with_rows_beyond_the_direct_norm_range(features):
    source, target = features
    source = source * np.float32(2.0**60)  # the exact-rescaling cosine program
    _same(
        uotsel.transport(source, target, shard="off"), uotsel.transport(source, target, shard="on")
    )


def test_each_device_holds_an_eighth_of_the_cost():
    n, m = 4096, 256
    source = np.ones((n, 8), np.float32)
    target = np.ones((m, 8), np.float32)
    settings = unbalanced.prepare((), n, m, np.float32)

    def temp_bytes(mesh):
        if mesh is None:
            args = (jax.device_put(source), jax.device_put(target), settings)
        else:
            args = feature_transport._on_mesh(source, target, settings, mesh)
        program = feature_transport._transport_first.lower(
            "cosine", args[0], args[1], np.float32(0.01), n, args[2], False, mesh
        )
        return program.compile().memory_analysis().temp_size_in_bytes

    one, split = temp_bytes(None), temp_bytes(meshes.source_mesh())
    assert one >= n * m * 4  # the whole cost
    assert split <= one / 6  # an eighth of it, and small vectors


def test_a_mesh_of_some_devices(features):
    source, target = features
    mesh = meshes.source_mesh(jax.devices()[:3])
    out = uotsel.transport(source, target, shard=mesh)
    _same(uotsel.transport(source, target, shard="off"), out)


def test_auto_splits_only_large_problems(monkeypatch):
    assert meshes.resolve("auto", 1000, 1000, 4) is None
    monkeypatch.setattr(meshes, "SHARD_ABOVE_BYTES", 1000 * 1000 * 4 - 1)
    assert meshes.resolve("auto", 1000, 1000, 4).size == 8


def test_select_ranks_alike(features):
    source, target = features
    one = uotsel.select(source, target, top_k=20, shard="off")
    split = uotsel.select(source, target, top_k=20, shard="on")
    gaps = np.diff(np.sort(one.log_scores))
    assert gaps.min() > 1e-4  # no near-ties, so the rankings must be equal
    np.testing.assert_array_equal(one.ranking, split.ranking)


def test_cli_shard_on_writes_the_same_selection(features, tmp_path):
    source, target = features
    np.savez(tmp_path / "s.npz", means=source)
    np.savez(tmp_path / "t.npz", means=target)
    outs = {}
    for shard in ("on", "off"):
        out = tmp_path / f"{shard}.json"
        subprocess.run(
            [sys.executable, "-m", "uotsel", "select", "--source", str(tmp_path / "s.npz")]
            + ["--target", str(tmp_path / "t.npz"), "--out", str(out), "--shard", shard],
            check=True,
            capture_output=True,
        )
        outs[shard] = json.loads(out.read_text())
    assert outs["on"]["ranking"] == outs["off"]["ranking"]
    np.testing.assert_allclose(outs["on"]["log_scores"], outs["off"]["log_scores"], atol=2e-5)
    np.testing.assert_allclose(
        outs["on"]["target_mass_total"], outs["off"]["target_mass_total"], rtol=1e-5
    )


def _blobs(n=2003, k=12, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    return (centers[rng.integers(0, k, size=n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def _same_clustering(a, b):
    np.testing.assert_array_equal(a.assignment, b.assignment)
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-5)
    np.testing.assert_allclose(a.centroids, b.centroids, atol=2e-5)
    np.testing.assert_allclose(a.means, b.means, atol=2e-5)
    np.testing.assert_array_equal(a.sizes, b.sizes)
    assert a.n_iters == b.n_iters


@pytest.mark.parametrize("spherical", [True, False])
def test_kmeans_split_equals_one_device(spherical):
    x = _blobs()
    kw = dict(seed=3, spherical=spherical, chunk_size=100)
    one = uotsel.kmeans(x, 12, shard="off", **kw)
    split = uotsel.kmeans(x, 12, shard="on", **kw)
    assert split.assignment.shape == (len(x),)
    _same_clustering(one, split)


@pytest.mark.parametrize("spherical", [True, False])
def test_assignment_step_on_the_mesh_reseeds_alike(spherical):
    """Centroids no sample is nearest to: the split step pools the farthest samples of every
    device and refills the empty clusters as the one-device step does."""
    x = _blobs(n=1003, k=4, d=8)
    if spherical:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    centroids = np.concatenate([x[:4], -50.0 * np.ones((3, 8), np.float32)])
    if spherical:
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    mesh = meshes.source_mesh()
    placed = samples.on_mesh(x, spherical, mesh)
    one = lloyd.assign(jax.device_put(x), centroids, spherical, 64)
    split = lloyd.assign_on_mesh(placed, centroids, spherical, 64, mesh, len(x))
    empty = np.asarray(one.counts) == 0
    assert empty.sum() >= 2
    np.testing.assert_array_equal(one.counts, split.counts)
    np.testing.assert_array_equal(np.asarray(one.labels), np.asarray(split.labels)[: len(x)])
    np.testing.assert_allclose(one.far[0], split.far[0], rtol=1e-6)
    refilled = lloyd.update(jax.device_put(x), one, centroids, spherical)
    refilled_split = lloyd.update(placed, split, centroids, spherical)
    np.testing.assert_allclose(refilled, refilled_split, atol=1e-5)
    farthest = x[np.asarray(one.far[1])[: empty.sum()]]  # the e-th empty, the e-th farthest
    np.testing.assert_allclose(np.asarray(refilled)[empty], farthest, atol=1e-6)


def test_kmeans_split_reads_a_memory_map_and_checks_rows(tmp_path):
    x = _blobs(n=517)
    path = tmp_path / "f.npy"
    np.save(path, x)
    mapped = np.load(path, mmap_mode="r")
    one = uotsel.kmeans(x, 5, seed=2, shard="off")
    _same_clustering(one, uotsel.kmeans(mapped, 5, seed=2, shard="on"))
    parts = [(str(tmp_path / f"p{i}.npy"), p) for i, p in enumerate(np.array_split(x, 3))]
    for name, part in parts:
        np.save(name, part)
    io.write_shards_index(str(tmp_path / "p.json"), [(a, len(b)) for a, b in parts], 16, x.dtype)
    in_parts = io.read_features(str(tmp_path / "p.json"), "features")
    _same_clustering(one, uotsel.kmeans(in_parts, 5, seed=2, shard="on"))
    # Rows left out (the zero rows of unreadable images): read in place, from the parts too.
    dead = np.array([0, 200, 516])
    live = np.delete(np.arange(len(x)), dead)
    alone = uotsel.kmeans(x[live], 5, seed=2, shard="off")
    for source in (mapped, in_parts):
        left = uotsel.kmeans(source, 5, seed=2, shard="on", exclude=dead)
        assert (left.assignment[dead] == -1).all()
        _same_clustering(alone, left._replace(assignment=left.assignment[live]))
    x[300] = np.nan
    with pytest.raises(ValueError, match="features: row 300 contains NaN or inf"):
        uotsel.kmeans(x, 5, shard="on")


def test_kmeans_cli_shard_on_writes_the_same_clusters(tmp_path):
    np.save(tmp_path / "f.npy", _blobs(n=600))
    outs = {}
    for shard in ("on", "off"):
        out = tmp_path / f"{shard}.npz"
        subprocess.run(
            [sys.executable, "-m", "uotsel", "kmeans", "--features", str(tmp_path / "f.npy")]
            + ["--k", "7", "--out", str(out), "--shard", shard, "--quiet"],
            check=True,
            capture_output=True,
        )
        outs[shard] = np.load(out)
    np.testing.assert_array_equal(outs["on"]["assignment"], outs["off"]["assignment"])
    np.testing.assert_allclose(outs["on"]["centroids"], outs["off"]["centroids"], atol=2e-5)


def test_per_sample_scores_split_equal_one_device(features, tmp_path):
    """Every chunk's rows over the 8 devices (a chunk of 37 rows padded to 40): the scores of
    one device, and the same samples from the command line."""
    from uotsel import per_sample

    source, target = features
    rng = np.random.default_rng(3)
    samples_ = rng.normal(size=(500, source.shape[1])).astype(np.float32)
    sel = uotsel.select(source, target, top_k=5, shard="off")
    one = per_sample.sample_scores(samples_, target, sel, chunk_size=37, shard="off")
    split = per_sample.sample_scores(samples_, target, sel, chunk_size=37, shard="on")
    np.testing.assert_allclose(split, one, rtol=0, atol=1e-4)
    ids = np.arange(500) % source.shape[0]
    means = uotsel.class_means(samples_, ids, source.shape[0]).means
    io.write_units(str(tmp_path / "s.npz"), means, assignment=ids)
    np.save(tmp_path / "f.npy", samples_)
    np.savez(tmp_path / "t.npz", means=target)
    outs = {}
    for shard in ("off", "on"):
        argv = [sys.executable, "-m", "uotsel", "select", "--source", str(tmp_path / "s.npz")]
        argv += ["--target", str(tmp_path / "t.npz"), "--features", str(tmp_path / "f.npy")]
        argv += ["--per-sample", "--budget-images", "40", "--shard", shard]
        argv += ["--out", str(tmp_path / f"{shard}.json")]
        argv += ["--samples-out", str(tmp_path / f"{shard}.npy")]
        subprocess.run(argv, check=True, capture_output=True)
        outs[shard] = np.load(tmp_path / f"{shard}.npy")
    np.testing.assert_array_equal(outs["on"], outs["off"])
    # rows in another order: the unit sums made on the split chunks refuse them too
    np.save(tmp_path / "f.npy", samples_[rng.permutation(500)])
    refused = subprocess.run(argv[:-2], capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("uotsel select: error: --features: the mean of unit ")
