import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import cosine_cost64, pot_marginals, top_k_agrees
from scipy.spatial.distance import cdist

import uotsel


@pytest.fixture
def units(rng):
    return rng.normal(size=(60, 10)).astype(np.float32), rng.normal(size=(6, 10)).astype(np.float32)


@pytest.mark.slow
def test_uot_ranks_by_pot_row_sums(units):
    source, target = units
    ref_rows, _ = pot_marginals(cosine_cost64(source, target, 0.05), 1.0, 1.0, 100.0)
    sel = uotsel.select(source, target, top_k=10, eps_c=0.05)
    assert sel.strategy == "uot"
    np.testing.assert_allclose(sel.scores, ref_rows, rtol=1e-4)
    assert top_k_agrees(sel.log_scores, ref_rows, 10)
    np.testing.assert_array_equal(sel.ranking[:10], sel.selected)
    assert sel.diagnostics["converged"] and sel.diagnostics["n_iters"] > 0
    assert sel.settings["eps_c"] == 0.05 and sel.settings["tau_target"] == 100.0


@pytest.mark.parametrize("cost", ["l2", "cosine"])
def test_greedy_ot_is_mean_distance(units, cost):
    source, target = units
    metric = "euclidean" if cost == "l2" else "cosine"
    mean_dist = cdist(source.astype(np.float64), target.astype(np.float64), metric).mean(1)
    sel = uotsel.select(source, target, strategy="greedy_ot", top_k=15, cost=cost)
    expected = np.argsort(mean_dist, kind="stable")[:15]
    np.testing.assert_array_equal(sel.selected, expected)


def mean_euclidean(source, target):
    """``[K]`` mean Euclidean distance of every source row to the target rows, float64 numpy."""
    s, t = np.asarray(source, np.float64), np.asarray(target, np.float64)
    return np.stack([np.linalg.norm(s - row, axis=1) for row in t], axis=1).mean(axis=1)


def test_greedy_ot_defaults_to_l2_on_raw_means(units):
    source, target = units
    source = source * np.linspace(0.1, 10.0, 60, dtype=np.float32)[:, None]  # norms matter
    sel = uotsel.select(source, target, strategy="greedy_ot", top_k=15)
    assert sel.settings["cost"] == "l2"
    d = mean_euclidean(source, target)
    np.testing.assert_array_equal(sel.ranking, np.argsort(d, kind="stable"))
    np.testing.assert_allclose(-sel.scores, d, rtol=1e-5)


def test_greedy_ot_default_on_the_paper_features(paper_features):
    # Cui et al.'s setting: l2 on the raw class means; the whole ranking of the 1000 ImageNet
    # classes for CUB equals the float64 numpy one.
    for source, target in paper_features.values():
        sel = uotsel.select(source, target, strategy="greedy_ot", top_k=100)
        d = mean_euclidean(source, target)
        np.testing.assert_array_equal(sel.ranking, np.argsort(d, kind="stable"))


@pytest.mark.parametrize("factor", [1e30, 1e-30])
def test_l2_scores_neither_overflow_nor_underflow(units, factor):
    # |x|^2 of 1e30-sized float32 rows overflows and of 1e-30-sized rows underflows; rankings
    # and (rescaled) scores must be those of the unscaled features.
    source, target = units
    for strategy in ("greedy_ot", "nearest"):
        ref = uotsel.select(source, target, strategy=strategy, top_k=10, cost="l2")
        got = uotsel.select(
            source * factor, target * factor, strategy=strategy, top_k=10, cost="l2"
        )
        assert np.all(np.isfinite(got.scores)) and np.all(got.scores < 0)
        np.testing.assert_array_equal(got.ranking, ref.ranking)
        np.testing.assert_allclose(got.scores, ref.scores * factor, rtol=1e-6)


def test_cosine_scores_with_a_tiny_eps_c_stay_finite(units):
    # (1 - cos) / 1e-40 does not fit in float32; a ranking by mean or smallest cost does not
    # depend on eps_c.
    source, target = units
    ref = cdist(source.astype(np.float64), target.astype(np.float64), "cosine").mean(1)
    for strategy in ("greedy_ot", "nearest"):
        a = uotsel.select(source, target, strategy=strategy, top_k=10, cost="cosine", eps_c=1.0)
        b = uotsel.select(source, target, strategy=strategy, top_k=10, cost="cosine", eps_c=1e-40)
        assert np.all(np.isfinite(b.scores))
        np.testing.assert_array_equal(a.ranking, b.ranking)
        np.testing.assert_allclose(b.scores, a.scores * 1e40, rtol=1e-12)
        if strategy == "greedy_ot":
            np.testing.assert_allclose(-a.scores, ref, rtol=1e-5)


def test_greedy_ot_target_weights(units):
    source, target = units
    w = np.arange(1, 7, dtype=np.float64)
    d = cdist(source.astype(np.float64), target.astype(np.float64), "euclidean")
    sel = uotsel.select(source, target, strategy="greedy_ot", top_k=5, cost="l2", target_weights=w)
    np.testing.assert_allclose(-sel.scores, d @ (w / w.sum()), rtol=1e-5)


def test_nearest_is_min_distance(units):
    source, target = units
    d = cdist(source.astype(np.float64), target.astype(np.float64), "sqeuclidean").min(1)
    sel = uotsel.select(source, target, strategy="nearest", top_k=8, cost="sqeuclidean")
    np.testing.assert_array_equal(sel.selected, np.argsort(d, kind="stable")[:8])


