import os
import subprocess
import sys

import jax
import pytest

from uotsel import cache

SCRIPT = """
import sys
import numpy as np
import uotsel
from uotsel import cache
counter = cache.Compilations()
counter.register()
print(uotsel.enable_compilation_cache(sys.argv[1]))
cost = np.arange(12.0, dtype=np.float32).reshape(4, 3)
out = uotsel.sinkhorn(cost)
print(counter.count(), counter.cache_hits, float(out.log_row_sums[0]))
"""


def _run(folder):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder)], capture_output=True, text=True, check=True
    )
    used, counts = done.stdout.splitlines()[-2:]
    compiled, hits, score = counts.split()
    return used, int(compiled), int(hits), score


@pytest.mark.slow
def test_a_second_process_reads_the_programs_back(tmp_path):
    folder = tmp_path / "cache"
    used, compiled, hits, score = _run(folder)
    assert used == str(folder) and compiled > 0 and hits == 0
    assert any(folder.iterdir())
    used, compiled_again, hits, score_again = _run(folder)
    assert compiled_again == 0 and hits > 0
    assert score_again == score


def test_empty_or_unusable_folder_leaves_jax_alone(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    assert cache.enable_compilation_cache("") is None
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cache.enable_compilation_cache(str(blocker / "cache")) is None
    assert jax.config.jax_compilation_cache_dir == before


def test_default_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.default_folder() == os.path.join(str(tmp_path), "uotsel", "jax")
    monkeypatch.setenv(cache.ENV, "")
    assert cache.default_folder() == ""
    monkeypatch.setenv(cache.ENV, str(tmp_path / "x"))
    assert cache.default_folder() == str(tmp_path / "x")
