"""Co-Tuning's reverse relationship, as the Co-Tuning release computes it: the logistic
regression against scikit-learn, the C search, the calibration, the Bayes step, the split, the
setting and its use by a run.

Every JAX fit below has the fitting part ``[400, 6]`` and 3 classes in float64, so one
compilation serves the file."""

import json
import math
import types

import numpy as np
import pytest

pytest.importorskip("optax")
pytest.importorskip("ml_collections")

import jax
from hypothesis import given, settings
from hypothesis import strategies as st

from uotsel_train import config, cotuning, objective_settings, softmax_regression

N_FIT, N_VAL, D, K = 400, 100, 6, 3


def _softmax(logits, axis=1):
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def _soft_data(seed, n=N_FIT + N_VAL):
    """Source-probability-like rows ``[n, D]`` (Dirichlet) and labels drawn from a planted
    softmax model, every class present."""
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.full(D, 0.5), size=n)
    planted = rng.normal(scale=4.0, size=(K, D))
    p = _softmax(x @ planted.T)
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    labels[:K] = np.arange(K)
    return x, labels


@pytest.fixture(scope="module")
def compiled():
    """The one compilation of the file's float64 fits (about a second on two cores), paid
    once here rather than by whichever test comes first."""
    x, labels = _soft_data(0, N_FIT)
    with jax.enable_x64(True):
        w = softmax_regression.fit(x, labels, K, 1.0, max_iter=1).weights
        softmax_regression.objective(w, x, labels, 1.0)  # op by op, as the tests call it


@pytest.fixture(scope="module")
def linear_model():
    """scikit-learn's linear models (imported once: about a second and a half)."""
    return pytest.importorskip("sklearn.linear_model")


# --- the logistic regression ----------------------------------------------------------------


@pytest.mark.parametrize("c", [0.1, 1.0, 30.0])
def test_fit_matches_sklearn_multinomial_without_intercept(compiled, linear_model, c):
    x, labels = _soft_data(0, N_FIT)
    ref = linear_model.LogisticRegression(C=c, fit_intercept=False, tol=1e-12, max_iter=10**5)
    ref.fit(x, labels)
    # scikit-learn fitted the multinomial model: its probabilities are the softmax of x @ W.T
    np.testing.assert_allclose(ref.predict_proba(x), _softmax(x @ ref.coef_.T), atol=1e-12)
    with jax.enable_x64(True):
        got = softmax_regression.fit(x, labels, K, c)
        ours, theirs = (
            float(softmax_regression.objective(w, x, labels, c)) for w in (got.weights, ref.coef_)
        )
    assert got.converged and got.gradient <= 1e-9 and got.weights.shape == (K, D)
    # scikit-learn stops on its relative decrease of the objective (gradient ~1e-8 here), so
    # the two agree to about its precision, and ours is not the worse minimiser
    assert ours <= theirs + 1e-13
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(got.weights, ref.coef_, atol=1e-5 * scale, rtol=0)
    np.testing.assert_allclose(_softmax(x @ got.weights.T), ref.predict_proba(x), atol=1e-6)


@pytest.mark.slow
def test_fit_runs_in_float32_without_x64(compiled):
    x, labels = _soft_data(0, N_FIT)
    with jax.enable_x64(True):
        wide = softmax_regression.fit(x, labels, K, 1.0)
    with jax.enable_x64(False):
        narrow = softmax_regression.fit(x, labels, K, 1.0)
    assert narrow.converged and narrow.gradient <= 1e-5
    # the smallest curvature is 1 / (C N) = 1 / 400: a gradient of 1e-5 leaves W off by ~1e-3
    np.testing.assert_allclose(narrow.weights, wide.weights, atol=4e-3)
    np.testing.assert_allclose(
        _softmax(x @ narrow.weights.T), _softmax(x @ wide.weights.T), atol=1e-3
    )


def test_fit_reports_non_convergence_as_data(compiled):
    x, labels = _soft_data(0, N_FIT)
    with jax.enable_x64(True):
        got = softmax_regression.fit(x, labels, K, 30.0, max_iter=2)
    assert not got.converged and got.iterations == 2 and got.gradient > 1e-9
    assert np.isfinite(got.weights).all()


