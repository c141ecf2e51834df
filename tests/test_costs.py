import numpy as np
import pytest
from scipy.spatial.distance import cdist

import uotsel


@pytest.fixture
def points(rng):
    # Far from the origin relative to their spread: the case where a naive |x|^2 + |y|^2 - 2xy
    # expansion loses digits.
    source = (50.0 + rng.normal(size=(37, 16))).astype(np.float32)
    target = (50.0 + rng.normal(size=(11, 16))).astype(np.float32)
    return source, target


def test_cosine_matches_scipy(points):
    source, target = points
    ref = cdist(source.astype(np.float64), target.astype(np.float64), "cosine") / 0.01
    got = np.asarray(uotsel.cosine_cost(source, target, eps_c=0.01), np.float64)
    # A float32 dot product of D = 16 terms is exact to about D * 2^-24 = 1e-6 of |x| |y|, so a
    # cosine near 1 may be off by a few ulp (6e-8 each): up to 1e-4 after dividing by eps_c.
    # The accumulation order (and so the exact error) depends on the XLA version.
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert np.abs(got - ref).max() > 0  # float32 really ran


def test_l2_and_sqeuclidean_match_scipy(points):
    source, target = points
    s64, t64 = source.astype(np.float64), target.astype(np.float64)
    np.testing.assert_allclose(
        uotsel.l2_cost(source, target), cdist(s64, t64), rtol=1e-5, atol=1e-4
    )
    np.testing.assert_allclose(
        uotsel.sqeuclidean_cost(source, target),
        cdist(s64, t64, "sqeuclidean"),
        rtol=1e-5,
        atol=1e-3,
    )


@pytest.mark.parametrize("kind", uotsel.COSTS)
@pytest.mark.parametrize("chunk", [1, 5, 16, 37, 100])
def test_chunked_equals_whole(points, kind, chunk):
    source, target = points
    whole = uotsel.cost_matrix(source, target, kind)
    chunked = uotsel.cost_matrix(source, target, kind, chunk_size=chunk)
    assert chunked.shape == (37, 11)
    # Blocking changes the matmul's summation order: a few float32 ulps of the cosine
    # (~6e-8 each, 6e-6 after dividing by eps_c = 0.01) or of the squared distance.
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=3e-5)


def test_cosine_is_scale_invariant_and_bounded(rng):
    source = rng.normal(size=(20, 5)).astype(np.float32)
    target = rng.normal(size=(4, 5)).astype(np.float32)
    c = np.asarray(uotsel.cosine_cost(source, target, 0.5))
    np.testing.assert_allclose(c, uotsel.cosine_cost(7.0 * source, target, 0.5), atol=1e-5)
    assert c.min() >= 0.0 and c.max() <= 2.0 / 0.5


def test_cosine_of_tiny_and_huge_rows_is_finite():
    source = np.array([[1e-30, 1e-30], [1e30, 0.0], [3.0, 3.0]], np.float32)
    c = np.asarray(uotsel.cosine_cost(source, np.array([[1.0, 1.0]], np.float32), 1.0))
    np.testing.assert_allclose(c[:, 0], [0.0, 1 - np.sqrt(0.5), 0.0], atol=1e-6)


def test_float64_inputs_keep_float64():
    import jax

    with jax.enable_x64(True):
        c = uotsel.cosine_cost(np.eye(3), np.eye(3)[:2])
        assert c.dtype == np.float64


@pytest.mark.parametrize(
    "source, target, kwargs, match",
    [
        (np.zeros((2, 3)), np.ones((2, 3)), {}, "source: 2 row.s. have zero norm"),
        (np.ones((2, 3)), np.array([[1.0, 0, 0], [0, 0, 0]]), {}, "target: 1 row.s. have zero"),
        (np.ones((2, 3)), np.ones((2, 4)), {}, "target: feature dimension 4 does not match"),
        (np.array([[np.nan, 1.0]]), np.ones((1, 2)), {}, "source: contains 1 NaN"),
        (np.ones((0, 3)), np.ones((2, 3)), {}, "source: is empty"),
        (np.ones((2, 3)), np.ones((2, 3)), {"eps_c": 0.0}, "eps_c: must be > 0"),
        (np.ones(3), np.ones((2, 3)), {}, "source: expected a 2-d array"),
    ],
)
def test_bad_inputs(source, target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        uotsel.cosine_cost(source, target, **kwargs)


def test_unknown_cost_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: cosine, l2, sqeuclidean"):
        uotsel.cost_matrix(np.ones((2, 2)), np.ones((2, 2)), "manhattan")


def test_zero_rows_are_fine_for_l2():
    c = uotsel.l2_cost(np.zeros((2, 3)), np.array([[3.0, 4.0, 0.0]]))
    np.testing.assert_allclose(c, [[5.0], [5.0]], rtol=1e-6)


def test_rows_of_extreme_norm_take_a_second_program_only_then(rng):
    """The exact rescaling for norms beyond [2^-40, 2^40] is compiled and run only for inputs
    that need it; under a caller's jit both ways are in the one program."""
    import jax

    from uotsel import costs

    base = rng.normal(size=(7, 3)).astype(np.float32)
    target = rng.normal(size=(2, 3)).astype(np.float32)
    before = costs.pairwise._cache_size()
    plain = np.asarray(uotsel.cosine_cost(base, target))
    assert costs.pairwise._cache_size() == before + 1
    huge = np.asarray(uotsel.cosine_cost(base * np.float32(1e30), target))
    assert costs.pairwise._cache_size() == before + 2
    np.testing.assert_allclose(huge, plain, atol=1e-3)
    traced = jax.jit(lambda s, t: costs.pairwise("cosine", s, t, 0.01, 7, wide=None).cost)
    np.testing.assert_allclose(traced(base * np.float32(1e30), target), plain, atol=1e-3)
