"""``uotsel plot`` of a selection taken by a budget: where a budget in images cuts the ranking,
and the sample scores of a per-sample selection with its cut (``--scores``, ``--unit-ids``)."""

import json
import os

import numpy as np
import pytest

from uotsel import selection_file
from uotsel.cli import main

pytest.importorskip("matplotlib")

from uotsel import plot


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """12 classes of 30 to 90 samples (6 near the 3 targets), as a features + labels file; a
    budget selection of 400 images and a per-sample selection of 150 samples with its scores."""
    tmp = tmp_path_factory.mktemp("budget_plot")
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(12, 8))
    sizes = rng.integers(30, 90, size=12)
    labels = np.concatenate([np.full(s, k) for k, s in enumerate(sizes)])
    features = centres[labels] + 0.9 * rng.normal(size=(labels.size, 8))
    np.savez(tmp / "src.npz", features=features.astype(np.float32), labels=labels)
    np.savez(tmp / "tgt.npz", means=(centres[:3] + 0.2).astype(np.float32))
    base = ["select", "--source", tmp / "src.npz", "--target", tmp / "tgt.npz"]
    assert main([str(a) for a in base + ["--budget-images", 400, "--out", tmp / "b.json"]]) == 0
    per = ["--per-sample", "--budget-images", 150, "--quiet", "--scores-out", tmp / "s.npy"]
    assert main([str(a) for a in base + per + ["--out", tmp / "p.json"]]) == 0
    return tmp, sizes, labels


def _record(tmp, name):
    return selection_file.read_selection(str(tmp / name))


def _figure(record, scores=None, unit_ids=None, selection="p.json"):
    data = plot.check_record(record, "sel.json", "SELECTION")
    if scores is not None:
        from uotsel import plot_budget

        data["sample_scores"] = plot_budget.read_sample_scores(
            record, data, str(scores), unit_ids, str(selection)
        )
    return plot.figure(data, "sel.json")


def _axis(fig, title_start):
    return next(ax for ax in fig.axes if ax.get_title().startswith(title_start))


# ---------------------------------------------------------------------------------------------
# The record


def test_a_budget_record_holds_the_images_of_every_unit(files):
    tmp, sizes, _ = files
    record = _record(tmp, "b.json")
    assert record["unit_images"] == sizes.tolist()
    assert sum(sizes[u] for u in record["selected"]) == record["images_used"]
    top = json.loads((tmp / "p.json").read_text())
    assert "unit_images" not in top


def test_per_sample_records_are_drawn_when_selected_is_not_a_prefix(files):
    tmp, _, _ = files
    record = _record(tmp, "p.json")
    ranking = record["ranking"]
    skipping = dict(record, selected=[ranking[0], ranking[2]])
    skipping["per_sample"] = dict(record["per_sample"], samples_per_unit=[100, 50])
    skipping.pop("selected_names", None)
    data = plot.check_record(skipping, "p.json", "SELECTION")
    assert data["selected"].tolist() == [ranking[0], ranking[2]]
    with pytest.raises(
        ValueError, match=r"^SELECTION: p.json has a 'selected' list that is not in"
    ):
        plot.check_record(dict(skipping, selected=[ranking[2], ranking[0]]), "p.json", "SELECTION")
    whole = dict(skipping, format="uotsel.selection/1", mode=None)
    with pytest.raises(ValueError, match=r"^SELECTION: p.json has a 'selected' list that does not"):
        plot.check_record(whole, "p.json", "SELECTION")


def test_a_per_sample_record_with_bad_counts_or_cut_is_refused(files):
    tmp, _, _ = files
    record = _record(tmp, "p.json")
    block = record["per_sample"]
    counts = [*block["samples_per_unit"][:-1], block["samples_per_unit"][-1] + 1]
    for change, field in (
        ({"samples_per_unit": counts}, "'samples_per_unit'"),
        ({"selected_score_range": [None, 1.0]}, "'selected_score_range'"),
    ):
        bad = dict(record, per_sample={**block, **change})
        with pytest.raises(ValueError, match=f"^SELECTION: p.json has .*{field}"):
            plot.check_record(bad, "p.json", "SELECTION")


# ---------------------------------------------------------------------------------------------
# The budget panel


