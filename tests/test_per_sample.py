"""Scores for every sample (uotsel.per_sample, uotsel select --per-sample): the soft
c-transform s(x) = LSE_j((g_j - C(x, t_j)) / eps) of the unit-level solution, and the best
samples under a budget in images."""

import json
import math
import os

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import uotsel
from uotsel import chunk_scores, costs, io, per_sample, selection_file
from uotsel.cli import main


def _lse_scores(features, target, g, eps, cost, eps_c=0.01, keep=None):
    """The reference: s(x) in float64 numpy, the cost written out from its definition."""
    x = np.asarray(features, np.float64)
    t = np.asarray(target, np.float64)
    if cost == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        tn = t / np.linalg.norm(t, axis=1, keepdims=True)
        c = (1.0 - np.clip(xn @ tn.T, -1.0, 1.0)) / eps_c
    else:
        d2 = ((x[:, None, :] - t[None, :, :]) ** 2).sum(-1)
        c = d2 if cost == "sqeuclidean" else np.sqrt(d2)
    z = (np.asarray(g, np.float64)[None, :] - c) / eps
    if keep is not None:
        z = np.where(keep[None, :], z, -np.inf)
    top = z.max(axis=1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


# ---------------------------------------------------------------------------------------------
# The identity with the unit scores


@pytest.mark.parametrize(
    "settings_",
    [
        uotsel.UOT(),
        uotsel.UOT(cost="sqeuclidean", eps=5.0, tau_source=2.0, tau_target=10.0),
        uotsel.UOT(cost="l2", eps=0.5, tau_source=0.3, tau_target=math.inf),
    ],
    ids=["paper", "sqeuclidean", "l2-balanced-target"],
)
@pytest.mark.slow
def test_unit_means_as_samples_give_the_unit_scores_in_float64(rng, settings_):
    """log(P 1)_i = k log a_i + (1 - k) s(mean_i), k = tau_source / (tau_source + eps), with
    non-unit weights on both sides and a masked target unit.

    Tolerance 1e-12: both sides are float64 log-sum-exps over the same costs (at most 2 / eps_c
    = 200 here, whose ulp is 2.8e-14); the solver's f is k eps (log a - LSE((g - C) / eps))
    exactly, so only the rounding of the two evaluations differs (measured: 7e-15).
    """
    source = rng.normal(size=(120, 12))
    target = rng.normal(size=(9, 12))
    a = rng.uniform(0.2, 3.0, size=120)
    b = rng.uniform(0.5, 2.0, size=9)
    mask = np.ones(9, bool)
    mask[4] = False
    with jax.enable_x64(True):
        cost = costs.cost_matrix(source, target, settings_.cost, eps_c=settings_.eps_c)
        out = uotsel.sinkhorn(cost, settings_, source_weights=a, target_weights=b, target_mask=mask)
        s = per_sample.sample_scores(source, target, out, settings_, chunk_size=32)
        assert s.dtype == np.float64
    k = settings_.tau_source / (settings_.tau_source + settings_.eps)
    predicted = k * np.log(a) + (1 - k) * s
    np.testing.assert_allclose(predicted, np.asarray(out.log_row_sums), rtol=0, atol=1e-12)
    reference = _lse_scores(source, target, out.g, settings_.eps, settings_.cost, keep=mask)
    np.testing.assert_allclose(s, reference, rtol=0, atol=1e-11)


@pytest.mark.slow
def test_unit_means_as_samples_in_float32_through_a_selection(rng):
    """The same identity from a uot Selection (weights given to select), in float32.

    Tolerance 2e-4 absolute: the scores lie within [-60, 40]; float32 rounds the cost (at most
    200, ulp 1.5e-5) and the log-sum-exp (ulp 4e-6 at 40) a few times each, and the chunked
    cost may round differently from the solver's single block (measured: 3e-5).
    """
    source = rng.normal(size=(200, 16)).astype(np.float32)
    target = rng.normal(size=(7, 16)).astype(np.float32)
    a = rng.uniform(0.2, 3.0, size=200).astype(np.float32)
    sel = uotsel.select(source, target, top_k=5, source_weights=a)
    s = per_sample.sample_scores(source, target, sel, chunk_size=64)
    assert s.dtype == np.float32
    k = 1.0 / (1.0 + 1.0)  # the paper's tau_source = eps = 1
    predicted = k * np.log(a.astype(np.float64)) + (1 - k) * s
    np.testing.assert_allclose(predicted, sel.log_scores, rtol=0, atol=2e-4)


@pytest.mark.slow
def test_scores_against_a_plain_numpy_float64_computation(rng):
    """sample_scores (float32) against numpy float64 on the same potentials: cosine at the
    paper's eps_c and sqeuclidean, a masked target left out.

    Tolerance 2e-4 absolute (the scores reach 60 in magnitude): a float32 cosine is within
    about 1e-7 of the float64 one, 1e-5 in the cost at eps_c = 0.01, and the log-sum-exp adds a
    few ulps of its value (4e-6 at 60)."""
    features = rng.normal(size=(1000, 24)).astype(np.float32)
    target = rng.normal(size=(11, 24)).astype(np.float32)
    mask = np.ones(11, bool)
    mask[[0, 7]] = False
    for cost, eps in (("cosine", 1.0), ("sqeuclidean", 10.0)):
        paper = uotsel.UOT(cost=cost, eps=eps)
        c = costs.cost_matrix(rng.normal(size=(30, 24)), target, cost)
        out = uotsel.sinkhorn(c, paper, target_mask=mask)
        got = per_sample.sample_scores(features, target, out, paper, chunk_size=300)
        want = _lse_scores(features, target, out.g, eps, cost, keep=mask)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * max(1.0, eps / 10))
        # A masked target is left out whatever its potential (the solver's is 0).
        loud = out._replace(g=np.where(mask, np.asarray(out.g), 1e3))
        again = per_sample.sample_scores(features, target, loud, paper, chunk_size=300)
        assert np.array_equal(again, got)