def test_the_objective_is_sklearns_divided_by_c_n(compiled):
    x, labels = _soft_data(1, N_FIT)
    w = np.random.default_rng(2).normal(size=(K, D))
    c = 3.0
    nll = -np.log(_softmax(x @ w.T)[np.arange(N_FIT), labels])
    sklearn_objective = 0.5 * np.sum(w**2) + c * nll.sum()
    with jax.enable_x64(True):
        got = float(softmax_regression.objective(w, x, labels, c))
    assert math.isclose(got * c * N_FIT, sklearn_objective, rel_tol=1e-12)


# --- the C search ---------------------------------------------------------------------------


def test_the_c_search_keeps_the_first_best_in_grid_order(monkeypatch):
    """Planted weights per C: accuracies 0.5, 1, 0, 1 on two validation rows."""
    identity, swapped, always0 = np.eye(2), np.eye(2)[::-1], np.array([[1.0, 0.0], [1.0, 0.0]])
    planted = {1.0: always0, 2.0: identity, 3.0: swapped, 4.0: identity}
    seen = []

    def fake_fit(x, labels, num_classes, c, start=None, **_):
        seen.append(c)
        return softmax_regression.Fit(planted[c], True, 1, 0.0)

    monkeypatch.setattr(softmax_regression, "fit", fake_fit)
    val_x, val_labels = np.eye(2), np.array([0, 1])
    got = softmax_regression.choose(val_x, val_labels, val_x, val_labels, 2, [4.0, 1.0, 2.0, 3.0])
    assert got.accuracies == (1.0, 0.5, 1.0, 0.0)
    assert (got.c, got.index) == (4.0, 0)  # 4.0 and 2.0 tie; 4.0 comes first in the grid
    got = softmax_regression.choose(val_x, val_labels, val_x, val_labels, 2, [1.0, 2.0, 3.0, 4.0])
    assert (got.c, got.index, got.accuracies) == (2.0, 1, (0.5, 1.0, 0.0, 1.0))
    assert seen[:4] == [1.0, 2.0, 3.0, 4.0]  # fitted from the smallest C up


def test_the_c_search_fits_as_from_scratch_and_scores_on_validation(compiled):
    x, labels = _soft_data(3)
    train_x, train_y, val_x, val_y = x[:N_FIT], labels[:N_FIT], x[N_FIT:], labels[N_FIT:]
    grid = (100.0, 1.0, 1e-3)
    with jax.enable_x64(True):
        got = softmax_regression.choose(train_x, train_y, val_x, val_y, K, grid)
        alone = [softmax_regression.fit(train_x, train_y, K, c) for c in grid]
    expected = [float(np.mean(np.argmax(val_x @ f.weights.T, 1) == val_y)) for f in alone]
    assert got.accuracies == tuple(expected)
    assert got.index == int(np.argmax(expected)) and got.c == grid[got.index]
    np.testing.assert_allclose(got.fit.weights, alone[got.index].weights, atol=1e-6)


def test_a_bad_grid_is_refused():
    with pytest.raises(ValueError, match=r"co_tuning: the C grid must hold finite numbers > 0"):
        softmax_regression.choose(np.eye(2), [0, 1], np.eye(2), [0, 1], 2, [1.0, 0.0])


# --- the calibration ------------------------------------------------------------------------


def _mean_ce(z, labels, s):
    return float(-np.mean(np.log(_softmax(z * s))[np.arange(len(labels)), labels]))


@pytest.mark.parametrize("seed", [0, 1])
def test_calibration_minimises_the_mean_cross_entropy(seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(50, 4))
    labels = np.where(rng.random(50) < 0.6, z.argmax(1), rng.integers(0, 4, 50))
    got = softmax_regression.calibrate(z, labels)
    assert got.bracketed
    grid = np.linspace(got.scale - 0.05, got.scale + 0.05, 2001)
    losses = [_mean_ce(z, labels, s) for s in grid]
    assert abs(grid[int(np.argmin(losses))] - got.scale) <= 1e-4  # the grid's step: 5e-5
    optimize = pytest.importorskip("scipy.optimize")
    ref = optimize.minimize_scalar(
        lambda s: _mean_ce(z, labels, s), bounds=(-20, 20), method="bounded",
        options={"xatol": 1e-10},
    )  # fmt: skip
    assert abs(ref.x - got.scale) <= 1e-6


def test_calibration_of_anti_predictive_logits_is_negative_and_of_flat_ones_is_one():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(40, 3))
    labels = np.where(rng.random(40) < 0.7, z.argmin(1), z.argmax(1))
    got = softmax_regression.calibrate(z, labels)
    grid = np.linspace(-5, 5, 10001)
    assert (
        got.scale < 0
        and abs(grid[np.argmin([_mean_ce(z, labels, s) for s in grid])] - got.scale) <= 1e-3
    )
    assert softmax_regression.calibrate(np.ones((3, 4)), [0, 1, 2]) == (1.0, True)


