"""``uotsel plot``, the target mass of a ``uot`` selection, ImageNet wnids and ``uotsel
embedded``."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from reference import pot_marginals, pot_plan

import uotsel
from uotsel import embedded
from uotsel.cli import main
from uotsel.plan import column_mass, target_mass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CUB = [
    "select",
    "--source",
    "embedded:resnet18_supervised/imagenet",
    "--target",
    "embedded:resnet18_supervised/cub",
]


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def cub(tmp_path_factory):
    """The CUB selection of the embedded supervised features, with its names file."""
    folder = tmp_path_factory.mktemp("cub")
    code = main(CUB + ["--out", str(folder / "sel.json"), "--names-out", str(folder / "n.txt")])
    assert code == 0
    return folder, json.loads((folder / "sel.json").read_text())


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


def _no_temporaries(folder):
    return not [n for n in os.listdir(folder) if n.startswith(".uotsel-")]


# ---------------------------------------------------------------------------------------------
# uotsel plot


def test_plot_writes_a_png(cub, capsys):
    folder, _ = cub
    code, out, err = _run(["plot", folder / "sel.json", "--out", folder / "sel.png"], capsys)
    assert code == 0, err
    assert _png_size(folder / "sel.png") == (1400, 1000)
    assert "-> " in out and _no_temporaries(folder)


def test_plot_without_target_mass_or_log_scores(tmp_path, capsys):
    means = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    np.savez(tmp_path / "s.npz", means=means)
    args = ["select", "--source", tmp_path / "s.npz", "--target", tmp_path / "s.npz"]
    code, _, err = _run(
        args + ["--strategy", "nearest", "--top-k", 5, "--out", tmp_path / "n.json"], capsys
    )
    assert code == 0, err
    record = json.loads((tmp_path / "n.json").read_text())
    assert "target_mass" not in record and record["log_scores"] is None
    code, _, err = _run(["plot", tmp_path / "n.json", "--out", tmp_path / "n.png"], capsys)
    assert code == 0, err
    assert _png_size(tmp_path / "n.png") == (1400, 950)


@pytest.mark.parametrize(
    "content, out_name, flag, contains",
    [
        ('{"a": 1}', "p.png", "SELECTION", "is not a uotsel selection file"),
        ("not json", "p.png", "SELECTION", "is not a uotsel selection file (not JSON"),
        (None, "p.jpg", "--out", "must end in .png"),
        (None, "sel.png", "--out", "is the input file of SELECTION"),
        (None, "nope/p.png", "--out", "folder does not exist"),
    ],
)
def test_plot_bad_inputs(cub, tmp_path, capsys, content, out_name, flag, contains):
    src = tmp_path / ("sel.png" if out_name == "sel.png" else "sel.json")
    if content is None:
        src.write_text((cub[0] / "sel.json").read_text())
    else:
        src.write_text(content)
    before = sorted(os.listdir(tmp_path))
    code, _, err = _run(["plot", src, "--out", tmp_path / out_name], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"uotsel plot: error: {flag}: ")
    assert contains in err
    assert sorted(os.listdir(tmp_path)) == before


def test_plot_inconsistent_selection(cub, tmp_path, capsys):
    record = dict(cub[1])
    record["scores"] = record["scores"][:-1]
    record["log_scores"] = None
    (tmp_path / "bad.json").write_text(json.dumps(record))
    code, _, err = _run(["plot", tmp_path / "bad.json", "--out", tmp_path / "p.png"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "SELECTION: " in err and "'scores'" in err
    assert not (tmp_path / "p.png").exists()


@pytest.mark.slow
def test_plot_without_matplotlib(cub, tmp_path):
    script = (
        "import sys; sys.modules['matplotlib'] = None; from uotsel.cli import main; "
        f"sys.exit(main(['plot', {str(cub[0] / 'sel.json')!r}, '--out', "
        f"{str(tmp_path / 'p.png')!r}]))"
    )
    env = dict(os.environ, UOTSEL_CACHE_DIR="")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr == (
        "uotsel plot: error: --out: drawing needs matplotlib: pip install 'uotsel[plot]'\n"
    )
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_matplotlib_is_not_imported_with_uotsel():
    script = (
        "import sys, uotsel, uotsel.cli, uotsel.plot, uotsel.plan; "
        "assert 'matplotlib' not in sys.modules and 'uotsel_train' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def _figure(record, file_name="sel.json"):
    pytest.importorskip("matplotlib")
    from uotsel import plot

    return plot.figure(plot.check_record(record, file_name, "SELECTION"), file_name)


def _panels(fig):
    """The scores, best-units and (when drawn) target-mass axes of a selection figure."""
    return {ax.get_title().split(" ")[0]: ax for ax in fig.axes}


def test_scale_rule():
    from uotsel.plot import scale_rule

    assert scale_rule(np.array([1.0, 100.0]))[0] is False
    assert scale_rule(np.array([1.0, 100.5, np.nan]))[0] is True
    assert scale_rule(np.array([0.0, 1e-9, 1.0])) == (
        False,
        "linear scale: not all values are positive",
    )
    assert "more than 2 decades" in scale_rule(np.array([1e-3, 1.0]))[1]
    assert "at most 2 decades" in scale_rule(np.array([0.5, 1.0]))[1]


def test_plot_title_names_target_strategy_and_settings_not_the_file(cub):
    title = _figure(cub[1])._suptitle.get_text()
    assert title.startswith("UOT selection for target cub (200 units) from imagenet (1000 units)")
    assert "resnet18_supervised features" in title and "top 100 units" in title
    for setting in ("cost cosine", "eps_c 0.01", "eps 1", "tau_source 1", "tau_target 100"):
        assert setting in title
    assert "converged in" in title and "sel.json" not in title and "max_iter" not in title


def _shown(panels):
    """The values each panel draws, with the axis they are drawn on."""
    scores = next(line for line in panels["Scores"].get_lines() if line.get_label() == "all units")
    heights = [p.get_height() for bars in panels["Mass"].containers for p in bars]
    return [
        (panels["Scores"], "y", scores.get_ydata()),
        (panels["The"], "x", panels["The"].collections[0].get_offsets()[:, 0]),
        (panels["Mass"], "y", np.asarray(heights)),
    ]


def test_every_axis_follows_the_scale_rule_and_says_so(cub):
    from uotsel.plot import scale_rule

    record = cub[1]
    low = dict(record, target_mass=[1e-6] + record["target_mass"][1:])
    for rec, mass_log in ((record, False), (low, True)):
        panels = _panels(_figure(rec))
        for ax, axis, values in _shown(panels):
            log, rule = scale_rule(values)
            scale = ax.get_yscale() if axis == "y" else ax.get_xscale()
            label = ax.get_ylabel() if axis == "y" else ax.get_xlabel()
            assert (scale == "log") == log and rule in label, (ax.get_title(), label)
        assert (panels["Mass"].get_yscale() == "log") == mass_log


def test_best_units_are_points_on_the_range_they_span(cub):
    record = cub[1]
    ax = _panels(_figure(record))["The"]
    (points,) = ax.collections
    shown = np.exp(np.asarray(record["log_scores"])[record["selected"][:20]])
    np.testing.assert_allclose(points.get_offsets()[:, 0], shown, rtol=1e-12)
    lo, hi = ax.get_xlim()
    assert 0 < lo < shown.min() and hi > shown.max() and not ax.patches
    assert "the range of the 20 shown, not from 0" in ax.get_xlabel()
    assert [t.get_text() for t in ax.texts][:2] == [f"{v:.3g}" for v in shown[:2]]


def test_plot_legends_are_off_the_data_and_name_what_is_drawn(cub, tmp_path, capsys):
    fig = _figure(cub[1])
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    legends = [ax for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 2
    for ax in legends:
        box, frame = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
        assert box.x0 > frame.x1, ax.get_title()
        drawn = [a.get_label() for a in ax.get_lines() + ax.patches + ax.containers]
        drawn = {label for label in drawn if label and not label.startswith("_")}
        assert {t.get_text() for t in ax.get_legend().get_texts()} == drawn


def test_plot_title_of_a_selection_without_a_target(cub):
    record = dict(cub[1], strategy="random", settings={"seed": 3}, solver=None)
    record["inputs"] = dict(record["inputs"], target=None)
    record["target_mass"] = record["target_mass_total"] = None
    title = _figure(record)._suptitle.get_text()
    assert title.startswith("random selection (no target) from imagenet (1000 units)")
    assert title.endswith("top 100 units; seed 3")
    stopped = dict(cub[1], solver={"n_iters": 1000, "error": 0.0123456, "converged": False})
    assert (
        "; NOT converged after 1000 iterations (error 0.012)"
        in _figure(stopped)._suptitle.get_text()
    )
    bare = {k: v for k, v in record.items() if k != "inputs"}
    assert (
        _figure(bare, "mine.json")
        ._suptitle.get_text()
        .startswith("random selection (no target) in mine.json")
    )


# ---------------------------------------------------------------------------------------------
# target_mass


def _small_problem():
    rng = np.random.default_rng(7)
    source = rng.normal(size=(40, 6)).astype(np.float32)
    target = rng.normal(size=(9, 6)).astype(np.float32)
    return source, target


@pytest.mark.slow
def test_column_mass_matches_pot():
    """Column sums over chosen rows of our plan against POT float64 on the same cost: within
    1e-4 relative (the solver stops at a certified 1e-5 relative error of the marginals)."""
    source, target = _small_problem()
    cost = np.asarray(uotsel.cost_matrix(source, target, eps_c=0.1), np.float64)
    out = uotsel.sinkhorn(cost, eps=1.0, tau_source=1.0, tau_target=100.0, threshold=1e-6)
    rows = np.array([3, 0, 17, 25])
    plan = pot_plan(cost, 1.0, 1.0, 100.0)
    np.testing.assert_allclose(column_mass(cost, out, rows), plan[rows].sum(0), rtol=1e-4)
    np.testing.assert_allclose(
        column_mass(cost, out), pot_marginals(cost, 1.0, 1.0, 100.0)[1], rtol=1e-4
    )


@pytest.mark.slow
def test_select_records_target_mass(tmp_path, capsys):
    """``target_mass`` in the selection file against POT float64 on the same cost, 1e-4
    relative."""
    source, target = _small_problem()
    np.save(tmp_path / "s.npy", source)
    np.save(tmp_path / "t.npy", target)
    args = ["select", "--source", tmp_path / "s.npy", "--target", tmp_path / "t.npy"]
    args += ["--top-k", 6, "--eps-c", 0.1, "--threshold", 1e-6, "--out", tmp_path / "sel.json"]
    code, _, err = _run(args, capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "sel.json").read_text())
    selected = np.asarray(record["selected"])
    cost = np.asarray(uotsel.cost_matrix(source, target, eps_c=0.1), np.float64)
    plan = pot_plan(cost, 1.0, 1.0, 100.0)
    np.testing.assert_allclose(record["target_mass"], plan[selected].sum(0), rtol=1e-4)
    np.testing.assert_allclose(record["target_mass_total"], plan.sum(0), rtol=1e-4)
    # the plan's column sums over all units are the solver's own P^T 1
    mass = target_mass(source, target, selected, eps_c=0.1, threshold=1e-6)
    np.testing.assert_allclose(mass.total, record["target_mass_total"], rtol=1e-6)


@pytest.mark.slow
def test_selection_mass_reuses_the_solve():
    """From the selection's own solver output: the figures of solving again, one solve fewer."""
    import uotsel
    from uotsel.plan import selection_mass

    source, target = _small_problem()
    sel = uotsel.select(source, target, top_k=5, eps_c=0.1, threshold=1e-6)
    reused = selection_mass(sel, source, target)
    again = target_mass(source, target, sel.selected, eps_c=0.1, threshold=1e-6)
    np.testing.assert_allclose(reused.selected, again.selected, rtol=1e-6)
    np.testing.assert_allclose(reused.total, again.total, rtol=1e-6)
    np.testing.assert_allclose(reused.total, np.asarray(sel.solver.col_sums), rtol=1e-4)
    greedy = uotsel.select(source, target, strategy="greedy_ot", top_k=5)
    with pytest.raises(ValueError, match="selection: target mass needs a 'uot' selection"):
        selection_mass(greedy, source, target)


