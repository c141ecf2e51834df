import io
import itertools
import time

import numpy as np
import pytest

from uotsel import clustering
from uotsel.progress import Progress, format_seconds


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 12.4, 185, 3720, -3)] == [
        "0s",
        "12s",
        "3m05s",
        "1h02m",
        "0s",
    ]


def test_log_lines_first_every_interval_at_the_end_and_on_close():
    out = io.StringIO()
    bar = Progress(10, "work", unit="rows", stream=out, every_s=3600)
    bar.update(2, loss="0.5")
    bar.update(3)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("work 2/10 (20%) loss 0.5 ")
    bar.close()  # the last state was not written yet
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("work 5/10 (50%) loss 0.5 ")
    bar = Progress(4, "again", stream=out, every_s=3600)
    bar.update(1)
    bar.update(3)  # reaching the total writes
    bar.close()  # nothing new to write
    assert [line.split()[1] for line in out.getvalue().splitlines()[2:]] == ["1/4", "4/4"]


def test_disabled_writes_nothing():
    out = io.StringIO()
    with Progress(3, "quiet", stream=out, enabled=False) as bar:
        bar.update(3)
    assert out.getvalue() == ""


def test_rate_and_eta_count_from_when_the_work_began():
    bar = Progress(10, "x", stream=io.StringIO(), started=time.perf_counter() - 10.0)
    bar.update(5)
    assert abs(bar.rate() - 0.5) < 0.01
    assert abs(bar.eta() - 10.0) < 0.3
    assert Progress(None, "y", stream=io.StringIO()).eta() is None


@pytest.mark.slow
def test_kmeans_reports_every_seeding_and_lloyd_step():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 5
    x = (centres[rng.integers(0, 4, 600)] + rng.normal(size=(600, 8))).astype(np.float32)
    seen = []
    result = clustering.kmeans(x, 4, n_init=2, init_restarts=3, tol=0.0, progress=seen.append)
    for restart in (1, 2):
        mine = [s for s in seen if s.restart == restart]
        seeding = [s.step for s in mine if s.stage == "seeding"]
        lloyd = [s for s in mine if s.stage == "lloyd"]
        assert seeding == [1, 2, 3] and all(s.restarts == 2 for s in mine)
        assert [s.step for s in lloyd] == list(range(1, len(lloyd) + 1))
        assert lloyd[0].moved is None and all(0.0 <= s.moved <= 1.0 for s in lloyd[1:])
        # With tol = 0 a restart stops when the objective no longer falls: nothing moved.
        assert lloyd[-1].moved == 0.0
        objectives = [s.objective for s in lloyd]
        assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(objectives))
    assert result.n_iters in [
        len([s for s in seen if s.restart == r and s.stage == "lloyd"]) for r in (1, 2)
    ]
    line = clustering.status_line(seen[-1])
    assert line.startswith("restart 2/2: iteration ") and "0.00% of samples moved" in line


def test_without_log_start_a_short_job_writes_nothing():
    out = io.StringIO()
    with Progress(4, "short", stream=out, every_s=3600, log_start=False) as bar:
        bar.update(4)
    assert out.getvalue() == ""
    with Progress(4, "long", stream=out, every_s=0.0, log_start=False) as bar:
        bar.update(1)
        bar.update(3)
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["1/4", "4/4"]


@pytest.mark.slow
def test_kmeans_progress_bars_in_a_log():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    out = io.StringIO()
    with clustering.ProgressBars(stream=out, every_s=0.0) as bars:
        result = clustering.kmeans(x, 3, init_restarts=2, progress=bars)
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines[:2]] == [
        "k-means seeding 1/2",
        "k-means seeding 2/2",
    ]
    assert len(lines) == 2 + result.n_iters
    assert lines[-1].startswith(f"k-means Lloyd {result.n_iters}/50 ")