def test_calibration_that_falls_for_ever_stops_at_its_bound():
    z = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.5]])  # every label's logit is the row's largest
    got = softmax_regression.calibrate(z, [0, 1], max_scale=100.0)
    assert got == (100.0, False)
    assert softmax_regression.calibrate(z, [0, 1]) == (1e4, False)
    assert softmax_regression.calibrate(z, [1, 0]) == (-1e4, False)  # every label the smallest


def test_calibration_refuses_no_rows():
    with pytest.raises(ValueError, match=r"co_tuning: calibration needs logits \[M, K\]"):
        softmax_regression.calibrate(np.zeros((0, 3)), [])


# --- Bayes' rule ----------------------------------------------------------------------------


def test_bayes_on_a_two_by_three_hand_computation():
    # scale 2 x weights: p(y_t | y_s) = (1/2, 1/2), (2/3, 1/3), (1/4, 3/4) for y_s = 0, 1, 2
    weights = np.array([[0.0, np.log(2) / 2, 0.0], [0.0, 0.0, np.log(3) / 2]])
    marginal = np.array([0.5, 0.25, 0.25])
    # joint p(y_t, y_s): row y_t = 0: 1/4, 1/6, 1/16 (sum 23/48); y_t = 1: 1/4, 1/12, 3/16 (25/48)
    expected = np.array([[12 / 23, 8 / 23, 3 / 23], [12 / 25, 4 / 25, 9 / 25]])
    got = cotuning.bayes(weights, 2.0, marginal)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-12)


def test_bayes_refuses_a_bad_marginal():
    with pytest.raises(ValueError, match="co_tuning: the source marginal must be finite"):
        cotuning.bayes(np.zeros((2, 3)), 1.0, np.zeros(3))
    with pytest.raises(ValueError, match=r"co_tuning: expected weights \[C_t, C_s\]"):
        cotuning.bayes(np.zeros((2, 3)), 1.0, np.ones(2))


# --- the reverse relationship ---------------------------------------------------------------


def _planted_one_hot(seed):
    """One-hot source probabilities: y_t drawn, then y_s ~ truth[y_t]; ``(parts, truth)``."""
    rng = np.random.default_rng(seed)
    truth = rng.dirichlet(np.full(D, 2.0), size=K)  # p(y_s | y_t), [K, D]
    y_t = np.arange(N_FIT + N_VAL) % K
    y_s = (truth[y_t].cumsum(1) > rng.random((y_t.size, 1))).argmax(1)
    x = np.eye(D)[y_s]
    return (x[:N_FIT], y_t[:N_FIT], x[N_FIT:], y_t[N_FIT:]), truth


def test_reverse_recovers_a_planted_relationship(compiled):
    (train_x, train_y, val_x, val_y), truth = _planted_one_hot(5)
    with jax.enable_x64(True):
        rel, d = cotuning.reverse_relationship(train_x, train_y, val_x, val_y, K)
    assert rel.shape == (K, D) and rel.dtype == np.float32
    np.testing.assert_allclose(rel.sum(1), 1.0, rtol=1e-6)
    # with one-hot rows and little regularisation the classifier is the fitting part's
    # p(y_t | y_s) and Bayes' rule with the marginal gives back p(y_s | y_t), as counted
    assert d.c == 1e4 and d.converged and d.calibrated and abs(d.scale - 1) < 0.2
    counts = np.zeros((K, D))
    np.add.at(counts, (train_y, train_x.argmax(1)), 1)
    given_source = counts / counts.sum(0)  # [K, D]: p(y_t | y_s) on the fitting part
    marginal = np.concatenate([train_x, val_x]).mean(0)
    joint = given_source**d.scale / (given_source**d.scale).sum(0) * marginal
    np.testing.assert_allclose(rel, joint / joint.sum(1, keepdims=True), atol=1e-4)
    np.testing.assert_allclose(rel, truth, atol=0.08)  # sampling: ~130 images per class
    assert (d.fit_images, d.val_images, len(d.accuracies)) == (N_FIT, N_VAL, 17)
    assert d.val_accuracy == max(d.accuracies) == d.accuracies[0]


