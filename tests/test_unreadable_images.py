"""Images that cannot be read. ``uotsel-train extract`` leaves them out of the class means and
writes their per-sample unit id as -1 (in no unit; their feature row is zeros), and every
reader of the unit ids honours it: ``uotsel select`` counts them in no unit and never lists,
scores (``--scores-out`` holds ``-inf``) or chooses them, the member-means check leaves them
out, ``uotsel plot`` draws the scores, and training never draws them. An id below -1 is
refused everywhere with one line, and so is -1 where it cannot be honoured (a features + labels
file's ``labels``)."""

import json
import os

import numpy as np
import pytest

import uotsel
from uotsel import _checks, budget, io, member_means, per_sample
from uotsel.cli import main as uotsel_main

# ---------------------------------------------------------------------------------------------
# The rule (uotsel._checks.unit_ids) and the library


def test_unit_ids_are_units_or_minus_one_and_nothing_else():
    np.testing.assert_array_equal(_checks.unit_ids([0, -1, 2], "ids", 3), [0, -1, 2])
    assert _checks.unit_ids(np.zeros(0, np.int32), "ids", 3).dtype == np.int64
    with pytest.raises(ValueError, match=r"^ids: ids must be in \[0, 3\), or -1 \(no unit\); "):
        _checks.unit_ids([0, -2], "ids", 3)
    with pytest.raises(ValueError, match=r"^ids: .* got range \[0, 3\]$"):
        _checks.unit_ids([0, 3], "ids", 3)
    with pytest.raises(ValueError, match=r"^ids: ids must be 0 or more, or -1 \(no unit\)"):
        _checks.unit_ids([-5], "ids")
    with pytest.raises(ValueError, match=r"^ids: expected a 1-d array of integer unit ids"):
        _checks.unit_ids([0.5], "ids")


def test_a_sample_in_no_unit_is_counted_in_none_and_expanded_into_no_selection():
    ids = np.array([0, 2, -1, 2, 0])
    np.testing.assert_array_equal(budget.unit_sizes(3, unit_ids=ids), [2, 0, 2])
    np.testing.assert_array_equal(budget.unit_sizes(3, counts=[2, 0, 2], unit_ids=ids), [2, 0, 2])
    np.testing.assert_array_equal(uotsel.expand_to_samples([0, 2], ids, 3), [0, 1, 3, 4])
    with pytest.raises(ValueError, match=r"^unit_ids: ids must be in \[0, 3\), or -1"):
        budget.unit_sizes(3, unit_ids=[0, -2])


def _broken(rng):
    """24 samples of 4 units in 6 dimensions, rows 0, 9 and 23 unreadable (zeros, id -1: in
    chunks of 5, row 0 starts the first chunk and row 23 is in the padded last one), the unit
    means of the other rows, and a target of 2 units."""
    ids = np.arange(24) % 4
    features = rng.normal(size=(24, 6)).astype(np.float32) + 2.0 * np.eye(6, dtype=np.float32)[ids]
    dead = np.array([0, 9, 23])
    features[dead] = 0.0
    ids[dead] = -1
    live = ids >= 0
    means = uotsel.class_means(features[live], ids[live], 4).means
    return features, ids, dead, means, means[:2] + 0.1


