"""Per-group BatchNorm statistics (``bn_groups``) against independent references: the
one-group model run on each group separately, and hand-computed statistics."""

import numpy as np
import pytest

pytest.importorskip("flax")

import flax.linen as nn
import jax
import jax.numpy as jnp

from uotsel_train import models

SIZE = 16


@pytest.fixture(scope="module")
def variables():
    """Tiny-model variables with non-trivial running statistics and BatchNorm affines."""
    model = models.FineTuner("tiny", num_target=5, num_source=7)
    init = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    rng = np.random.default_rng(0)

    def jitter(path, leaf):
        name = path[-1].key
        if path[1].key != "backbone" or name == "kernel":
            return leaf
        if name in ("var", "scale"):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        return jnp.asarray(rng.normal(0, 0.2, leaf.shape), jnp.float32)  # mean, bias

    return jax.tree_util.tree_map_with_path(jitter, init)


def images(n, seed=1):
    """``n`` images whose halves have clearly different statistics."""
    x = np.random.default_rng(seed).normal(size=(n, SIZE, SIZE, 3)).astype(np.float32)
    x[n // 2 :] = 3.0 * x[n // 2 :] + 1.5
    return jnp.asarray(x)


def leaf_pairs(a, b):
    return zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)


def train_apply(model, variables, x, capture=False):
    return jax.jit(
        lambda v, x: model.apply(
            v,
            x,
            train=True,
            mutable=["batch_stats", "intermediates"] if capture else ["batch_stats"],
            capture_intermediates=capture,
        )
    )(variables, x)


@pytest.mark.slow
def test_grouped_forward_equals_each_group_run_alone(variables):
    x = images(8)
    grouped = models.FineTuner("tiny", num_target=5, num_source=7, bn_groups=2)
    single = models.FineTuner("tiny", num_target=5, num_source=7)
    outputs, updates = train_apply(grouped, variables, x)
    (t_a, s_a, f_a), u_a = train_apply(single, variables, x[:4])
    (t_b, s_b, f_b), u_b = train_apply(single, variables, x[4:])
    for got, a, b in zip(outputs, (t_a, s_a, f_a), (t_b, s_b, f_b), strict=True):
        np.testing.assert_allclose(got, np.concatenate([a, b]), rtol=1e-5, atol=1e-5)
    # Running averages: 0.9 old + 0.1 * (mean over the groups of each group's statistics),
    # which is the mean of the two one-group updates.
    want = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, u_a, u_b)
    jax.tree_util.tree_map(
        lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), updates, want
    )
    # The grouping matters here: one normalisation over the whole batch differs.
    whole, _ = train_apply(single, variables, x)
    assert np.max(np.abs(np.asarray(whole[2]) - np.asarray(outputs[2]))) > 1e-2