def test_reverse_is_the_papers_steps_written_out(compiled):
    x, labels = _soft_data(6)
    parts = (x[:N_FIT], labels[:N_FIT], x[N_FIT:], labels[N_FIT:])
    with jax.enable_x64(True):
        rel, d = cotuning.reverse_relationship(*parts, K)
        w = softmax_regression.fit(parts[0], parts[1], K, d.c).weights
    z = parts[2] @ w.T
    # (the search warm-starts its fits; a fit from zeros reaches the same minimiser)
    assert abs(d.scale - softmax_regression.calibrate(z, parts[3]).scale) <= 1e-6
    given_source = _softmax(w.T * d.scale)  # [C_s, C_t]
    joint = (given_source * x.mean(0)[:, None]).T
    np.testing.assert_allclose(rel, joint / joint.sum(1, keepdims=True), rtol=1e-4, atol=1e-7)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), concentration=st.sampled_from([0.05, 0.5, 5.0]))
def test_reverse_rows_are_distributions_whatever_the_sample_order(compiled, seed, concentration):
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.full(D, concentration), size=N_FIT + N_VAL)
    labels = rng.integers(0, K, N_FIT + N_VAL)
    labels[:K] = np.arange(K)
    parts = (x[:N_FIT], labels[:N_FIT], x[N_FIT:], labels[N_FIT:])
    fit_order, val_order = rng.permutation(N_FIT), rng.permutation(N_VAL)
    shuffled = (x[:N_FIT][fit_order], labels[:N_FIT][fit_order])
    shuffled += (x[N_FIT:][val_order], labels[N_FIT:][val_order])
    with jax.enable_x64(True):
        rel, _ = cotuning.reverse_relationship(*parts, K)
        again, _ = cotuning.reverse_relationship(*shuffled, K)
    assert rel.shape == (K, D) and np.all(rel >= 0) and np.all(np.isfinite(rel))
    np.testing.assert_allclose(rel.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(again, rel, atol=1e-6)


def test_reverse_refuses_an_empty_class_and_no_held_out_image():
    x = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="co_tuning: target class 1 has no image in the part"):
        cotuning.reverse_relationship(x, [0, 0, 2, 2], x[:1], [1], 3)
    with pytest.raises(ValueError, match="co_tuning: the reverse relationship chooses C and"):
        cotuning.reverse_relationship(x, [0, 1, 2, 2], x[:0], [], 3)
    with pytest.raises(ValueError, match=r"co_tuning: labels must lie in 0 \.\.\. 2"):
        cotuning.reverse_relationship(x, [0, 1, 2, 2], x[:1], [3], 3)
    with pytest.raises(ValueError, match="co_tuning: the fitting part has 3 source classes"):
        cotuning.reverse_relationship(x, [0, 1, 2, 2], np.ones((1, 2)), [0], 3)


# --- the split, the scale, the setting ------------------------------------------------------


def test_the_split_holds_out_a_fifth_of_every_class_from_the_seed():
    labels = np.repeat(np.arange(5), [1, 2, 3, 10, 12])
    held = cotuning.split(labels, seed=7)
    per_class = np.bincount(labels[held], minlength=5).tolist()
    assert per_class == [0, 0, 1, 2, 2]  # 0.2 n rounded half up, at most n - 1
    np.testing.assert_array_equal(cotuning.split(labels, seed=7), held)
    assert any(np.any(cotuning.split(labels, seed=s) != held) for s in range(8, 12))


def test_source_probabilities_use_the_releases_scale():
    assert cotuning.LOGIT_SCALE == 0.8840456604957581
    logits = np.random.default_rng(8).normal(size=(3, 5))
    got = np.asarray(cotuning.source_probabilities(logits))
    np.testing.assert_allclose(got, _softmax(logits * 0.8840456604957581), rtol=1e-5)
    assert cotuning.C_GRID == (
        1e4, 3e3, 1e3, 3e2, 1e2, 3e1, 1e1, 3, 1, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4,
    )  # fmt: skip


def test_the_setting_defaults_to_reverse_and_refuses_other_values():
    assert config.default().co_tuning_relationship == "reverse"
    assert set(config.CO_TUNING_RELATIONSHIPS) == set(cotuning.APPROACHES)
    for value in cotuning.APPROACHES:
        cfg = config.override(config.default(), [f"co_tuning_relationship={value}"])
        config.validate(cfg, check_files=False)
    cfg = config.override(config.default(), ["co_tuning_relationship=calibrated"])
    message = "co_tuning_relationship: unknown 'calibrated'; valid: reverse, direct"
    with pytest.raises(config.ConfigError, match=message):
        config.validate(cfg, check_files=False)