def test_the_budget_panel_cuts_at_the_first_unit_that_did_not_fit(files):
    tmp, sizes, _ = files
    record = _record(tmp, "b.json")
    taken, ranking = len(record["selected"]), np.asarray(record["ranking"])
    total = np.cumsum(sizes[ranking])
    assert total[taken - 1] <= 400 < total[taken]  # the budget's own rule
    ax = _axis(_figure(record), "Where the budget of 400 images cuts the ranking")
    lines = {line.get_label(): line for line in ax.get_lines()}
    cut_label = (
        f"first unit that did not fit:\nunit {ranking[taken]}, {sizes[ranking[taken]]} images"
    )
    cut = lines[cut_label]
    assert cut.get_xdata().tolist() == [taken + 1] and cut.get_ydata().tolist() == [total[taken]]
    assert lines["the cut"].get_xdata()[0] == taken + 0.5
    assert lines["budget: 400 images"].get_ydata()[0] == 400
    kept = lines[f"taken: {taken} units, {record['images_used']} images"]
    assert kept.get_ydata().tolist() == total[:taken].tolist()
    assert f"the unit at rank {taken + 1} ({sizes[ranking[taken]]} images)" in ax.get_title()
    assert ax.get_xlim() == (0.5, min(12, max(2 * taken + 1, 20)) + 0.5)
    assert _figure(record).get_size_inches().tolist() == [14, 14.5]


def test_a_budget_record_without_unit_images_draws_the_usual_panels(files):
    tmp, _, _ = files
    record = {k: v for k, v in _record(tmp, "b.json").items() if k != "unit_images"}
    fig = _figure(record)
    assert not [ax for ax in fig.axes if ax.get_title().startswith("Where the budget")]
    assert fig.get_size_inches().tolist() == [14, 10]


# ---------------------------------------------------------------------------------------------
# The per-sample panel


def test_the_sample_panel_draws_the_cut_at_the_lowest_chosen_score(files):
    tmp, _, labels = files
    record = _record(tmp, "p.json")
    scores = np.load(tmp / "s.npy")
    fig = _figure(record, tmp / "s.npy", None, tmp / "p.json")
    assert fig.get_size_inches().tolist() == [14, 11]
    ax = _axis(fig, "Scores of the samples of the")
    cut = record["per_sample"]["selected_score_range"][0]
    [line] = [ln for ln in ax.get_lines() if ln.get_label().startswith("the cut: lowest chosen")]
    assert line.get_xdata()[0] == cut == float(np.sort(scores)[-150])
    chosen = next(c for c in ax.collections if c.get_label() == "chosen samples")
    others = next(c for c in ax.collections if c.get_label() == "samples not chosen")
    assert chosen.get_offsets()[:, 0].min() == cut and others.get_offsets()[:, 0].max() <= cut
    shown = record["selected"][:20]
    assert chosen.get_offsets().shape[0] == sum(record["per_sample"]["samples_per_unit"][:20])
    assert others.get_offsets().shape[0] + chosen.get_offsets().shape[0] == int(
        np.isin(labels, shown).sum()
    )
    first = f"{record['selected'][0]} ({record['per_sample']['samples_per_unit'][0]} of "
    assert ax.get_yticklabels()[0].get_text().startswith(first)


def test_the_sample_panel_without_scores_says_what_scores_would_add(files):
    tmp, _, _ = files
    record = _record(tmp, "p.json")
    ax = _axis(_figure(record), "Chosen samples of the")
    assert "--scores" in ax.get_title() and "score distribution and the cut" in ax.get_title()
    heights = [p.get_width() for p in ax.patches]
    assert heights == record["per_sample"]["samples_per_unit"][:20]
    scores_ax = _axis(_figure(record), "Scores of all")
    labels = [ln.get_label() for ln in scores_ax.get_lines()]
    assert not any("cut-off" in label for label in labels)
    assert f"the {len(record['selected'])} units holding\nchosen samples" in labels