def test_random_is_seeded_and_uniform(units):
    source, target = units
    a = uotsel.select(source, target, strategy="random", top_k=20, seed=3)
    b = uotsel.select(source, None, strategy="random", top_k=20, seed=3)
    c = uotsel.select(source, None, strategy="random", top_k=20, seed=4)
    np.testing.assert_array_equal(a.selected, b.selected)
    assert a.selected.tolist() != c.selected.tolist()
    assert sorted(a.ranking.tolist()) == list(range(60))
    # Uniform over units: over many seeds every unit is chosen about top_k / K of the time.
    counts = np.zeros(60)
    for seed in range(600):
        counts[uotsel.select(source, None, strategy="random", top_k=20, seed=seed).selected] += 1
    assert abs(counts.mean() - 200) < 1e-9 and counts.min() > 140 and counts.max() < 260


def test_label_strategy(units):
    source, _ = units
    sel = uotsel.select(source, None, strategy="label", top_k=None, matching=[40, 3, 17])
    assert sel.selected.tolist() == [3, 17, 40]  # equal scores: increasing unit id
    assert sel.ranking[:3].tolist() == [3, 17, 40] and sel.ranking[3:].tolist()[:2] == [0, 1]
    with pytest.raises(ValueError, match="top_k: 5 is more than the 3 units listed"):
        uotsel.select(source, None, strategy="label", top_k=5, matching=[40, 3, 17])
    with pytest.raises(ValueError, match=r"matching: ids must be in \[0, 60\)"):
        uotsel.select(source, None, strategy="label", top_k=None, matching=[60])


def test_ties_are_broken_by_unit_id():
    assert uotsel.rank([1.0, 3.0, 1.0, 3.0, 2.0]).tolist() == [1, 3, 4, 0, 2]
    source = np.tile([[1.0, 0.0]], (5, 1))  # five identical units
    sel = uotsel.select(source, np.array([[1.0, 0.0]]), strategy="nearest", top_k=3)
    assert sel.selected.tolist() == [0, 1, 2]


def test_groups_split_the_ranking_evenly(units):
    source, target = units
    sel = uotsel.select(source, target, strategy="greedy_ot", top_k=5, n_groups=7)
    assert [g.size for g in sel.groups] == [9, 9, 9, 9, 8, 8, 8]
    np.testing.assert_array_equal(np.concatenate(sel.groups), sel.ranking)


@pytest.mark.slow
def test_sample_indices_expand_selected_units(units):
    source, target = units
    unit_ids = np.random.default_rng(0).integers(0, 60, size=500)
    sel = uotsel.select(source, target, top_k=4, unit_ids=unit_ids)
    expected = [i for i, u in enumerate(unit_ids) if u in set(sel.selected.tolist())]
    assert sel.sample_indices.tolist() == expected
    with pytest.raises(ValueError, match=r"unit_ids: ids must be in \[0, 60\)"):
        uotsel.select(source, target, top_k=4, unit_ids=[0, 61])


def test_unknown_strategy_and_settings(units):
    source, target = units
    with pytest.raises(ValueError, match="valid: uot, greedy_ot, nearest, random, label"):
        uotsel.select(source, target, strategy="best")
    with pytest.raises(TypeError, match="seed: not a setting of strategy 'uot'; valid: cost"):
        uotsel.select(source, target, seed=1)
    with pytest.raises(ValueError, match="top_k: 61 is more than the 60 source units"):
        uotsel.select(source, target, top_k=61)
    with pytest.raises(ValueError, match="tau_target: must be > 0"):
        uotsel.select(source, target, top_k=5, tau_target=0.0)
    with pytest.raises(ValueError, match="eps_c: must be > 0"):
        uotsel.select(source, target, top_k=5, eps_c=-0.1)
    with pytest.raises(ValueError, match="target: feature dimension 3"):
        uotsel.select(source, target[:, :3], top_k=5)


@pytest.mark.slow
def test_balanced_source_side_is_accepted(units):
    source, target = units
    sel = uotsel.select(source, target, top_k=5, tau_source=math.inf)
    # Every source unit then sends exactly its weight: all scores equal, ranking by id.
    np.testing.assert_allclose(sel.scores, 1.0, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
@pytest.mark.slow
def test_property_permuting_source_permutes_scores(seed):
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(25, 6)).astype(np.float32)
    target = rng.normal(size=(4, 6)).astype(np.float32)
    perm = rng.permutation(25)
    for strategy in ("uot", "greedy_ot", "nearest"):
        base = uotsel.select(source, target, strategy=strategy, top_k=5, eps_c=0.1)
        moved = uotsel.select(source[perm], target, strategy=strategy, top_k=5, eps_c=0.1)
        np.testing.assert_allclose(moved.scores, base.scores[perm], rtol=2e-4, atol=1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 25), groups=st.integers(1, 25))
@pytest.mark.slow
def test_property_selection_invariants(seed, k, groups):
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(25, 6)).astype(np.float32)
    target = rng.normal(size=(3, 6)).astype(np.float32)
    sel = uotsel.select(source, target, top_k=k, n_groups=groups, eps_c=0.1)
    assert sorted(sel.ranking.tolist()) == list(range(25))
    assert sel.selected.tolist() == sel.ranking[:k].tolist()
    ordered = sel.log_scores[sel.ranking]
    assert np.all(np.diff(ordered) <= 0)
    sizes = [g.size for g in sel.groups]
    assert len(sizes) == groups and max(sizes) - min(sizes) <= 1
