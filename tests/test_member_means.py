"""Per-sample features held against the unit file they are scored with (uotsel.member_means):
each unit's rows must average to its feature, for class means and for k-means files."""

import numpy as np
import pytest

import uotsel
from uotsel import member_means
from uotsel.cli import main
from uotsel.clustering import kmeans


def _backbones(seed=0, n=240, k=6, dim=16):
    """The same ``n`` planted samples (``k`` classes of a 5-d latent) through two random
    "backbones" (a linear map and a ReLU each): ``(features_a, features_b, labels)``, both
    ``[n, dim]`` float32."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    latent = 2.0 * rng.normal(size=(k, 5))[labels] + rng.normal(size=(n, 5))
    a, b = (
        np.maximum(latent @ rng.normal(size=(5, dim)), 0.0).astype(np.float32) + 0.1
        for _ in range(2)
    )
    return a, b, labels


TARGET = np.random.default_rng(1).uniform(0.5, 1.5, size=(3, 16)).astype(np.float32)


def _select(features, units, ids, **kwargs):
    return uotsel.select_samples(
        features, units, TARGET, budget_images=20, unit_ids=ids, chunk_size=64, **kwargs
    )


# ---------------------------------------------------------------------------------------------
# The rule


def test_relative_differences_and_tolerances_by_hand():
    sums = np.array([[6.0, 8.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    norms = np.array([20.0, 0.0, 0.0, 3.0])
    counts = np.array([2, 0, 1, 3])
    units = np.array([[3.0, 4.0 + 0.5], [9.0, 9.0], [1.0, 0.0], [0.0, 0.0]])
    rel = member_means.relative_differences(sums, norms, counts, units)
    # unit 0: mean [3, 4], 0.5 away, mean norm 10; unit 1 has no rows; unit 2: zero rows and a
    # non-zero feature; unit 3: mean zero, feature zero
    assert rel[0] == pytest.approx(0.05) and np.isnan(rel[1])
    assert rel[2] == np.inf and rel[3] == 0.0
    u = 2.0**-24
    tol = member_means.tolerances(np.array([0, 1, 100, 10**6]), 64, 300, u)
    assert tol.tolist() == pytest.approx(
        [2**-10, 2**-10, 2**-10 + (63 + 99) * u, 2**-10 + (63 + 299) * u], rel=1e-12
    )


def test_check_names_the_worst_unit_in_one_line():
    counts = np.array([4, 4, 0])
    units = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    sums = 4 * np.array([[1.0, 0.0001], [0.0, 1.3], [0.0, 0.0]])
    norms = 4 * np.array([1.0, 1.3, 0.0])
    member_means.check(sums[:1], norms[:1], counts[:1], units[:1], (64, 1, 2.0**-24))
    with pytest.raises(ValueError) as err:
        member_means.check(sums, norms, counts, units, (64, 1, 2.0**-24), "--features")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "--features: the mean of unit 1's 4 rows differs from the unit's feature by 0.231 of "
        "their mean norm (tolerance 0.00098): not the features the units were computed from"
    )


# ---------------------------------------------------------------------------------------------
# What the unit files hold


@pytest.mark.slow
def test_kmeans_centroids_are_not_member_means_but_its_means_are():
    """The means of a k-means result are the float64 means of the final assignment's members
    (float32); Euclidean centroids are those of the assignment before, off by percents when it
    stops at max_iter, and also when it stops on tol (tol bounds the objective's progress, not
    the samples that move); spherical ones are unit vectors."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(2000, 4)).astype(np.float32)
    gaps = []
    for max_iter, tol in ((1, 1e-4), (300, 1e-3)):
        res = kmeans(
            x, 20, spherical=False, max_iter=max_iter, tol=tol, init_sample=30, init_restarts=1
        )
        assert res.converged == (max_iter > 1)
        members = uotsel.class_means(x, res.assignment, 20).means
        np.testing.assert_array_equal(res.means, members)
        gaps.append(
            np.max(
                np.linalg.norm(res.centroids - members, axis=1) / np.linalg.norm(members, axis=1)
            )
        )
    assert min(gaps) > 0.01, gaps
    a, _, _ = _backbones()
    res = kmeans(a, 6, seed=3)
    np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(res.means, uotsel.class_means(a, res.assignment, 6).means)