def test_the_cli_draws_a_per_sample_selection_with_and_without_scores(files, capsys):
    tmp, _, labels = files
    for extra in ([], ["--scores", tmp / "s.npy"]):
        code, out, err = _run(["plot", tmp / "p.json", "--out", tmp / "p.png", *extra], capsys)
        assert code == 0 and err == "" and out.startswith("drew ")
        assert (tmp / "p.png").read_bytes()[:4] == b"\x89PNG"
    np.save(tmp / "ids.npy", labels)
    moved = dict(_record(tmp, "p.json"))
    moved["inputs"] = dict(moved["inputs"], source=dict(moved["inputs"]["source"], path="gone.npz"))
    (tmp / "moved.json").write_text(json.dumps(moved))
    argv = ["plot", tmp / "moved.json", "--out", tmp / "m.png", "--scores", tmp / "s.npy"]
    code, _, err = _run(argv, capsys)
    assert code == 2 and err.startswith(
        "uotsel plot: error: --unit-ids: required: the selection's source file gone.npz is not "
    )
    assert _run([*argv, "--unit-ids", tmp / "ids.npy"], capsys)[0] == 0
    beside = dict(moved)
    beside["inputs"] = dict(moved["inputs"], source=dict(moved["inputs"]["source"], path="src.npz"))
    (tmp / "beside.json").write_text(json.dumps(beside))
    assert not os.path.exists("src.npz")
    argv_beside = ["plot", tmp / "beside.json", "--out", tmp / "m.png", "--scores", tmp / "s.npy"]
    assert _run(argv_beside, capsys)[0] == 0
    assert _run([*argv, "--unit-ids", tmp / "src.npz"], capsys)[0] == 0


def _bad_scores(tmp, labels):
    scores = np.load(tmp / "s.npy")
    np.save(tmp / "short.npy", scores[:-1])
    np.save(tmp / "ints.npy", np.arange(scores.size))
    nan = scores.copy()
    nan[7] = np.nan
    np.save(tmp / "nan.npy", nan)
    np.save(tmp / "other.npy", scores + 1.0)
    np.save(tmp / "shuffled.npy", scores[::-1].copy())
    (tmp / "text.npy").write_text("0.5\n")
    wrong = labels.copy()
    wrong[np.argmax(scores)] = (wrong[np.argmax(scores)] + 1) % 12
    np.save(tmp / "wrong_ids.npy", wrong)
    np.save(tmp / "short_ids.npy", labels[:-1])
    n = scores.size
    s = ["--scores", tmp / "s.npy"]
    sc, ids = "--scores", "--unit-ids"
    return [
        ("p.json", [sc, tmp / "short.npy"], sc, f"{tmp / 'short.npy'} holds {n - 1} values"),
        ("p.json", [sc, tmp / "ints.npy"], sc, "holds int64, expected float scores"),
        ("p.json", [sc, tmp / "nan.npy"], sc, "has NaN or inf (first at sample 7)"),
        ("p.json", [sc, tmp / "text.npy"], sc, "is not a numpy file"),
        ("p.json", [sc, tmp / "none.npy"], sc, "none.npy"),
        ("p.json", [sc, tmp / "other.npy"], sc, "is not the scores of this selection"),
        ("p.json", [sc, tmp / "shuffled.npy"], sc, "and the unit ids of "),
        ("b.json", s, sc, "selects whole units"),
        ("p.json", [ids, tmp / "ids.npy"], ids, "read only with --scores"),
        ("p.json", [*s, ids, tmp / "short_ids.npy"], ids, f"holds {n - 1} unit ids"),
        ("p.json", [*s, ids, tmp / "wrong_ids.npy"], ids, "do not fit the selection"),
        ("p.json", [*s, ids, tmp / "tgt.npz"], ids, "has no per-sample unit ids"),
    ]


def test_bad_scores_are_one_line_naming_the_flag_and_write_nothing(files, capsys):
    tmp, _, labels = files
    np.save(tmp / "ids.npy", labels)
    (tmp / "old.png").write_bytes(b"old")
    for selection, extra, flag, message in _bad_scores(tmp, labels):
        argv = ["plot", tmp / selection, "--out", tmp / "old.png", *extra]
        code, out, err = _run(argv, capsys)
        assert code == 2 and out == "" and len(err.splitlines()) == 1, (message, err)
        assert err.startswith(f"uotsel plot: error: {flag}: ") and message in err, (message, err)
        assert (tmp / "old.png").read_bytes() == b"old"
    assert not [n for n in os.listdir(tmp) if n.startswith(".uotsel-")]