def test_estimate_fits_in_float64_on_the_seeded_split(compiled, monkeypatch):
    """``estimate`` with the images' probabilities planted: the reverse approach runs on the
    split of ``seed`` under float64; the direct one averages every image."""
    x, labels = _soft_data(9, 500)
    monkeypatch.setattr(cotuning, "_probabilities", lambda *args: (x, labels))
    source = types.SimpleNamespace(classes=["a", "b", "c"])
    held = cotuning.split(labels, 4)
    assert held.sum() == N_VAL  # the planted shapes: 400 to fit, 100 held out
    dtypes = []
    choose = softmax_regression.choose

    def watched(*args, **kwargs):
        dtypes.append(jax.numpy.result_type(float))
        return choose(*args, **kwargs)

    monkeypatch.setattr(softmax_regression, "choose", watched)
    got = cotuning.estimate({}, {}, "tiny", source, np.arange(500), seed=4)
    assert dtypes == [np.float64] and got.images == 500 and got.approach == "reverse"
    with jax.enable_x64(True):
        rel, d = cotuning.reverse_relationship(x[~held], labels[~held], x[held], labels[held], K)
    assert got.diagnostics == d
    np.testing.assert_array_equal(got.relationship, rel)
    direct = cotuning.estimate({}, {}, "tiny", source, np.arange(500), approach="direct")
    np.testing.assert_allclose(direct.relationship, cotuning.relationship(x, labels, K))
    assert direct.diagnostics is None


def test_estimate_refuses_an_unknown_approach():
    with pytest.raises(ValueError, match="co_tuning: unknown approach 'mean'"):
        cotuning.estimate({}, {}, "tiny", None, [], approach="mean")


@pytest.mark.parametrize("approach", ["reverse", "direct"])
def test_settings_estimate_by_the_setting_and_record_it(tmp_path, monkeypatch, approach):
    """``objective_settings.settings`` passes ``co_tuning_relationship`` and the run seed to
    ``cotuning.estimate``, saves the relationship and its record, and logs one line."""
    rel = np.full((2, 4), 0.25, np.float32)
    diagnostics = None
    if approach == "reverse":
        diagnostics = cotuning.Diagnostics(30.0, 0.75, False, 1.25, True, (0.5,) * 17, 6, 2)
    calls = []

    def fake_estimate(backbone, head, arch, source, indices, **kwargs):
        calls.append({"indices": indices, **kwargs})
        return cotuning.Estimate(rel, kwargs["approach"], len(indices), diagnostics)

    monkeypatch.setattr(cotuning, "estimate", fake_estimate)
    cfg = config.override(
        config.default(),
        ["objective=co_tuning", f"co_tuning_relationship={approach}", "seed=5", "arch=tiny"],
    )
    inputs = types.SimpleNamespace(target=None, train_indices=np.arange(8))
    backbone = {"source_head": {}}
    lines = []
    out = str(tmp_path)
    settings_ = objective_settings.settings(cfg, inputs, backbone, out, True, lines.append)
    assert settings_.relationship is rel
    assert calls[0]["approach"] == approach and calls[0]["seed"] == 5
    assert calls[0]["indices"] is inputs.train_indices  # not the val_fraction hold-out
    np.testing.assert_array_equal(np.load(tmp_path / "relationship.npy"), rel)
    record = json.loads((tmp_path / "relationship.json").read_text())
    assert record["approach"] == approach and record["images"] == 8
    assert record["logit_scale"] == cotuning.LOGIT_SCALE
    assert lines[0].startswith(f"co_tuning: p(y_s | y_t) [2, 4] by the {approach} approach")
    if approach == "reverse":
        assert record["c"] == 30.0 and record["scale"] == 1.25 and record["converged"] is False
        assert record["c_grid"] == list(cotuning.C_GRID) and record["val_accuracy"] == 0.75
        assert "C 30 (held-out accuracy 0.750), scale 1.25" in lines[0]
        assert "L-BFGS stopped before converging" in lines[0]
    else:
        assert "c" not in record and "held out" not in lines[0]
    lines.clear()
    objective_settings.settings(cfg, inputs, backbone, str(tmp_path / "other"), False, lines.append)
    assert not lines  # only the lead process writes and logs