# ---------------------------------------------------------------------------------------------
# Planted data: close samples of a far unit before far samples of a close unit


def _at(degrees, dim=6):
    """Unit vectors in the plane of the first two axes at these angles from [1, 0, ...]."""
    radians = np.deg2rad(np.asarray(degrees, np.float64))
    out = np.zeros((radians.size, dim))
    out[:, 0], out[:, 1] = np.cos(radians), np.sin(radians)
    return out


def _planted(rng):
    """Unit 0 (close): 40 samples at 3-8 degrees from the target and 8 at 75-85; unit 1 (far):
    50 samples at 95-110 degrees and 5 at 1-4; units 2-4: 30 samples each at 40-130."""
    parts = [
        (0, rng.uniform(3, 8, 40)),
        (0, rng.uniform(75, 85, 8)),
        (1, rng.uniform(95, 110, 50)),
        (1, rng.uniform(1, 4, 5)),
        (2, rng.uniform(40, 60, 30)),
        (3, rng.uniform(70, 100, 30)),
        (4, rng.uniform(110, 130, 30)),
    ]
    ids = np.concatenate([np.full(d.size, u) for u, d in parts])
    angles = np.concatenate([d for _, d in parts])
    features = _at(angles) * rng.uniform(0.5, 2.0, size=(angles.size, 1))
    features[:, 2:] = 0.02 * rng.normal(size=(angles.size, 4))
    means = uotsel.class_means(features, ids, 5).means
    target = _at([0.0, 2.0])
    return features, ids, means, target, angles


@pytest.mark.slow
def test_close_samples_of_a_far_unit_come_before_far_samples_of_a_close_unit(rng):
    features, ids, means, target, angles = _planted(rng)
    close_of_far = np.flatnonzero((ids == 1) & (angles < 5))
    far_of_close = np.flatnonzero((ids == 0) & (angles > 70))
    close_of_close = np.flatnonzero((ids == 0) & (angles < 10))
    picked = uotsel.select_samples(features, means, target, budget_images=45, unit_ids=ids)
    ranking = picked.units.ranking.tolist()
    assert ranking.index(0) < ranking.index(1)  # unit 0 is the closer unit
    assert ranking.index(1) >= 3  # and unit 1 among the farthest
    assert set(picked.samples) == set(close_of_far) | set(close_of_close)
    every = uotsel.best_samples(picked.scores, features.shape[0]).tolist()
    assert max(map(every.index, close_of_far)) < min(map(every.index, far_of_close))
    assert picked.unit_counts.tolist() == [40, 5, 0, 0, 0]
    assert picked.units_holding.tolist() == [0, 1]
    # Whole units best first take unit 0, far samples and all, for about the same budget.
    whole = uotsel.select(means, target, budget_images=48, unit_ids=ids)
    assert set(far_of_close) <= set(whole.sample_indices)