@pytest.mark.slow
@pytest.mark.parametrize("cost", ["cosine", "l2", "sqeuclidean"])
def test_select_samples_never_scores_or_chooses_a_sample_in_no_unit(rng, cost):
    features, ids, dead, means, target = _broken(rng)
    kw = {"unit_ids": ids, "cost": cost, "n_groups": 2, "chunk_size": 5}
    picked = per_sample.select_samples(features, means, target, budget_images=21, **kw)
    assert sorted(picked.samples.tolist()) == np.flatnonzero(ids >= 0).tolist()
    live = np.delete(picked.scores, dead)
    assert np.isneginf(picked.scores[dead]).all() and np.isfinite(live).all()
    assert picked.score_range == (float(live.min()), float(live.max()))
    # the other rows score as they do without the unreadable ones
    rest = np.delete(features, dead, axis=0)
    alone = per_sample.sample_scores(rest, target, picked.units, chunk_size=5)
    np.testing.assert_allclose(live, alone, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(picked.unit_counts, np.bincount(ids[ids >= 0], minlength=4))
    message = r"^budget_images: 22 is more than the 21 samples in a unit \(3 of 24 are in none\)$"
    with pytest.raises(ValueError, match=message):
        per_sample.select_samples(features, means, target, budget_images=22, **kw)


@pytest.mark.slow
def test_a_bad_row_is_named_past_the_rows_in_no_unit(rng):
    features, ids, _, means, target = _broken(rng)
    kw = {"unit_ids": ids, "budget_images": 3, "chunk_size": 4}
    zero = features.copy()
    zero[5] = 0.0
    with pytest.raises(ValueError, match=r"^features: row 5 is all zeros"):
        per_sample.select_samples(zero, means, target, **kw)
    nan = features.copy()
    nan[10] = np.nan
    with pytest.raises(ValueError, match=r"^features: row 10 contains NaN or inf"):
        per_sample.select_samples(nan, means, target, **kw)


def _member_sums(features, ids):
    """:class:`member_means.MemberSums` of all ``features`` ``[N, D]`` in one chunk."""
    import jax.numpy as jnp

    sums = member_means.MemberSums(ids, 4)
    sums.add(jnp.asarray(features), jnp.asarray(sums.ids(0, len(ids), len(ids))))
    return sums


def test_member_means_leave_out_rows_in_no_unit(rng):
    features, ids, _, means, _ = _broken(rng)
    sums = _member_sums(features, ids)
    np.testing.assert_array_equal(sums.counts, [5, 5, 6, 5])
    np.testing.assert_array_equal(sums.ids(20, 24, 6), [0, 1, 2, 4, 4, 4])
    sums.check(means)
    # the unreadable rows as members of their classes: zeros in the units, not in their means
    with pytest.raises(ValueError, match=r"^features: the mean of unit .'s 6 rows differs"):
        _member_sums(features, np.arange(24) % 4).check(means)


def test_best_samples_never_take_a_score_of_minus_inf():
    scores = np.array([0.5, -np.inf, 2.0, -np.inf])
    assert per_sample.best_samples(scores, 2).tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"^budget_images: 3 is more than the 2 samples in a "):
        per_sample.best_samples(scores, 3)


def test_training_never_draws_a_sample_in_no_unit(tmp_path):
    from uotsel_train import selected, streams

    io.write_units(str(tmp_path / "m.npz"), np.eye(2), assignment=[0, -1, 1, 1])
    ids = selected.unit_ids(str(tmp_path / "m.npz"), 4)
    assert ids.tolist() == [0, -1, 1, 1]
    assert streams.selected_samples(ids, [1, 0]).tolist() == [0, 2, 3]
    np.save(tmp_path / "bad.npy", np.array([0, -2, 1]))
    with pytest.raises(ValueError) as err:
        selected.unit_ids(str(tmp_path / "bad.npy"), 3)
    assert str(err.value).startswith(f"unit_ids: {tmp_path / 'bad.npy'}: ids must be")


