"""uotsel_train.demo_runs without training (the demo's runs train in tests/test_train_demo.py)."""

import os

import pytest

pytest.importorskip("orbax.checkpoint")

import jax

from uotsel_train import demo_runs


def test_evaluations_are_spread_over_the_epochs():
    def every(epochs, evaluations):
        return demo_runs.Schedule(epochs, evaluations, 0.1, 1.0, 32).eval_every()

    cases = [(30, 10), (30, 1), (30, 0), (5, 10), (7, 2)]
    assert [every(*case) for case in cases] == [3, 30, 30, 1, 3]


def test_the_compilation_cache_lives_in_a_temporary_folder_for_the_run_only():
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    before = {name: getattr(jax.config, name) for name in names}
    if before["jax_compilation_cache_dir"]:
        pytest.skip("a compilation cache of the caller's is kept as it is")
    with demo_runs.compilation_cache():
        folder = jax.config.jax_compilation_cache_dir
        assert folder and os.path.isdir(folder)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        assert jax.config.jax_persistent_cache_min_entry_size_bytes == 0
    assert {name: getattr(jax.config, name) for name in names} == before
    assert not os.path.exists(folder)