# ---------------------------------------------------------------------------------------------
# Chunks


def _separated(n, seed):
    """``n`` samples in the plane at distinct angles 0.7 degrees apart (shuffled, random
    lengths), so that neighbouring scores differ by far more than float32 rounding."""
    rng = np.random.default_rng(seed)
    angles = rng.permutation(np.arange(n) * 0.7)
    features = _at(angles, 4) * rng.uniform(0.3, 3.0, size=(n, 1))
    return features.astype(np.float32), rng


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 200),
    chunk=st.integers(1, 260),
    share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
@pytest.mark.slow
def test_the_ranking_does_not_depend_on_the_chunk_size(n, chunk, share, seed):
    features, _ = _separated(n, seed)
    target = _at([0.0, 30.0], 4).astype(np.float32)
    sel = uotsel.select(_at([10, 80, 150], 4), target, top_k=1, n_groups=1)
    whole = per_sample.sample_scores(features, target, sel, chunk_size=n)
    chunked = per_sample.sample_scores(features, target, sel, chunk_size=chunk)
    # Float tolerance: the cost of a row may round differently in blocks of other shapes
    # (at most a few ulps of 2 / eps_c = 200).
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-4)
    budget = 1 + int(share * (n - 1))
    assert (
        uotsel.best_samples(chunked, budget).tolist() == uotsel.best_samples(whole, budget).tolist()
    )


@pytest.mark.slow
def test_chunks_of_a_memory_map_and_of_feature_parts_equal_the_array(tmp_path, rng):
    features = rng.normal(size=(1003, 8)).astype(np.float32)
    target = rng.normal(size=(3, 8)).astype(np.float32)
    sel = uotsel.select(rng.normal(size=(20, 8)), target, top_k=2)
    np.save(tmp_path / "f.npy", features)
    parts = [features[:400], features[400:401], features[401:]]
    named = []
    for i, part in enumerate(parts):
        np.save(tmp_path / f"p{i}.npy", part)
        named.append((str(tmp_path / f"p{i}.npy"), part.shape[0]))
    io.write_shards_index(str(tmp_path / "f.json"), named, 8, np.float32)
    reference = per_sample.sample_scores(features, target, sel, chunk_size=128)
    mapped = io.read_features(str(tmp_path / "f.npy"), "features")
    assert isinstance(mapped, np.memmap)
    sharded = io.read_features(str(tmp_path / "f.json"), "features")
    for source in (mapped, sharded):
        np.testing.assert_array_equal(
            per_sample.sample_scores(source, target, sel, chunk_size=128), reference
        )


@pytest.mark.slow
def test_one_program_for_every_chunk(rng):
    """The last, shorter chunk is padded: scoring compiles once per chunk shape."""
    target = rng.normal(size=(3, 5)).astype(np.float32)
    sel = uotsel.select(rng.normal(size=(10, 5)), target, top_k=2)
    chunk_scores.score_chunk.clear_cache()
    per_sample.sample_scores(rng.normal(size=(250, 5)), target, sel, chunk_size=64)
    assert chunk_scores.score_chunk._cache_size() == 1
    per_sample.sample_scores(rng.normal(size=(190, 5)), target, sel, chunk_size=64)
    assert chunk_scores.score_chunk._cache_size() == 1


@pytest.mark.slow
def test_progress_counts_every_row(rng):
    target = rng.normal(size=(3, 5))
    sel = uotsel.select(rng.normal(size=(10, 5)), target, top_k=2)
    seen = []
    per_sample.sample_scores(
        rng.normal(size=(250, 5)), target, sel, chunk_size=64, progress=seen.append
    )
    assert seen == [64, 64, 64, 58]


# ---------------------------------------------------------------------------------------------
# The best samples under a budget