def test_target_mass_only_for_uot(tmp_path, capsys):
    source, target = _small_problem()
    np.save(tmp_path / "s.npy", source)
    np.save(tmp_path / "t.npy", target)
    args = ["select", "--source", tmp_path / "s.npy", "--target", tmp_path / "t.npy"]
    code, _, err = _run(
        args + ["--strategy", "greedy_ot", "--top-k", 5, "--out", tmp_path / "g.json"], capsys
    )
    assert code == 0, err
    assert "target_mass" not in json.loads((tmp_path / "g.json").read_text())


def test_cub_target_mass(cub):
    _, record = cub
    mass, total = np.asarray(record["target_mass"]), np.asarray(record["target_mass_total"])
    assert mass.shape == total.shape == (200,)
    assert np.all(mass > 0) and np.all(mass <= total * (1 + 1e-9))


# ---------------------------------------------------------------------------------------------
# wnids and names


def test_selected_wnids_match_imagenet_classes(cub):
    folder, record = cub
    classes = embedded.imagenet_classes()
    ids = record["selected"]
    assert record["selected_wnids"] == [str(classes["wnid"][i]) for i in ids]
    assert record["selected_names"] == [str(classes["name"][i]) for i in ids]
    lines = (folder / "n.txt").read_text().splitlines()
    assert lines == [f"{classes['wnid'][i]}\t{classes['name'][i]}" for i in ids]