# ---------------------------------------------------------------------------------------------
# select_samples


@pytest.mark.slow
def test_the_features_of_the_units_pass_in_any_chunks_and_in_float16():
    a, _, labels = _backbones()
    means = uotsel.class_means(a, labels, 6).means
    picked = _select(a, means, labels)
    for chunk in (1, 7, 240):
        again = uotsel.select_samples(
            a, means, TARGET, budget_images=20, unit_ids=labels, chunk_size=chunk
        )
        assert again.samples.tolist() == picked.samples.tolist()
    _select(a.astype(np.float16), means, labels)  # each value rounded by up to 2^-11
    clusters = kmeans(a, 6, seed=3)
    _select(a, clusters.means, clusters.assignment)


@pytest.mark.slow
def test_features_of_another_backbone_or_order_are_refused():
    a, b, labels = _backbones()
    means = uotsel.class_means(a, labels, 6).means
    clusters = kmeans(a, 6, seed=3)
    shuffled = a[np.random.default_rng(5).permutation(a.shape[0])]
    found = []
    for features in (b, shuffled):
        for units, ids in ((means, labels), (clusters.means, clusters.assignment)):
            with pytest.raises(ValueError, match=r"^features: the mean of unit \d+'s") as err:
                _select(features, units, ids)
            found.append(float(str(err.value).split(" by ")[1].split()[0]))
            _select(features, units, ids, check_means=False)  # the caller's word
    assert min(found) > 0.5, found  # measured: 0.72 to 1.32, against a tolerance of 0.001
    _select(b, means, None)  # no unit ids: nothing to hold the features against
    inside = a.copy()  # rows reordered inside every unit: every mean stays, not seen
    for unit in range(6):
        rows = np.flatnonzero(labels == unit)
        inside[rows] = a[np.random.default_rng(unit).permutation(rows)]
    _select(inside, means, labels)
    with pytest.raises(TypeError, match=r"^check_means: expected True or False"):
        _select(a, means, labels, check_means="no")


# ---------------------------------------------------------------------------------------------
# The command line


@pytest.fixture
def files(tmp_path):
    a, b, labels = _backbones()
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    np.save(tmp_path / "shuffled.npy", a[np.random.default_rng(5).permutation(a.shape[0])])
    np.save(tmp_path / "labels.npy", labels)
    np.savez(tmp_path / "target.npz", means=TARGET)
    return tmp_path


def _cli(tmp, source, features, out, capsys):
    argv = ["select", "--source", tmp / source, "--target", tmp / "target.npz", "--per-sample"]
    argv += ["--budget-images", 20, "--features", tmp / features, "--out", tmp / out]
    argv += ["--samples-out", tmp / f"{out}.npy", "--scores-out", tmp / f"{out}-scores.npy"]
    code = main([str(x) for x in argv])
    return code, *capsys.readouterr()


@pytest.mark.slow
def test_the_cli_refuses_features_that_are_not_the_units_and_writes_nothing(files, capsys):
    tmp = files
    base = ["--features", tmp / "a.npy", "--quiet"]
    centroids = ["centroids", *base, "--labels", tmp / "labels.npy", "--out", tmp / "cm.npz"]
    assert main([str(x) for x in centroids]) == 0
    clusters = ["kmeans", *base, "--k", 6, "--seed", 3, "--out", tmp / "km.npz"]
    assert main([str(x) for x in clusters]) == 0
    capsys.readouterr()
    for source in ("cm.npz", "km.npz"):
        code, _, err = _cli(tmp, source, "a.npy", f"ok-{source}.json", capsys)
        assert code == 0 and err == "", err
        for features in ("b.npy", "shuffled.npy"):
            code, out, err = _cli(tmp, source, features, "no.json", capsys)
            assert code == 2 and out == "" and len(err.splitlines()) == 1, err
            assert err.startswith("uotsel select: error: --features: the mean of unit "), err
            assert " of their mean norm (tolerance 0.00098): not the features the units " in err
            made = sorted(p.name for p in tmp.iterdir() if p.name.startswith(("no", ".uotsel")))
            assert made == []