def test_best_samples_by_hand():
    assert uotsel.best_samples([0.5, 2.0, 0.5, 1.0], 3).tolist() == [1, 3, 0]
    assert uotsel.best_samples([0.5, 2.0, 0.5, 1.0], 4).tolist() == [1, 3, 0, 2]
    assert uotsel.best_samples([3, 3, 3], 2).tolist() == [0, 1]  # ties by index
    assert uotsel.best_samples(np.float32([-np.inf, 1]), 1).tolist() == [1]


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(-5, 5), min_size=1, max_size=60),
    share=st.floats(0.0, 1.0),
)
def test_best_samples_is_a_prefix_of_the_full_order_within_the_budget(values, share):
    scores = np.asarray(values, np.float64) / 4
    budget = 1 + int(share * (len(values) - 1))
    chosen = uotsel.best_samples(scores, budget)
    order = np.lexsort((np.arange(scores.size), -scores))
    assert chosen.tolist() == order[:budget].tolist()
    assert chosen.size == budget <= scores.size and np.unique(chosen).size == budget


@pytest.mark.parametrize(
    "scores, budget_images, error, pattern",
    [
        ([1.0, 2.0], 0, ValueError, "^budget_images: must be >= 1, got 0"),
        ([1.0, 2.0], 3, ValueError, "^budget_images: 3 is more than the 2 samples"),
        ([1.0, 2.0], 1.0, TypeError, "^budget_images: expected an integer"),
        ([1.0, np.nan], 1, ValueError, "^scores: contains NaN"),
        ([], 1, ValueError, "^scores: expected a non-empty 1-d array"),
        ([[1.0]], 1, ValueError, "^scores: expected a non-empty 1-d array"),
    ],
)
def test_best_samples_refuses_bad_budgets_and_scores(scores, budget_images, error, pattern):
    with pytest.raises(error, match=pattern):
        uotsel.best_samples(np.asarray(scores), budget_images)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(5, 120), share=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
@pytest.mark.slow
def test_select_samples_never_exceeds_the_budget(n, share, seed):
    features, rng = _separated(n, seed)
    ids = rng.integers(0, 4, size=n)
    ids[:4] = np.arange(4)
    means = uotsel.class_means(features, ids, 4).means
    budget = 1 + int(share * (n - 1))
    picked = uotsel.select_samples(
        features, means, _at([0.0], 4), budget_images=budget, unit_ids=ids, n_groups=2
    )
    assert picked.samples.size == picked.budget_images == budget
    assert int(picked.unit_counts.sum()) == budget
    assert np.array_equal(picked.unit_counts, np.bincount(ids[picked.samples], minlength=4))
    assert picked.selected_range[0] >= np.sort(picked.scores)[::-1][budget - 1]


@pytest.mark.parametrize(
    "change, error, pattern",
    [
        ({"budget_images": 0}, ValueError, "^budget_images: must be >= 1"),
        ({"budget_images": 41}, ValueError, "^budget_images: 41 is more than the 40 samples"),
        ({"unit_ids": np.zeros(39, int)}, ValueError, r"^unit_ids: 39 ids for the 40 rows"),
        ({"unit_ids": np.full(40, 4)}, ValueError, r"^unit_ids: ids must be in \[0, 4\)"),
        ({"features": np.ones((40, 3))}, ValueError, "^features: dimension 3 does not match"),
        ({"features": np.ones(40)}, ValueError, r"^features: expected a 2-d array"),
        ({"features": [[1.0]]}, TypeError, r"^features: expected an \[N, D\] array"),
        ({"chunk_size": 0}, ValueError, "^chunk_size: must be >= 1"),
        ({"top_k": 3}, TypeError, "top_k"),
    ],
)
def test_select_samples_refuses_bad_arguments_before_solving(
    monkeypatch, rng, change, error, pattern
):
    def untouched(*args, **kwargs):
        raise AssertionError("solved before the arguments were checked")

    monkeypatch.setattr(per_sample, "select", untouched)
    call = {
        "features": rng.normal(size=(40, 5)),
        "source": rng.normal(size=(4, 5)),
        "target": rng.normal(size=(2, 5)),
        "budget_images": 10,
        "unit_ids": np.arange(40) % 4,
        **change,
    }
    with pytest.raises(error, match=pattern):
        uotsel.select_samples(**call)