def test_wnids_are_sorted_so_label_ids_are_folder_order():
    """ImageFolder and TFDS imagenet2012 number the classes in sorted wnid order."""
    wnid = embedded.imagenet_classes()["wnid"].astype(str)
    assert wnid.size == 1000 and list(wnid) == sorted(wnid)


@pytest.mark.slow
def test_names_out_keeps_plain_names_for_other_sources(tmp_path, capsys):
    means = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    np.savez(tmp_path / "s.npz", means=means, names=np.array([f"c{i}" for i in range(6)]))
    args = ["select", "--source", tmp_path / "s.npz", "--target", tmp_path / "s.npz"]
    args += ["--top-k", 2, "--out", tmp_path / "o.json", "--names-out", tmp_path / "n.txt"]
    code, _, err = _run(args, capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "o.json").read_text())
    assert "selected_wnids" not in record
    assert (tmp_path / "n.txt").read_text() == "".join(f"c{i}\n" for i in record["selected"])


def test_embedded_lists_every_set(capsys):
    code, out, _ = _run(["embedded"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["backbone", "dataset", "units", "dim"]
    rows = [line.split() for line in lines[1:]]
    assert [f"{r[0]}/{r[1]}" for r in rows] == embedded.available()
    for backbone, dataset, units, dim in rows:
        assert (int(units), int(dim)) == embedded.load(backbone, dataset).means.shape
    assert len({len(line) for line in lines}) == 1


def test_docs_show_the_embedded_table(capsys):
    _, out, _ = _run(["embedded"], capsys)
    docs = open(os.path.join(os.path.dirname(__file__), "..", "docs", "cli.md")).read()
    assert f"```\n{out}```" in docs
