"""Independent float64 references for the tests (POT and plain numpy/scipy)."""

from __future__ import annotations

import math

import numpy as np
import ot
from scipy.special import logsumexp


def pot_marginals(cost, eps=1.0, tau_source=1.0, tau_target=100.0, a=None, b=None):
    """Row and column sums of POT's float64 scaling-form solution (the paper's own solver)."""
    plan = pot_plan(cost, eps, tau_source, tau_target, a, b)
    return plan.sum(1), plan.sum(0)


def pot_plan(cost, eps=1.0, tau_source=1.0, tau_target=100.0, a=None, b=None):
    """POT's float64 scaling-form plan ``[n, m]``, converged to ``1e-13``."""
    cost = np.asarray(cost, np.float64)
    n, m = cost.shape
    a = np.ones(n) if a is None else np.asarray(a, np.float64)
    b = np.ones(m) if b is None else np.asarray(b, np.float64)
    plan = ot.unbalanced.sinkhorn_knopp_unbalanced(
        a,
        b,
        cost,
        eps,
        (tau_source, tau_target),
        reg_type="entropy",
        numItermax=200000,
        stopThr=1e-13,
    )
    return plan


def log_domain_marginals(cost, eps=1.0, tau_source=1.0, tau_target=100.0, iters=20000):
    """Log row and column sums from a plain float64 log-domain iteration (no kernel, so no
    underflow for any cost scale); unit weights."""
    cost = np.asarray(cost, np.float64)
    n, m = cost.shape
    ka = 1.0 if math.isinf(tau_source) else tau_source / (tau_source + eps)
    kb = 1.0 if math.isinf(tau_target) else tau_target / (tau_target + eps)
    f, g = np.zeros(n), np.zeros(m)
    for _ in range(iters):
        g = -kb * eps * logsumexp((f[:, None] - cost) / eps, axis=0)
        f_new = -ka * eps * logsumexp((g[None, :] - cost) / eps, axis=1)
        done = np.max(np.abs(f_new - f)) < 1e-12
        f = f_new
        if done:
            break
    log_p = (f[:, None] + g[None, :] - cost) / eps
    return logsumexp(log_p, axis=1), logsumexp(log_p, axis=0)


def cosine_cost64(source, target, eps_c=0.01):
    s = np.asarray(source, np.float64)
    t = np.asarray(target, np.float64)
    s = s / np.linalg.norm(s, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    return (1.0 - s @ t.T) / eps_c


def top_k_agrees(ours, ref, k, rel_tie=1e-3):
    """True when our top-k set equals the reference's, except for units whose reference
    scores lie within ``rel_tie`` (relative) of the reference's k-th score (near-ties)."""
    ref = np.asarray(ref, np.float64)
    ours_top = set(np.argsort(-np.asarray(ours), kind="stable")[:k].tolist())
    ref_order = np.argsort(-ref, kind="stable")
    ref_top = set(ref_order[:k].tolist())
    kth = ref[ref_order[k - 1]]
    for unit in ours_top ^ ref_top:
        if abs(ref[unit] - kth) > rel_tie * abs(kth):
            return False
    return True


def clustered_features(rng, n_source, n_target, dim=64, n_clusters=20, spread=0.3):
    centres = rng.normal(size=(n_clusters, dim))
    src = centres[rng.integers(n_clusters, size=n_source)] + spread * rng.normal(
        size=(n_source, dim)
    )
    tgt = centres[rng.integers(n_clusters, size=n_target)] + spread * rng.normal(
        size=(n_target, dim)
    )
    return src.astype(np.float32), tgt.astype(np.float32)