@pytest.mark.slow
def test_bad_rows_are_named(rng):
    target = rng.normal(size=(3, 4))
    sel = uotsel.select(rng.normal(size=(10, 4)), target, top_k=2)
    features = rng.normal(size=(300, 4))
    for row, value, pattern in (
        (201, np.nan, "^features: row 201 contains NaN or inf"),
        (7, np.inf, "^features: row 7 contains NaN or inf"),
        (130, 0.0, "^features: row 130 is all zeros; the cosine cost needs a direction"),
        (9, 1e39, "^features: row 9 holds a value beyond float32's range"),
    ):
        bad = features.copy()
        bad[row] = value
        with pytest.raises(ValueError, match=pattern):
            per_sample.sample_scores(bad, target, sel, chunk_size=64)
    zero = features.copy()
    zero[5] = 0.0
    l2 = uotsel.select(rng.normal(size=(10, 4)), target, top_k=2, cost="l2")
    assert np.isfinite(per_sample.sample_scores(zero, target, l2)).all()  # fine for l2


@pytest.mark.slow
def test_subnormal_rows_are_scored_not_refused(rng):
    """A row of subnormal float32 numbers has a direction: it scores as the same row scaled
    up by 2^140 (exactly)."""
    target = rng.normal(size=(3, 4)).astype(np.float32)
    sel = uotsel.select(rng.normal(size=(10, 4)), target, top_k=2)
    tiny = rng.normal(size=(20, 4)).astype(np.float32)
    tiny[3] *= np.float32(2.0**-140)
    assert 0 < np.abs(tiny[3]).max() < np.finfo(np.float32).tiny
    scaled = tiny.copy()
    scaled[3] = (tiny[3].astype(np.float64) * 2.0**140).astype(np.float32)
    np.testing.assert_allclose(
        per_sample.sample_scores(tiny, target, sel),
        per_sample.sample_scores(scaled, target, sel),
        rtol=0,
        atol=1e-4,
    )


@pytest.mark.slow
def test_solutions_and_settings(rng):
    source, target = rng.normal(size=(12, 4)), rng.normal(size=(3, 4))
    features = rng.normal(size=(30, 4))
    sel = uotsel.select(source, target, uotsel.UOT(eps_c=0.1, eps=0.5), top_k=2)
    from_selection = per_sample.sample_scores(features, target, sel)
    settings_ = uotsel.UOT(eps_c=0.1, eps=0.5)
    from_output = per_sample.sample_scores(features, target, sel.solver, settings_)
    np.testing.assert_array_equal(from_selection, from_output)
    want = _lse_scores(features, target, sel.solver.g, 0.5, "cosine", eps_c=0.1)
    np.testing.assert_allclose(from_selection, want, rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match=r"^settings: eps 1 differs from the solution's eps 0.5"):
        per_sample.sample_scores(features, target, sel.solver, uotsel.UOT(eps_c=0.1))
    nearest = uotsel.select(source, target, strategy="nearest", top_k=2)
    with pytest.raises(ValueError, match=r"^solution: scores need a 'uot' selection"):
        per_sample.sample_scores(features, target, nearest)
    with pytest.raises(TypeError, match=r"^solution: expected a uotsel.SinkhornOutput"):
        per_sample.sample_scores(features, target, np.zeros(3))
    with pytest.raises(ValueError, match=r"^solution: its target potential has shape \(3,\)"):
        per_sample.sample_scores(features, target[:2], sel)
    with pytest.raises(ValueError, match=r"^target: feature dimension 4 does not match"):
        per_sample.sample_scores(features[:, :3], target, sel)
    with pytest.raises(TypeError, match=r"^settings: expected a uotsel.UOT"):
        per_sample.sample_scores(features, target, sel, {"eps": 0.5})


