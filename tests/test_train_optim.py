import numpy as np
import pytest

pytest.importorskip("optax")

import jax
import jax.numpy as jnp
import optax

from uotsel_train import losses, optim


def test_learning_rate_steps_at_epochs_60_and_80():
    sched = optim.learning_rate(0.01, steps_per_epoch=7)
    for step, want in [
        (0, 0.01),
        (7 * 60 - 1, 0.01),
        (7 * 60, 0.001),
        (7 * 80 - 1, 0.001),
        (7 * 80, 1e-4),
        (7 * 100, 1e-4),
    ]:
        assert float(sched(step)) == pytest.approx(want, rel=1e-6), step


def _torch_sgd(params, grads_seq, lrs, wd, momentum=0.9):
    """torch.optim.SGD(nesterov=True, weight_decay=wd) written out in numpy."""
    p = {k: v.copy() for k, v in params.items()}
    buf = {k: None for k in p}
    for grads, lr_of in zip(grads_seq, lrs, strict=True):
        for k in p:
            g = grads[k] + wd * p[k]
            buf[k] = g.copy() if buf[k] is None else momentum * buf[k] + g
            p[k] = p[k] - lr_of(k) * (g + momentum * buf[k])
    return p


def test_sgd_matches_torch_semantics_with_head_multiplier():
    rng = np.random.default_rng(0)
    params = {"backbone": {"w": rng.normal(size=(3, 2))}, "target_head": {"w": rng.normal(size=4)}}
    flat = {"b": params["backbone"]["w"], "h": params["target_head"]["w"]}
    grads_seq = [{"b": rng.normal(size=(3, 2)), "h": rng.normal(size=4)} for _ in range(5)]
    tx = optim.sgd(0.1, 1e-2, steps_per_epoch=2, milestones=(1,))
    state = tx.init(params)
    p = jax.tree.map(jnp.asarray, params)
    for g in grads_seq:
        grads = {"backbone": {"w": g["b"]}, "target_head": {"w": g["h"]}}
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
    # lr 0.1 for steps 0-1 (epoch 0), then 0.01; heads 10x.
    lrs = [lambda k, s=s: (0.1 if s < 2 else 0.01) * (10 if k == "h" else 1) for s in range(5)]
    ref = _torch_sgd(flat, grads_seq, lrs, 1e-2)
    np.testing.assert_allclose(p["backbone"]["w"], ref["b"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p["target_head"]["w"], ref["h"], rtol=1e-5, atol=1e-6)


def test_labelled_loss_by_hand():
    t_logits = jnp.array([[2.0, 0.0], [0.0, 1.0]])
    s_logits = jnp.array([[0.0, 0.0, 3.0]])
    loss, parts = losses.labelled_loss(t_logits, jnp.array([0, 1]), s_logits, jnp.array([2]), 0.3)
    ce_t = np.mean([np.log(1 + np.exp(-2.0)), np.log(1 + np.exp(-1.0))])
    ce_s = -np.log(np.exp(3) / (2 + np.exp(3)))
    np.testing.assert_allclose(parts["target_ce"], ce_t, rtol=1e-6)
    np.testing.assert_allclose(loss, ce_t + 0.3 * ce_s, rtol=1e-6)


def test_unlabelled_loss_by_hand_and_pseudo_label_gets_no_gradient():
    t_logits = jnp.array([[1.0, 0.0]])
    strong = jnp.array([[0.5, -0.5], [0.0, 2.0]])
    weak = jnp.array([[3.0, 0.0], [0.0, 0.1]])
    loss, parts = losses.unlabelled_loss(t_logits, jnp.array([0]), strong, weak, 1.0)
    q = np.exp(np.asarray(weak)) / np.exp(np.asarray(weak)).sum(1, keepdims=True)
    logp = np.asarray(jax.nn.log_softmax(strong))
    np.testing.assert_allclose(parts["pseudo_ce"], np.mean(-(q * logp).sum(1)), rtol=1e-6)
    grad_weak = jax.grad(
        lambda w: losses.unlabelled_loss(t_logits, jnp.array([0]), strong, w, 1.0)[0]
    )(weak)
    np.testing.assert_array_equal(grad_weak, 0.0)
    # A threshold nobody reaches: the term is 0, not NaN.
    loss, parts = losses.unlabelled_loss(
        t_logits, jnp.array([0]), strong, weak, 1.0, min_confidence=0.999
    )
    assert float(parts["mask_rate"]) == 0.0 and float(parts["pseudo_ce"]) == 0.0
    assert np.isfinite(float(loss))