# ---------------------------------------------------------------------------------------------
# From uotsel-train extract to uotsel select and uotsel plot


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A pre-training folder of 3 classes x 3 images and one unreadable image (``c1/broken.png``)
    through ``uotsel-train extract --features-out``, and a target of 2 units near its classes 0
    and 2. Returns the folder, the paths and the index of the broken image."""
    pytest.importorskip("flax")
    import jax
    import jax.numpy as jnp
    from train_helpers import image_folder

    from uotsel_train import convert, data, models
    from uotsel_train.cli import main

    root = tmp_path_factory.mktemp("unreadable")
    folder = image_folder(root / "pre", 3, 3, 1)
    (root / "pre" / "c1" / "broken.png").write_bytes(b"not a png")
    backbone = models.backbone("tiny").init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))
    convert.save_variables({"backbone": backbone}, str(root / "w.npz"))
    argv = ["extract", "--data", folder, "--arch", "tiny", "--weights", str(root / "w.npz")]
    argv += ["--image-size", "16", "--workers", "0", "--quiet", "--out", str(root / "m.npz")]
    with pytest.warns(UserWarning, match="skipping unreadable image .*broken.png"):
        assert main([*argv, "--features-out", str(root / "f.npy")]) == 0
    means = np.load(root / "m.npz")["means"]
    io.write_units(str(root / "t.npz"), means[[0, 2]] * 1.01)
    broken = data.ImageFolder(folder).paths.index(str(root / "pre" / "c1" / "broken.png"))
    return {"root": root, "folder": folder, "broken": broken}


def _select(root, *extra):
    argv = ["select", "--source", root / "m.npz", "--target", root / "t.npz", *extra]
    return uotsel_main([str(a) for a in argv])


@pytest.mark.slow
def test_extract_writes_minus_one_for_an_unreadable_image(extracted):
    from uotsel_train import data

    root, broken = extracted["root"], extracted["broken"]
    labels = data.ImageFolder(extracted["folder"]).labels
    with np.load(root / "m.npz") as m:
        assert m["assignment"].tolist() == [
            -1 if i == broken else int(c) for i, c in enumerate(labels)
        ]
        assert m["counts"].tolist() == [3, 3, 3]
    features = np.load(root / "f.npy")
    assert features.shape == (10, 16) and np.flatnonzero(~features.any(axis=1)).tolist() == [broken]


@pytest.mark.parametrize("cost", ["cosine", "l2"])
@pytest.mark.slow
def test_select_per_sample_never_picks_the_unreadable_image(extracted, tmp_path, capsys, cost):
    root, broken = extracted["root"], extracted["broken"]
    outs = ["--out", tmp_path / "s.json", "--samples-out", tmp_path / "s.npy"]
    outs += ["--scores-out", tmp_path / "scores.npy", "--quiet"]
    per_sample_args = ["--features", root / "f.npy", "--per-sample", "--cost", cost]
    assert _select(root, *per_sample_args, "--budget-images", 9, *outs) == 0
    assert "(from 3 of 3 units; 1 in no unit, not scored) with uot" in capsys.readouterr().out
    assert sorted(np.load(tmp_path / "s.npy").tolist()) == [i for i in range(10) if i != broken]
    scores = np.load(tmp_path / "scores.npy")
    assert np.isneginf(scores[broken]) and np.isfinite(np.delete(scores, broken)).all()
    block = json.loads((tmp_path / "s.json").read_text())["per_sample"]
    live = np.delete(scores, broken)
    assert block["samples"] == 10
    assert block["score_range"] == [float(live.min()), float(live.max())]
    # the broken image as a member of its class, as extract wrote it before: refused
    with np.load(root / "m.npz") as m:
        old = dict(m)
    old["assignment"] = np.abs(old["assignment"])  # its class is 1
    io.write_units(str(tmp_path / "old.npz"), **old)
    argv = ["select", "--source", tmp_path / "old.npz", "--target", root / "t.npz"]
    argv += [*per_sample_args, "--budget-images", 9, "--out", tmp_path / "x.json"]
    assert uotsel_main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    reason = f"row {broken} is all zeros" if cost == "cosine" else "the mean of unit 1's 4 rows"
    assert f"--features: {reason}" in err


@pytest.mark.slow
def test_the_plot_reads_the_scores_of_samples_in_no_unit(extracted, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    root, broken = extracted["root"], extracted["broken"]
    outs = ["--out", tmp_path / "s.json", "--scores-out", tmp_path / "scores.npy", "--quiet"]
    assert (
        _select(root, "--features", root / "f.npy", "--per-sample", "--budget-images", 4, *outs)
        == 0
    )
    plot = ["plot", tmp_path / "s.json", "--out", tmp_path / "p.png", "--scores"]
    plot += [tmp_path / "scores.npy"]
    assert uotsel_main([str(a) for a in plot]) == 0 and (tmp_path / "p.png").exists()
    labels = np.abs(np.load(root / "m.npz")["assignment"])  # the broken image in its class
    np.save(tmp_path / "labels.npy", labels)
    (tmp_path / "p.png").write_bytes(b"old")
    capsys.readouterr()
    assert uotsel_main([str(a) for a in [*plot, "--unit-ids", tmp_path / "labels.npy"]]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"uotsel plot: error: --unit-ids: sample {broken} has score -inf and unit id 1 in "
        f"{tmp_path / 'labels.npy'}; a sample scores -inf exactly when its unit id is -1 (in no "
        "unit)"
    ]
    assert (tmp_path / "p.png").read_bytes() == b"old"


@pytest.mark.slow
def test_whole_units_count_and_list_only_readable_images(extracted, tmp_path):
    root, broken = extracted["root"], extracted["broken"]
    outs = ["--out", tmp_path / "u.json", "--samples-out", tmp_path / "u.npy", "--quiet"]
    assert _select(root, "--budget-images", 9, *outs) == 0
    record = json.loads((tmp_path / "u.json").read_text())
    assert record["unit_images"] == [3, 3, 3] and record["images_used"] == 9
    listed = np.load(tmp_path / "u.npy").tolist()
    assert listed == [i for i in range(10) if i != broken]


def test_refusals_are_one_line_and_write_nothing(tmp_path, capsys):
    """A budget above the samples in a unit, an id below -1, and -1 among the labels of a
    features + labels file are refused before anything is solved."""
    features = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    ids = np.array([0, 0, 0, 1, 1, 1, -1, 2, 2, 2])
    features[6] = 0.0
    means = uotsel.class_means(features[ids >= 0], ids[ids >= 0], 3).means
    io.write_units(str(tmp_path / "m.npz"), means, counts=[3, 3, 3], assignment=ids)
    io.write_units(str(tmp_path / "bad.npz"), means, assignment=np.where(ids < 0, -2, ids))
    io.write_units(str(tmp_path / "t.npz"), means[:2])
    np.save(tmp_path / "f.npy", features)
    np.savez(tmp_path / "fl.npz", features=features, labels=ids)
    (tmp_path / "s.json").write_text("old\n")
    outs = ["--out", tmp_path / "s.json", "--scores-out", tmp_path / "scores.npy"]
    ps = ["--features", tmp_path / "f.npy", "--per-sample"]
    cases = [
        (
            [*ps, "--budget-images", 10],
            "--budget-images: 10 is more than the 9 samples in a unit (1 of 10 are in none)",
        ),
        (
            ["--source", tmp_path / "bad.npz", *ps, "--budget-images", 3],
            f"--source: per-sample unit ids in {tmp_path / 'bad.npz'}: ids must be 0 or more, "
            "or -1 (no unit); got range [-2, 2]",
        ),
        (
            ["--source", tmp_path / "fl.npz", "--per-sample", "--budget-images", 3],
            f"--source: per-sample unit ids in {tmp_path / 'fl.npz'} include -1 (< 0)",
        ),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert _select(tmp_path, *extra, *outs) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.splitlines() == [f"uotsel select: error: {message}"]
        assert (tmp_path / "s.json").read_text() == "old\n"
        assert not (tmp_path / "scores.npy").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".uotsel-")] == []


def test_extract_gives_unreadable_images_the_unit_id_minus_one():
    pytest.importorskip("flax")
    from uotsel_train import extract

    assert extract.unit_ids(np.array([0, 0, 1, 1]), [2]).tolist() == [0, 0, -1, 1]
    assert extract.unit_ids([2, 0], []).tolist() == [2, 0]


# ---------------------------------------------------------------------------------------------
# Clustering features with rows in no unit (uotsel kmeans --skip-zero-rows)


def _with_zero_rows(rng, n=300, d=8):
    x = (
        rng.normal(size=(n, d)).astype(np.float32)
        + 3.0 * np.eye(d, dtype=np.float32)[np.arange(n) % 4]
    )
    dead = np.array([0, 7, 150, n - 1])
    x[dead] = 0.0
    return x, dead


@pytest.mark.parametrize("spherical", [True, False])
@pytest.mark.parametrize("stream_rows", [None, 64])
def test_kmeans_leaves_excluded_rows_in_no_cluster_and_the_rest_as_alone(
    rng, tmp_path, spherical, stream_rows
):
    x, dead = _with_zero_rows(rng)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    live = np.delete(np.arange(len(x)), dead)
    kw = {"spherical": spherical, "seed": 3, "stream_rows": stream_rows}
    left = uotsel.kmeans(mapped, 4, exclude=dead, **kw)
    alone = uotsel.kmeans(x[live], 4, **kw)
    assert left.assignment.dtype == alone.assignment.dtype
    np.testing.assert_array_equal(left.assignment[dead], -1)
    np.testing.assert_array_equal(left.assignment[live], alone.assignment)
    for name in ("centroids", "means", "sizes"):
        np.testing.assert_array_equal(getattr(left, name), getattr(alone, name))
    assert left.objective == alone.objective and int(left.sizes.sum()) == len(live)


@pytest.mark.parametrize(
    "exclude, match",
    [
        ([3, 300], r"^exclude: row indices must be in \[0, 300\), got range \[3, 300\]$"),
        ([-1], r"^exclude: row indices must be in \[0, 300\)"),
        ([0.5], r"^exclude: 0.5 is not a whole number$"),
        (np.arange(300), r"^exclude: leaves none of the 300 rows to cluster$"),
        (np.arange(297), r"^k: 4 clusters for only 3 samples$"),
    ],
)
def test_kmeans_refuses_a_bad_exclude_in_one_line(rng, exclude, match):
    x, _ = _with_zero_rows(rng)
    with pytest.raises((ValueError, TypeError), match=match):
        uotsel.kmeans(x, 4, exclude=exclude)


def _kmeans_cli(x_path, out, *extra):
    return uotsel_main(["kmeans", "--features", str(x_path), "--out", str(out), *map(str, extra)])


def test_kmeans_command_refuses_zero_rows_naming_the_switch_or_skips_them(rng, tmp_path, capsys):
    x, dead = _with_zero_rows(rng)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "c.npz"
    assert _kmeans_cli(tmp_path / "x.npy", out, "--k", 4, "--quiet") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--features: row 0 is all zeros" in err
    assert "--skip-zero-rows" in err and not out.exists()
    for euclidean in ([], ["--euclidean"]):
        args = ["--k", 4, "--quiet", "--skip-zero-rows", "--seed", 3, *euclidean]
        assert _kmeans_cli(tmp_path / "x.npy", out, *args) == 0
        said = capsys.readouterr().out
        assert "4 clusters of 296 samples (4 all-zero rows in no cluster)" in said
        with np.load(out) as c:
            assignment, counts, means = c["assignment"], c["counts"], c["means"]
        np.testing.assert_array_equal(np.flatnonzero(assignment == -1), dead)
        assert counts.sum() == 296
        live = assignment >= 0
        expected = uotsel.class_means(x[live], assignment[live], 4).means
        np.testing.assert_allclose(means, expected, rtol=1e-6, atol=1e-6)
    # Euclidean without the switch clusters them as points, as before.
    assert _kmeans_cli(tmp_path / "x.npy", out, "--k", 4, "--quiet", "--euclidean") == 0
    assert (np.load(out)["assignment"] >= 0).all()


def test_kmeans_command_needs_rows_left_after_skipping(rng, tmp_path, capsys):
    x = np.zeros((5, 3), np.float32)
    x[1] = 1.0
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "c.npz"
    out.write_bytes(b"keep")
    assert _kmeans_cli(tmp_path / "x.npy", out, "--k", 2, "--skip-zero-rows") == 2
    assert "--k: 2 clusters for only 1 samples that are not all zeros" in capsys.readouterr().err
    np.save(tmp_path / "z.npy", np.zeros((5, 3), np.float32))
    assert _kmeans_cli(tmp_path / "z.npy", out, "--k", 1, "--skip-zero-rows") == 2
    assert "--features: every row is all zeros; nothing to cluster" in capsys.readouterr().err
    assert out.read_bytes() == b"keep"


@pytest.mark.slow
def test_clusters_of_extracted_features_never_list_the_unreadable_image(
    extracted, tmp_path, capsys
):
    root, broken = extracted["root"], extracted["broken"]
    clusters = tmp_path / "clusters.npz"
    args = ["--k", 3, "--skip-zero-rows", "--quiet"]
    assert _kmeans_cli(root / "f.npy", clusters, *args) == 0
    assert np.load(clusters)["assignment"][broken] == -1
    argv = ["select", "--source", clusters, "--target", root / "t.npz", "--top-k", 3]
    argv += ["--out", tmp_path / "s.json", "--samples-out", tmp_path / "s.npy", "--quiet"]
    assert uotsel_main([str(a) for a in argv]) == 0
    assert sorted(np.load(tmp_path / "s.npy").tolist()) == [i for i in range(10) if i != broken]