@pytest.mark.slow
def test_a_function_cost_scores_as_its_registered_twin(rng):
    source, target = rng.normal(size=(12, 4)), rng.normal(size=(3, 4))
    features = rng.normal(size=(50, 4)).astype(np.float32)

    def squared(x, y):
        return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)

    mine = uotsel.select(source, target, top_k=2, cost=squared, eps=10.0)
    theirs = uotsel.select(source, target, top_k=2, cost="sqeuclidean", eps=10.0)
    with pytest.raises(ValueError, match=r"^settings: the selection's cost 'squared' is a"):
        per_sample.sample_scores(features, target, mine)
    got = per_sample.sample_scores(features, target, mine, uotsel.UOT(cost=squared, eps=10.0))
    want = per_sample.sample_scores(features, target, theirs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    picked = uotsel.select_samples(
        features, source, target, budget_images=5, cost=squared, eps=10.0
    )
    np.testing.assert_allclose(picked.scores, want, rtol=1e-5, atol=1e-4)


def test_exported_lazily_from_the_package():
    for name in ("SampleSelection", "best_samples", "sample_scores", "select_samples"):
        assert getattr(uotsel, name) is getattr(per_sample, name)
        assert name in uotsel.__all__


# ---------------------------------------------------------------------------------------------
# The command line


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def sample_files(tmp_path, rng):
    """The planted samples as a features + labels file, their class means (with the labels as
    'assignment'), the features alone (.npy), and the target."""
    features, ids, means, target, _ = _planted(rng)
    features = features.astype(np.float32)
    np.savez(tmp_path / "labels.npz", features=features, labels=ids)
    io.write_units(str(tmp_path / "means.npz"), means, counts=np.bincount(ids), assignment=ids)
    np.save(tmp_path / "features.npy", features)
    np.savez(tmp_path / "target.npz", means=target.astype(np.float32))
    np.savez(tmp_path / "bare.npz", means=means.astype(np.float32))
    return tmp_path, features, ids


def _argv(tmp, source, out, *extra):
    argv = ["select", "--source", tmp / source, "--target", tmp / "target.npz"]
    return [*argv, "--out", tmp / out, *extra]


def _per_sample(tmp, source, out, *extra):
    argv = ["select", "--source", tmp / source, "--target", tmp / "target.npz", "--out"]
    return [*argv, tmp / out, "--per-sample", *extra]


@pytest.mark.slow
def test_the_cli_writes_the_best_samples_best_first(sample_files, capsys):
    tmp, features, _ = sample_files
    outs = ["--samples-out", tmp / "best.npy", "--scores-out", tmp / "scores.npy"]
    outs += ["--names-out", tmp / "units.txt"]
    code, stdout, err = _run(
        _per_sample(tmp, "labels.npz", "a.json", "--budget-images", 45, *outs), capsys
    )
    assert code == 0 and err == "", err
    best, scores = np.load(tmp / "best.npy"), np.load(tmp / "scores.npy")
    assert best.dtype == np.int64 and best.size == 45
    assert scores.shape == (features.shape[0],) and scores.dtype == np.float32
    assert best.tolist() == uotsel.best_samples(scores, 45).tolist()
    record = selection_file.read_selection(str(tmp / "a.json"))
    assert record["format"] == "uotsel.selection/2" and record["mode"] == "per_sample"
    assert selection_file.is_per_sample(record)
    assert (record["budget_images"], record["images_used"]) == (45, 45)
    assert record["num_selected_samples"] == 45
    block = record["per_sample"]
    assert block["order"] == "best_first"
    assert block["score"] == "s(x) = LSE_j((g_j - C(x, t_j)) / eps)"
    assert (block["samples"], block["selected_samples"]) == (features.shape[0], 45)
    assert block["score_range"] == [float(scores.min()), float(scores.max())]
    assert block["selected_score_range"] == [float(scores[best[-1]]), float(scores[best[0]])]
    assert record["selected"] == [0, 1] and record["top_k"] == 2
    assert block["samples_per_unit"] == [40, 5]
    assert block["features"] == {"path": str(tmp / "labels.npz"), "rows": 193, "dim": 6}
    assert record["ranking"][0] == 0 and "target_mass" not in record
    assert len(record["target_mass_total"]) == 2
    assert (tmp / "units.txt").read_text().split() == ["0", "1"]
    assert stdout.startswith("selected 45 of 193 samples (from 2 of 5 units) with uot per ")
    # the same from the class means and the features apart, and from feature parts
    argv = _per_sample(tmp, "means.npz", "b.json", "--budget-images", 45, "--features")
    assert _run([*argv, tmp / "features.npy", "--samples-out", tmp / "b.npy"], capsys)[0] == 0
    assert np.load(tmp / "b.npy").tolist() == best.tolist()
    parts = [(str(tmp / "p0.npy"), 100), (str(tmp / "p1.npy"), 93)]
    np.save(tmp / "p0.npy", features[:100])
    np.save(tmp / "p1.npy", features[100:])
    io.write_shards_index(str(tmp / "parts.json"), parts, 6, np.float32)
    argv = _per_sample(tmp, "means.npz", "c.json", "--budget-images", 45, "--chunk-size", 7)
    argv += ["--features", tmp / "parts.json", "--samples-out", tmp / "c.txt"]
    assert _run(argv, capsys)[0] == 0
    assert (tmp / "c.txt").read_text().split() == [str(i) for i in best]


@pytest.mark.slow
def test_the_cli_names_samples_when_the_source_has_them(sample_files, capsys):
    tmp, _, ids = sample_files
    names = np.asarray([f"img{i:03d}.jpg" for i in range(ids.size)])
    means = io.read_units(str(tmp / "means.npz")).means
    io.write_units(str(tmp / "named.npz"), means, assignment=ids, sample_names=names)
    argv = _per_sample(tmp, "named.npz", "n.json", "--budget-images", 3, "--features")
    argv += [tmp / "features.npy", "--samples-out", tmp / "n.txt"]
    assert _run(argv, capsys)[0] == 0
    lines = (tmp / "n.txt").read_text().split()
    assert len(lines) == 3 and all(line.startswith("img") for line in lines)


@pytest.mark.slow
def test_a_unit_selection_keeps_format_1_and_its_samples_out(sample_files, capsys):
    tmp, _, ids = sample_files
    argv = _argv(tmp, "labels.npz", "u.json", "--top-k", 1, "--samples-out", tmp / "u.npy")
    assert _run(argv, capsys)[0] == 0
    record = json.loads((tmp / "u.json").read_text())
    assert record["format"] == "uotsel.selection/1" and "mode" not in record
    assert np.load(tmp / "u.npy").tolist() == np.flatnonzero(ids == record["selected"][0]).tolist()


def _bad_inputs(tmp, features):
    np.save(tmp / "short.npy", features[:-1])
    np.save(tmp / "wide.npy", np.hstack([features, features]))
    nan = features.copy()
    nan[150] = np.nan
    np.save(tmp / "nan.npy", nan)
    zero = features.copy()
    zero[17] = 0.0
    np.save(tmp / "zero.npy", zero)
    np.save(tmp / "shuffled.npy", features[np.random.default_rng(3).permutation(len(features))])
    f = ["--features", tmp / "features.npy"]
    return [
        ("labels.npz", ["--top-k", 3], "--top-k: cannot be combined with --per-sample"),
        ("labels.npz", ["--budget-images", 5, "--top-k", 3], "--top-k: not allowed with"),
        ("labels.npz", ["--budget-images", 0], "--budget-images: must be >= 1, got 0"),
        ("labels.npz", ["--budget-images", 194], "--budget-images: 194 is more than the 193 "),
        ("labels.npz", [], "--per-sample: needs --budget-images N"),
        ("means.npz", ["--budget-images", 5], "--per-sample: needs per-sample features"),
        ("bare.npz", ["--budget-images", 5, *f], "--per-sample: the source file has no per-"),
        ("labels.npz", ["--budget-images", 5, "--strategy", "nearest"], "--per-sample: samples"),
        ("means.npz", ["--budget-images", 5, "--features", tmp / "short.npy"], "--features: 192 "),
        ("means.npz", ["--budget-images", 5, "--features", tmp / "wide.npy"], "--features: feat"),
        ("means.npz", ["--budget-images", 5, "--features", tmp / "nan.npy"], "--features: row 150"),
        (
            "means.npz",
            ["--budget-images", 5, "--features", tmp / "zero.npy"],
            "--features: row 17 ",
        ),
        ("means.npz", ["--budget-images", 5, "--features", tmp / "none.npy"], "--features: "),
        (
            "means.npz",
            ["--budget-images", 5, "--features", tmp / "shuffled.npy"],
            "--features: the mean of unit ",
        ),
        ("means.npz", ["--budget-images", 5, "--scores-out", tmp / "s.txt", *f], "--scores-out: "),
        ("means.npz", ["--budget-images", 5, "--chunk-size", 0, *f], "--chunk-size: must be >= 1"),
        ("means.npz", ["--budget-images", 5, "--n-groups", 6, *f], "--n-groups: 6 is more than "),
    ]


@pytest.mark.slow
def test_bad_per_sample_inputs_are_one_line_naming_the_flag(sample_files, capsys):
    tmp, features, _ = sample_files
    (tmp / "old.json").write_text("old\n")
    np.save(tmp / "old.npy", np.arange(3))
    for source, extra, message in _bad_inputs(tmp, features):
        argv = _per_sample(tmp, source, "old.json", *extra)
        argv += ["--samples-out", tmp / "old.npy"]
        code, stdout, err = _run(argv, capsys)
        assert code == 2 and stdout == "" and len(err.splitlines()) == 1, (message, err)
        assert err.startswith(f"uotsel select: error: {message}"), (message, err)
        assert (tmp / "old.json").read_text() == "old\n"
        assert np.load(tmp / "old.npy").tolist() == [0, 1, 2]
        assert not (tmp / "s.txt").exists()
    leftovers = [n for n in os.listdir(tmp) if n.startswith(".uotsel-")]
    assert leftovers == []


def test_the_documented_error_lines(sample_files, capsys):
    """Every error line docs/cli.md shows for --per-sample, from the test's files."""
    tmp, features, _ = sample_files
    with open("docs/cli.md", encoding="utf-8") as fh:
        doc = fh.read()
    shown = doc[doc.index("### Scores for every sample") :]
    shown = shown[shown.index("```\nuotsel select: error:") + 4 :]
    lines = shown[: shown.index("```")].splitlines()
    got = []
    for source, extra, _ in _bad_inputs(tmp, features):
        got.append(_run(_per_sample(tmp, source, "x.json", *extra), capsys)[2].strip())
    argv = _argv(tmp, "labels.npz", "x.json", "--features", tmp / "features.npy")
    got.append(_run(argv, capsys)[2].strip())
    assert lines and set(lines) <= set(got), sorted(set(lines) - set(got))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--features", "F"], "--features: read only with --per-sample"),
        (["--scores-out", "S"], "--scores-out: read only with --per-sample"),
        (["--chunk-size", "5"], "--chunk-size: read only with --per-sample"),
    ],
)
def test_per_sample_flags_without_per_sample_are_refused(sample_files, capsys, extra, message):
    tmp, _, _ = sample_files
    code, _, err = _run(_argv(tmp, "labels.npz", "x.json", *extra), capsys)
    assert code == 2 and err == f"uotsel select: error: {message}\n"
    assert not (tmp / "x.json").exists()


