"""`uotsel-train plot`: pictures of runs from their metrics."""

import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")

from uotsel_train import metrics
from uotsel_train.cli import main


def _run(folder, objective_terms, epochs=4, steps=2):
    folder.mkdir()
    writer = metrics.Writer(str(folder), enabled=True)
    for s in range(1, epochs * steps + 1):
        terms = {t: 1.0 / s for t in objective_terms}
        lr = 0.01 * (0.1 if s > steps * 2 else 1.0)
        writer.write(
            "train", s, s / steps, {"loss": 2.0 / s, **terms, "lr_backbone": lr, "lr_head": 10 * lr}
        )
        if s % steps == 0:
            writer.write("eval", s, s // steps, {"test_top1": 0.5 + 0.1 * s / steps})
    writer.close()
    return str(folder)


def test_plot_draws_several_runs_into_a_png(tmp_path, capsys):
    a = _run(tmp_path / "target-only", ["target_ce"])
    b = _run(tmp_path / "uot", ["target_ce", "source_ce"])
    out = tmp_path / "curves.png"
    assert main(["plot", a, b, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert "2 run(s) -> " in capsys.readouterr().out


def test_plot_refuses_bad_input_in_one_line(tmp_path, capsys):
    run = _run(tmp_path / "run", ["target_ce"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "keep.png").write_bytes(b"old")
    cases = [
        ([run, "--out", str(tmp_path / "x.pdf")], "out: the picture is a PNG"),
        ([str(tmp_path / "none"), "--out", str(tmp_path / "x.png")], "RUN_DIR: not a folder"),
        ([str(tmp_path / "empty"), "--out", str(tmp_path / "keep.png")], "run: cannot read"),
        ([run, "--out", str(tmp_path / "run" / "metrics.jsonl")], "--out: would overwrite"),
        ([run, "--out", str(tmp_path / "run" / "metrics.jsonl" / "x.png")], "out: cannot write"),
    ]
    for args, message in cases:
        assert main(["plot", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"uotsel-train plot: error: {message}"), err
    assert (tmp_path / "keep.png").read_bytes() == b"old"
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib_the_command_says_what_to_install(tmp_path):
    run = _run(tmp_path / "run", ["target_ce"])
    code = (
        "import sys\nsys.modules['matplotlib'] = None\n"
        "from uotsel_train.cli import main\n"
        f"sys.exit(main(['plot', {run!r}, '--out', {str(tmp_path / 'c.png')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "uotsel-train plot: error: out: drawing needs matplotlib: pip install 'uotsel[plot]'"
    )
