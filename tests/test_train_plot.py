"""`uotsel-train plot`: pictures of runs from their metrics."""

import os
import subprocess
import sys

import numpy as np
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


# ---------------------------------------------------------------------------------------------
# what the picture shows, read from the matplotlib Figure

from uotsel_train import plot  # noqa: E402

ARMS = {
    "target-only": ["target_ce"],
    "uot": ["target_ce", "source_ce"],
    "pseudo": ["target_ce", "pseudo_ce"],
}


def _seeded(folder, terms, seed, lr=0.01, evals=5, val=False):
    """A run of 10 epochs of 4 steps with noisy losses and an evaluation every 2 epochs."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    writer = metrics.Writer(str(folder), enabled=True)
    for s in range(1, 41):
        e = s / 4
        lrs = {"lr_backbone": lr * 0.1 ** (e >= 6), "lr_head": 10 * lr * 0.1 ** (e >= 6)}
        losses = {t: 2 * np.exp(-e / 3) + 0.2 * rng.random() for t in terms}
        writer.write("train", s, e, {"loss": sum(losses.values()), **losses, **lrs})
        if s % (40 // evals) == 0:
            scores = {"test_top1": e / 20 + 0.05 * rng.random()}
            writer.write("eval", s, e, {**scores, **({"val_top1": e / 25} if val else {})})
    writer.close()
    return str(folder)


def _seeds(root, n=3, **kwargs):
    """``root/seed<N>/<arm>`` for every arm of ``ARMS`` and ``n`` seeds."""
    return [
        _seeded(root / f"seed{seed}" / arm, terms, seed, **kwargs)
        for seed in range(n)
        for arm, terms in ARMS.items()
    ]


def _axes(fig):
    return {ax.get_title().split(" ")[0]: ax for ax in fig.axes}


def _drawn_labels(fig):
    return {
        line.get_label()
        for ax in fig.axes
        for line in ax.get_lines()
        if not line.get_label().startswith("_")
    }


def test_runs_of_an_arm_are_one_legend_entry_and_the_legend_is_what_is_drawn(tmp_path):
    runs = _seeds(tmp_path, n=4)
    arms = plot.arms_of(runs)
    assert [a.name for a in arms] == list(ARMS) and all(len(a.train) == 4 for a in arms)
    fig = plot.draw(arms)
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == list(ARMS) and set(texts) == _drawn_labels(fig)
    handles = plot.legend_entries(fig)[0]
    assert all(h.axes in fig.axes and h in h.axes.get_lines() for h in handles)
    assert "12 runs in 3 arms, 4 runs each" in fig._suptitle.get_text()


def test_several_evaluations_per_run_are_lines_with_markers_and_a_bold_mean(tmp_path):
    runs = _seeds(tmp_path, n=3)
    fig = plot.draw(plot.arms_of(runs))
    acc = _axes(fig)["test"]
    per_arm = [line for line in acc.get_lines() if line.get_label() == "uot"]
    (mean,) = per_arm
    assert mean.get_marker() == "o" and mean.get_linestyle() == "-" and len(mean.get_xdata()) == 5
    tops = [metrics.read(r, "eval") for r in runs if r.endswith("uot")]
    expected = np.mean([[e["test_top1"] for e in t] for t in tops], axis=0)
    np.testing.assert_allclose(mean.get_ydata(), expected)
    thin = [line for line in acc.get_lines() if line.get_label() == "_run"]
    assert len(thin) == 9 and all(line.get_linewidth() < mean.get_linewidth() for line in thin)
    assert "validation" not in acc.get_title()


def test_losses_are_smoothed_with_the_raw_values_faint_behind(tmp_path):
    runs = _seeds(tmp_path, n=2)
    fig = plot.draw(plot.arms_of(runs))
    ce = _axes(fig)["target"]
    raw = [line for line in ce.get_lines() if line.get_label() == "_raw"]
    smooth = [line for line in ce.get_lines() if not line.get_label().startswith("_")]
    assert len(raw) == len(smooth) == 3
    tau = 10 / plot.SMOOTHING_SHARE
    for r, s in zip(raw, smooth, strict=True):
        assert r.get_alpha() < 0.5 and s.get_alpha() is None
        want = plot.ema(r.get_xdata(), r.get_ydata(), tau)
        np.testing.assert_allclose(s.get_ydata(), want)
    assert "moving average" in fig._suptitle.get_text()
    pre = _axes(fig)["pre-training"]
    assert {line.get_linestyle() for line in pre.get_lines()} == {"-", "--"}
    assert "source_ce (solid)" in pre.get_title() and "pseudo_ce (dashed)" in pre.get_title()


def test_the_moving_average():
    x = np.arange(6.0)
    np.testing.assert_allclose(plot.ema(x, np.full(6, 3.0), 1.0), 3.0)
    step = plot.ema(x, np.r_[0.0, np.ones(5)], 1.0)
    np.testing.assert_allclose(step, 1 - np.exp(-x))


def test_the_learning_rate_panel_only_where_the_schedules_differ(tmp_path):
    same = plot.draw(plot.arms_of(_seeds(tmp_path / "same", n=2)))
    assert len(same.axes) == 3 and not any("learning" in ax.get_title() for ax in same.axes)
    note = "learning rate, the same in every run: backbone 0.01, heads 0.1, \u00d70.1 after epoch 6"
    assert note in same._suptitle.get_text()
    a = _seeded(tmp_path / "lr" / "a", ["target_ce"], 0, lr=0.01)
    b = _seeded(tmp_path / "lr" / "b", ["target_ce"], 0, lr=0.03)
    differ = plot.draw(plot.arms_of([a, b]))
    lr = _axes(differ)["learning"]
    assert lr.get_yscale() == "log" and len(lr.get_lines()) == 4
    assert "learning rate, the same" not in differ._suptitle.get_text()
    assert [t.get_text() for t in differ.legends[0].get_texts()] == ["a", "b"]


def test_validation_is_drawn_and_named_only_when_recorded(tmp_path):
    run = _seeded(tmp_path / "run", ["target_ce"], 0, val=True)
    fig = plot.draw(plot.arms_of([run]))
    acc = _axes(fig)["test"]
    assert {line.get_marker() for line in acc.get_lines()} == {"o", "s"}
    assert "validation" in acc.get_title()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["run"]


def test_names_group_runs_and_a_resumed_run_is_drawn_once(tmp_path):
    a = _seeded(tmp_path / "a", ["target_ce"], 0)
    b = _seeded(tmp_path / "b", ["target_ce"], 1)
    c = _seeded(tmp_path / "c", ["target_ce"], 2, evals=2)
    with open(os.path.join(a, "metrics.jsonl")) as fh:
        lines = fh.readlines()
    with open(os.path.join(a, "metrics.jsonl"), "a") as fh:  # resumed at epoch 5
        fh.writelines(lines[len(lines) // 2 :])
    arms = plot.arms_of([a, b, c], names=["x", "x", "y"])
    assert [(arm.name, len(arm.train)) for arm in arms] == [("x", 2), ("y", 1)]
    epochs = [r["epoch"] for r in arms[0].train[0]]
    assert epochs == sorted(set(epochs)) and len(epochs) == 40
    fig = plot.draw(arms)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["x (2 runs)", "y (1 run)"]


def test_arms_are_named_by_the_path_without_its_seed_components(tmp_path):
    grid = [
        str(tmp_path / "grid" / p / f"seed{s}")
        for p in ("lr0.01_lam1", "lr0.1_lam1")
        for s in (0, 1)
    ]
    assert plot._arm_names(grid) == ["lr0.01_lam1"] * 2 + ["lr0.1_lam1"] * 2
    demo = [str(tmp_path / f"seed_{s}" / arm) for s in (0, 1) for arm in ("uot", "random")]
    assert plot._arm_names(demo) == ["uot", "random"] * 2
    assert plot._arm_names([str(tmp_path / "runs" / "cub-uot")]) == ["cub-uot"]
    assert (
        plot._arm_names([str(tmp_path / "seed0"), str(tmp_path / "seed1")]) == [tmp_path.name] * 2
    )