def test_fine_tuning_refuses_a_per_sample_file_as_whole_units(sample_files, capsys):
    from uotsel_train import selected

    tmp, _, _ = sample_files
    argv = _per_sample(tmp, "labels.npz", "p.json", "--budget-images", 10)
    assert _run(argv, capsys)[0] == 0
    record = selected.read(str(tmp / "p.json"))
    with pytest.raises(ValueError, match=r"^selection: chose samples one by one"):
        selected.units(record)
    assert selected.units(record, units="top_k", top_k=2).units.tolist() == record["ranking"][:2]
    assert selected.units(record, group=0).units.tolist() == record["groups"][0]


def test_a_per_sample_record_without_its_counts_is_refused(sample_files, capsys):
    tmp, _, _ = sample_files
    assert _run(_per_sample(tmp, "labels.npz", "p.json", "--budget-images", 10), capsys)[0] == 0
    record = json.loads((tmp / "p.json").read_text())
    for change in ({"mode": "units"}, {"per_sample": None}, {"per_sample": {"samples": 3}}):
        (tmp / "bad.json").write_text(json.dumps({**record, **change}))
        with pytest.raises(ValueError, match=r"^sel: .* is a per-sample selection without its"):
            selection_file.read_selection(str(tmp / "bad.json"), "sel")
    with pytest.raises(ValueError, match=r"^record: not a uotsel.selection/1 or "):
        selection_file.write_selection(str(tmp / "w.json"), {**record, "format": "x"})


@pytest.mark.parametrize("quiet", [False, True])
def test_the_scoring_progress_counts_every_row_unless_quiet(
    sample_files, capsys, monkeypatch, quiet
):
    from uotsel import sample_select

    made = []

    class Recorder:
        def __init__(self, total, label, *, enabled, **kwargs):
            self.total, self.label, self.enabled, self.rows = total, label, enabled, 0
            made.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, rows):
            self.rows += rows

    monkeypatch.setattr(sample_select, "Progress", Recorder)
    tmp = sample_files[0]
    argv = _per_sample(tmp, "labels.npz", "q.json", "--budget-images", 5, "--chunk-size", 50)
    assert _run(argv + (["--quiet"] if quiet else []), capsys)[0] == 0
    [bar] = made
    assert (bar.total, bar.rows, bar.label) == (193, 193, "scoring samples")
    assert bar.enabled is not quiet
