"""The kernel loop's layouts (``uotsel._iterations.Form``): the stop tested every K iterations
gives today's results bit for bit; products as reductions agree within the certified bounds;
the accelerator program has no matrix products and tests its stop ceil(iterations / K) times."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import uotsel
from uotsel import _iterations as it
from uotsel import unbalanced


def _problems():
    """A paper-like cosine problem, one that absorbs its kernel again (cost / eps in the
    hundreds), and one with masks and weights."""
    rng = np.random.default_rng(3)
    paper = uotsel.cosine_cost(rng.normal(size=(300, 16)), rng.normal(size=(40, 16)))
    far = jnp.asarray(rng.random((120, 30)) * 600.0, jnp.float32)
    masked = jnp.asarray(rng.random((50, 12)) * 5.0, jnp.float32)
    return [
        (paper, {}),
        (far, {"eps": 1.0, "tau_source": 5.0, "tau_target": 50.0}),
        (
            masked,
            {
                "source_mask": rng.random(50) > 0.2,
                "target_weights": rng.random(12).astype(np.float32) + 0.5,
                "tau_target": math.inf,
            },
        ),
    ]


def _solve(cost, given, form, lockstep=False):
    uot = uotsel.UOT()
    lead, (n, m) = cost.shape[:-2], cost.shape[-2:]
    settings = unbalanced.prepare(lead, n, m, cost.dtype, uot, **given)
    return unbalanced.solve_staged(cost, settings, lockstep=lockstep, form=form).output


def _equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("check_every", [2, 3, 8])
@pytest.mark.slow
def test_testing_the_stop_every_k_iterations_changes_no_bit(check_every):
    for cost, given in _problems():
        today = _solve(cost, given, it.Form(1, "dot"))
        assert _equal(_solve(cost, given, it.Form(check_every, "dot")), today)
    # The packed state keeps float64 scalars and vectors bit for bit too.
    with jax.enable_x64(True):
        cost = jnp.asarray(_problems()[1][0], jnp.float64)
        today = _solve(cost, _problems()[1][1], it.Form(1, "dot"))
        assert today.f.dtype == jnp.float64
        assert _equal(_solve(cost, _problems()[1][1], it.Form(check_every, "dot")), today)


@pytest.mark.slow
def test_iterations_written_out_in_a_row_change_no_bit():
    """``unroll`` (the accelerator's default is 2) changes the compiled body, not the results,
    whether or not it divides K; the stop is tested as often."""
    for cost, given in _problems():
        for products in ("dot", "reduce"):
            once = _solve(cost, given, it.Form(8, products))
            for unroll in (2, 3):
                assert _equal(_solve(cost, given, it.Form(8, products, unroll)), once)
    cost = jnp.stack([_problems()[0][0]] * 2 + [_problems()[0][0] * 3.0])
    assert _equal(
        _solve(cost, {}, it.Form(8, "reduce", 2), True),
        _solve(cost, {}, it.Form(8, "reduce"), True),
    )


@pytest.mark.slow
def test_batches_in_lockstep_are_unchanged_by_k():
    cost = jnp.stack([_problems()[0][0]] * 2 + [_problems()[0][0] * 3.0])
    for lockstep in (False, True):
        today = _solve(cost, {}, it.Form(1, "dot"), lockstep)
        reduced = _solve(cost, {}, it.Form(8, "reduce"), lockstep)
        assert _equal(reduced, _solve(cost, {}, it.Form(1, "reduce"), lockstep))
        bound = np.asarray(today.error + today.rounding)[:, None]
        diff = np.abs(np.expm1(np.asarray(reduced.log_row_sums - today.log_row_sums)))
        assert np.all(diff <= 2 * bound)


@pytest.mark.slow
def test_products_as_reductions_agree_within_the_certified_bounds():
    for cost, given in _problems():
        dots = _solve(cost, given, it.Form(1, "dot"))
        sums = _solve(cost, given, it.Form(8, "reduce"))
        assert _equal(sums, _solve(cost, given, it.Form(1, "reduce")))
        for out in (dots, sums):
            assert bool(out.converged)
        # Both are within error + rounding of the exact marginals, hence of each other.
        bound = float(dots.error + dots.rounding + sums.error + sums.rounding)
        keep = np.isfinite(np.asarray(dots.log_row_sums))
        for a, b in (
            (dots.log_row_sums, sums.log_row_sums),
            (dots.log_col_sums, sums.log_col_sums),
        ):
            a, b = np.asarray(a), np.asarray(b)
            fin = np.isfinite(a)
            assert np.array_equal(fin, np.isfinite(b))
            assert np.max(np.abs(np.expm1(a[fin] - b[fin]))) <= 1.01 * bound
        assert keep.any()


@pytest.mark.slow
def test_the_stop_is_tested_ceil_iterations_over_k_times():
    """Host condition tests of one solve: ceil(iterations / K) + 1 per kernel pass for the
    inner loop and passes + 1 for the outer one; 3 + 2 at K = 8 on the paper's 2000 x 200
    problem (one pass, 17 iterations), against 18 + 2 at K = 1."""
    rng = np.random.default_rng(0)
    source = rng.normal(size=(2000, 128)).astype(np.float32)
    target = rng.normal(size=(200, 128)).astype(np.float32)
    cost = uotsel.cosine_cost(source, target)
    settings = unbalanced.prepare((), *cost.shape, cost.dtype)
    counts = {}
    for k, unroll in ((1, 1), (8, 1), (8, 2)):
        form = it.Form(k, "reduce", unroll)
        solved, resume, _ = unbalanced.solve_first(cost, settings, form=form)
        counts[k, unroll] = int(solved.output.n_iters), int(resume.last.tests)
    iters = counts[1, 1][0]
    assert counts[8, 1][0] == counts[8, 2][0] == iters > 8
    assert counts[1, 1][1] == iters + 1 + 2  # one pass
    assert counts[8, 1][1] == counts[8, 2][1] == math.ceil(iters / 8) + 1 + 2


@pytest.mark.parametrize("lockstep", [False, True])
def test_the_state_to_resume_from_travels_as_two_arrays(lockstep):
    """The first program returns the state :func:`solve_rest` needs packed: two arrays instead
    of fifteen, unpacked bit for bit (a batch's counters and flags are vectors)."""
    cost = jnp.asarray(np.random.default_rng(0).random((3, 30, 8)) * 5.0, jnp.float32)
    settings = unbalanced.prepare((3,), 30, 8, cost.dtype)
    _, resume, _ = unbalanced.solve_first(cost, settings, lockstep=lockstep)
    packed = unbalanced.pack_resume(resume)
    assert len(packed) == 2 < len(jax.tree.leaves(resume)) == 15
    back = unbalanced.unpack_resume(packed, cost, settings, lockstep=lockstep)
    assert jax.tree.structure(back) == jax.tree.structure(resume)
    for old, new in zip(jax.tree.leaves(resume), jax.tree.leaves(back), strict=True):
        assert new.dtype == old.dtype and np.asarray(new).tobytes() == np.asarray(old).tobytes()


def _lowered(platform):
    cost = jnp.zeros((64, 16), jnp.float32)
    return jax.jit(uotsel.sinkhorn).trace(cost).lower(lowering_platforms=(platform,)).as_text()


def test_no_matrix_product_in_the_program_lowered_for_cuda():
    """Lowered for a GPU (no GPU needed), the solver's products are reductions; for the CPU
    they are dots (so the check can fail)."""
    assert "dot_general" not in _lowered("cuda")
    assert "dot_general" in _lowered("cpu")


def test_the_platform_a_program_is_lowered_for_chooses_its_loop():
    """``form=None`` (the default): lowered for CUDA on this machine the kernel pass has the
    accelerator's loop of K iterations (one more ``while``) and no dot; for the CPU, the CPU's."""
    cpu, cuda = _lowered("cpu"), _lowered("cuda")
    assert cuda.count("stablehlo.while") == cpu.count("stablehlo.while") + 1
    assert it.CPU_FORM == it.Form(1, "dot")
    assert it.ACCELERATOR_FORM == it.Form(8, "reduce", 2)


def test_a_program_exported_for_cpu_and_cuda_holds_both_loops_and_runs_here():
    cost = jnp.asarray(np.random.default_rng(0).random((64, 16)) * 5.0, jnp.float32)
    exported = jax.export.export(jax.jit(uotsel.sinkhorn), platforms=("cpu", "cuda"))(cost)
    # Both kernel passes (the CPU's one loop, the accelerator's two) beside the shared loops.
    assert (
        exported.mlir_module().count("stablehlo.while")
        == _lowered("cpu").count("stablehlo.while") + 2
    )
    here, alone = exported.call(cost), jax.jit(uotsel.sinkhorn)(cost)
    # The CPU's program compiled from either: the same iterates; the scalars of the
    # certificate and the rounding bound are fused differently (last bits).
    assert _equal(here[:5], alone[:5])
    for name in ("error", "rounding"):
        np.testing.assert_allclose(getattr(here, name), getattr(alone, name), rtol=1e-6)


def test_the_default_form_on_cpu_is_the_cpu_form_bit_for_bit():
    for cost, given in _problems()[1:]:
        assert _equal(_solve(cost, given, None), _solve(cost, given, it.CPU_FORM))


@pytest.mark.slow
def test_a_steady_transport_makes_no_implicit_transfer():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(20, 8)).astype(np.float32)
    target = rng.normal(size=(5, 8)).astype(np.float32)
    weights = rng.random(20).astype(np.float32) + 0.5
    first = uotsel.transport(source, target, source_weights=weights)
    cost = np.asarray(uotsel.cosine_cost(source, target))
    uotsel.sinkhorn(cost)
    on_device = jax.device_put([source, target, weights])
    with jax.transfer_guard_host_to_device("disallow"):
        again = uotsel.transport(source, target, source_weights=weights)
        uotsel.sinkhorn(cost)
        # Device features: not even the features are copied, so nothing else is either.
        placed = uotsel.transport(on_device[0], on_device[1], source_weights=on_device[2])
    assert _equal(first, again)
    assert _equal(first, placed)