@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.slow
def test_running_statistics_by_hand(variables, groups):
    x = images(8, seed=2)
    model = models.FineTuner("tiny", num_target=5, bn_groups=groups)
    v = {"params": dict(variables["params"]), "batch_stats": variables["batch_stats"]}
    del v["params"]["source_head"]
    _, state = train_apply(model, v, x, capture=True)
    conv = np.asarray(state["intermediates"]["backbone"]["conv1"]["__call__"][0], np.float64)
    bn_out = np.asarray(state["intermediates"]["backbone"]["bn1"]["__call__"][0], np.float64)
    per_group = conv.reshape(groups, 8 // groups, *conv.shape[1:])
    means = per_group.mean(axis=(1, 2, 3))  # [groups, C]
    variances = ((per_group - means[:, None, None, None]) ** 2).mean(axis=(1, 2, 3))  # biased
    old = variables["batch_stats"]["backbone"]["bn1"]
    new = state["batch_stats"]["backbone"]["bn1"]
    np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * means.mean(0), atol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * variances.mean(0), atol=1e-5)
    bn = variables["params"]["backbone"]["bn1"]
    scale, bias = np.asarray(bn["scale"]), np.asarray(bn["bias"])
    normed = (per_group - means[:, None, None, None]) / np.sqrt(
        variances[:, None, None, None] + 1e-5
    )
    want = (normed * scale + bias).reshape(conv.shape)
    np.testing.assert_allclose(bn_out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_one_group_is_flax_batchnorm_bit_for_bit(variables):
    x = images(6, seed=3)
    default = models.FineTuner("tiny", num_target=5, num_source=7)
    one = models.FineTuner("tiny", num_target=5, num_source=7, bn_groups=1)
    out_default, up_default = train_apply(default, variables, x, capture=True)
    out_one, up_one = train_apply(one, variables, x, capture=True)
    jax.tree_util.tree_map(np.testing.assert_array_equal, out_one, out_default)
    jax.tree_util.tree_map(np.testing.assert_array_equal, up_one, up_default)
    # The stem BatchNorm of the one-group model is exactly Flax's nn.BatchNorm on its input.
    conv = up_one["intermediates"]["backbone"]["conv1"]["__call__"][0]
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    stem = {
        "params": variables["params"]["backbone"]["bn1"],
        "batch_stats": variables["batch_stats"]["backbone"]["bn1"],
    }
    y, stats = jax.jit(lambda v, c: flax_bn.apply(v, c, mutable=["batch_stats"]))(stem, conv)
    np.testing.assert_array_equal(up_one["intermediates"]["backbone"]["bn1"]["__call__"][0], y)
    jax.tree_util.tree_map(
        np.testing.assert_array_equal,
        up_one["batch_stats"]["backbone"]["bn1"],
        stats["batch_stats"],
    )


@pytest.mark.slow
def test_variables_and_evaluation_do_not_depend_on_groups(variables):
    key, x = jax.random.key(4), jnp.zeros((4, SIZE, SIZE, 3))
    trees = []
    for groups, train in [(1, False), (2, False), (2, True), (4, True)]:
        model = models.FineTuner("tiny", num_target=5, num_source=7, bn_groups=groups)
        trees.append(jax.eval_shape(lambda k, x, m=model, t=train: m.init(k, x, train=t), key, x))
    assert jax.tree_util.tree_structure(trees[0]) == jax.tree_util.tree_structure(variables)
    assert set(trees[0]["batch_stats"]["backbone"]["layer2_0"]["downsample_1"]) == {"mean", "var"}
    assert set(trees[0]["params"]["backbone"]["layer2_0"]["downsample_1"]) == {"scale", "bias"}
    for tree in trees[1:]:
        assert jax.tree_util.tree_structure(tree) == jax.tree_util.tree_structure(trees[0])
        for a, b in leaf_pairs(tree, trees[0]):
            assert a.shape == b.shape and a.dtype == b.dtype
    x = images(6, seed=5)
    evals = [
        jax.jit(models.FineTuner("tiny", num_target=5, num_source=7, bn_groups=g).apply)(
            variables, x
        )
        for g in (1, 4)  # 6 does not divide into 4 groups: evaluation does not care
    ]
    jax.tree_util.tree_map(np.testing.assert_array_equal, evals[0], evals[1])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_group_batchnorm_module_against_numpy(dtype):
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(2.0, 3.0, size=(6, 5, 3, 4)), dtype)
    bn = models.GroupBatchNorm(groups=3, dtype=dtype)
    init = bn.init(jax.random.key(0), x)
    # The same variables, and initial values, as Flax's BatchNorm.
    flax_init = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
    assert jax.tree_util.tree_structure(init) == jax.tree_util.tree_structure(flax_init)
    for a, b in leaf_pairs(init, flax_init):
        assert a.shape == b.shape == (4,) and a.dtype == b.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)
    scale, bias = jnp.asarray([1.0, 0.5, 2.0, 1.5]), jnp.asarray([0.0, 1.0, -1.0, 0.5])
    v = {
        "params": {"scale": scale, "bias": bias},
        "batch_stats": {"mean": jnp.full(4, 0.3), "var": jnp.full(4, 1.7)},
    }
    y, stats = bn.apply(v, x, mutable=["batch_stats"])
    assert y.dtype == dtype and y.shape == x.shape
    xs = np.asarray(x.astype(jnp.float32), np.float64).reshape(3, 2, 5, 3, 4)
    mean, var = xs.mean(axis=(1, 2, 3)), xs.var(axis=(1, 2, 3))
    # float32 statistics even for bfloat16 inputs: the running averages are exact to 1e-5
    np.testing.assert_allclose(stats["batch_stats"]["mean"], 0.27 + 0.1 * mean.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["batch_stats"]["var"], 1.53 + 0.1 * var.mean(0), rtol=1e-5)
    want = (xs - mean[:, None, None, None]) / np.sqrt(var[:, None, None, None] + 1e-5)
    want = want * np.asarray(v["params"]["scale"]) + np.asarray(v["params"]["bias"])
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(
        np.asarray(y.astype(jnp.float32)), want.reshape(x.shape), rtol=tol, atol=tol
    )
    frozen = models.GroupBatchNorm(groups=3, use_running_average=True, dtype=dtype)
    y_eval = np.asarray(frozen.apply(v, x).astype(jnp.float32))
    want_eval = (np.asarray(x.astype(jnp.float32), np.float64) - 0.3) / np.sqrt(1.7 + 1e-5)
    want_eval = want_eval * np.asarray(v["params"]["scale"]) + np.asarray(v["params"]["bias"])
    np.testing.assert_allclose(y_eval, want_eval, rtol=tol, atol=tol)


@pytest.mark.slow
def test_bn_groups_errors(variables):
    model = models.FineTuner("tiny", num_target=5, num_source=7, bn_groups=4)
    with pytest.raises(ValueError, match=r"^bn_groups: a batch of 6 does not split into 4"):
        model.apply(variables, jnp.zeros((6, SIZE, SIZE, 3)), train=True, mutable=["batch_stats"])
    for bad in (0, -2, 1.5, True):
        broken = models.FineTuner("tiny", num_target=5, bn_groups=bad)
        with pytest.raises(ValueError, match=r"^bn_groups: must be an int >= 1"):
            broken.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))


@pytest.mark.slow
def test_bfloat16_grouped_model_keeps_float32_state(variables):
    model = models.FineTuner("tiny", num_target=5, num_source=7, dtype=jnp.bfloat16, bn_groups=2)
    (target, _, feats), updates = train_apply(model, variables, images(4, seed=7))
    assert target.dtype == feats.dtype == jnp.float32
    for leaf in jax.tree_util.tree_leaves(updates):
        assert leaf.dtype == jnp.float32 and np.all(np.isfinite(leaf))
