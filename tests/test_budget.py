"""A budget in images (uotsel.budget, select(budget_images=...), uotsel select --budget-images):
whole units best first, the first unit that does not fit ends the selection."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import uotsel
from uotsel import budget, embedded, selection
from uotsel.cli import main
from uotsel.strategies import STRATEGIES


def _angles(degrees):
    """Unit vectors in the plane at these angles from the target [1, 0]."""
    radians = np.deg2rad(np.asarray(degrees, np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


# By hand: nearest (cosine) ranks the units at 10, 30, 50, 70 degrees from the target, i.e.
# units 0, 2, 1, 3; their sizes are 5, 2, 4, 1 (by rank: 5, 4, 2, 1).
HAND_SOURCE = _angles([10, 50, 30, 70])
HAND_TARGET = _angles([0])
HAND_SIZES = [5, 2, 4, 1]
HAND_CASES = [
    (5, [0], 5),  # 5 fits; 5 + 4 = 9 > 5
    (8, [0], 5),  # 9 > 8: the first that does not fit ends it, unit 1 (size 2) would fit
    (9, [0, 2], 9),
    (10, [0, 2], 9),  # 9 + 2 = 11 > 10; unit 3 (size 1) would fit but is not taken
    (11, [0, 2, 1], 11),
    (12, [0, 2, 1, 3], 12),  # every image
]


@pytest.mark.parametrize("budget_images, selected, used", HAND_CASES)
def test_a_hand_computation(budget_images, selected, used):
    sel = uotsel.select(
        HAND_SOURCE,
        HAND_TARGET,
        strategy="nearest",
        budget_images=budget_images,
        unit_sizes=HAND_SIZES,
        n_groups=2,
    )
    assert sel.ranking.tolist() == [0, 2, 1, 3]
    assert sel.selected.tolist() == selected
    assert (sel.budget_images, sel.images_used) == (budget_images, used)
    assert budget.fit_budget([0, 2, 1, 3], HAND_SIZES, budget_images) == len(selected)


def test_the_best_unit_larger_than_the_budget_is_refused_with_its_size():
    with pytest.raises(ValueError, match=r"^budget_images: the best unit \(0\) alone holds 5 "):
        uotsel.select(
            HAND_SOURCE, HAND_TARGET, strategy="nearest", budget_images=4, unit_sizes=HAND_SIZES
        )


def _check_cut(ranking, sizes, budget_images, n):
    """The promise of fit_budget: a prefix within the budget whose next unit would not fit."""
    ranking, sizes = np.asarray(ranking), np.asarray(sizes)
    used = int(sizes[ranking[:n]].sum())
    assert 1 <= n <= ranking.size
    assert used <= budget_images
    if n < ranking.size:
        assert used + sizes[ranking[n]] > budget_images


@st.composite
def _budget_problems(draw):
    sizes = draw(st.lists(st.integers(0, 60), min_size=1, max_size=40))
    ranking = draw(st.permutations(range(len(sizes))))
    low, total = max(1, sizes[ranking[0]]), sum(sizes)
    budget_images = draw(st.integers(low, max(low, total)))
    return ranking, sizes, budget_images


@settings(max_examples=300, deadline=None)
@given(_budget_problems())
def test_fit_budget_takes_a_prefix_within_the_budget(problem):
    ranking, sizes, budget_images = problem
    if budget_images > sum(sizes):
        with pytest.raises(ValueError, match=r"^budget_images: .* is more than the"):
            budget.fit_budget(ranking, sizes, budget_images)
        return
    _check_cut(ranking, sizes, budget_images, budget.fit_budget(ranking, sizes, budget_images))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 50), min_size=2, max_size=30),
    seed=st.integers(0, 2**32 - 1),
    share=st.floats(0.0, 1.0),
)
def test_select_with_a_budget_never_exceeds_it_and_keeps_the_ranking_order(sizes, seed, share):
    source = np.ones((len(sizes), 3))
    ranking = uotsel.select(source, strategy="random", top_k=None, seed=seed).ranking
    low, total = max(1, sizes[ranking[0]]), sum(sizes)
    if total < low:
        return
    budget_images = low + int(share * (total - low))
    sel = uotsel.select(
        source, strategy="random", seed=seed, budget_images=budget_images, unit_sizes=sizes
    )
    assert sel.selected.tolist() == ranking[: sel.selected.size].tolist()
    assert sel.images_used == int(np.asarray(sizes)[sel.selected].sum()) <= budget_images
    _check_cut(ranking, sizes, budget_images, sel.selected.size)


def test_unit_sizes_from_counts_and_from_unit_ids_agree(rng):
    ids = rng.integers(0, 7, size=200)
    counts = np.bincount(ids, minlength=9)  # units 7 and 8 without samples
    from_ids = budget.unit_sizes(9, unit_ids=ids)
    np.testing.assert_array_equal(from_ids, counts)
    np.testing.assert_array_equal(budget.unit_sizes(9, counts=counts), counts)
    np.testing.assert_array_equal(budget.unit_sizes(9, counts=counts, unit_ids=ids), counts)
    source = rng.normal(size=(9, 4))
    by_counts = uotsel.select(source, strategy="random", budget_images=60, unit_sizes=counts)
    by_ids = uotsel.select(source, strategy="random", budget_images=60, unit_ids=ids)
    assert by_counts.selected.tolist() == by_ids.selected.tolist()
    assert by_counts.images_used == by_ids.images_used == by_ids.sample_indices.size


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"top_k": 3}, ValueError, "^top_k: cannot be combined with budget_images"),
        ({"top_k": 100}, ValueError, "^top_k: cannot be combined with budget_images"),
        ({"budget_images": 0}, ValueError, "^budget_images: must be >= 1, got 0"),
        ({"budget_images": -5}, ValueError, "^budget_images: must be >= 1"),
        ({"budget_images": 2.0}, TypeError, "^budget_images: expected an integer, got float"),
        ({"budget_images": True}, TypeError, "^budget_images: expected an integer"),
        ({"budget_images": 13}, ValueError, "^budget_images: 13 is more than the 12 images of"),
        ({"budget_images": 10**40}, ValueError, "^budget_images: 1000000000000000000000000000000"),
        ({"unit_sizes": None}, ValueError, "^budget_images: needs unit_sizes or unit_ids"),
        ({"unit_sizes": [5, 2, 4]}, ValueError, r"^unit_sizes: expected 4 counts, got shape"),
        ({"unit_sizes": [5, 2, -4, 9]}, ValueError, "^unit_sizes: counts must be >= 0"),
        ({"unit_sizes": [5, 2, 4.5, 1]}, ValueError, "^unit_sizes: 4.5 is not a whole number"),
        ({"unit_sizes": [2**62] * 4}, ValueError, r"^unit_sizes: more than 2\*\*62 images"),
        (
            {"unit_ids": [0, 0, 1, 2, 3]},
            ValueError,
            "^unit_sizes: unit 0 has 5 images by its count",
        ),
        (
            {"unit_sizes": None, "unit_ids": [0, 4]},
            ValueError,
            r"^unit_ids: ids must be in \[0, 4\)",
        ),
    ],
)
def test_bad_budgets_are_refused_before_any_computation(monkeypatch, kwargs, error, pattern):
    def untouched(*args, **kwargs):
        raise AssertionError("scored before the budget was checked")

    monkeypatch.setitem(STRATEGIES, "nearest", STRATEGIES["nearest"]._replace(fn=untouched))
    call = {"strategy": "nearest", "budget_images": 6, "unit_sizes": HAND_SIZES, **kwargs}
    with pytest.raises(error, match=pattern):
        uotsel.select(HAND_SOURCE, HAND_TARGET, **call)


@pytest.mark.parametrize(
    "ranking, sizes, pattern",
    [
        ([], [1, 2], r"^ranking: expected a non-empty 1-d array"),
        ([0, 2], [1, 2], r"^ranking: unit ids must be in \[0, 2\)"),
        ([0, -1], [1, 2], r"^ranking: unit ids must be in \[0, 2\)"),
        ([0, 1], [1, -2], r"^sizes: counts must be >= 0, got -2"),
        ([0, 1], [1.0, 2.0], r"^sizes: expected a 1-d array of integer image counts"),
        ([0, 1], [2**62, 2**62], r"^sizes: more than 2\*\*62 images in all"),
    ],
)
def test_fit_budget_refuses_bad_rankings_and_sizes(ranking, sizes, pattern):
    with pytest.raises(ValueError, match=pattern):
        budget.fit_budget(ranking, sizes, 1)


def test_top_k_none_with_a_budget_and_unit_sizes_without_one():
    sel = uotsel.select(
        HAND_SOURCE,
        HAND_TARGET,
        strategy="nearest",
        top_k=None,
        budget_images=9,
        unit_sizes=HAND_SIZES,
    )
    assert sel.selected.tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"^unit_sizes: only read with budget_images"):
        uotsel.select(HAND_SOURCE, HAND_TARGET, strategy="nearest", unit_sizes=HAND_SIZES)
    plain = uotsel.select(HAND_SOURCE, HAND_TARGET, strategy="nearest", top_k=2)
    assert plain.budget_images is None and plain.images_used is None


def test_the_label_strategy_spends_the_budget_on_the_matching_units():
    source = np.ones((6, 2))
    sizes = [4, 9, 3, 5, 1, 2]
    sel = uotsel.select(
        source, strategy="label", matching=[3, 0, 5], budget_images=10, unit_sizes=sizes
    )
    assert sel.selected.tolist() == [0, 3]  # matching units by id (equal scores): 4 + 5
    every = uotsel.select(
        source, strategy="label", matching=[3, 0, 5], budget_images=11, unit_sizes=sizes
    )
    assert every.selected.tolist() == [0, 3, 5]
    listed = "^budget_images: 12 is more than the 11 images of the 3 units listed in matching"
    with pytest.raises(ValueError, match=listed):
        uotsel.select(
            source, strategy="label", matching=[3, 0, 5], budget_images=12, unit_sizes=sizes
        )


def test_exported_lazily_from_the_package():
    assert uotsel.fit_budget is budget.fit_budget and uotsel.unit_sizes is budget.unit_sizes
    assert {"fit_budget", "unit_sizes"} <= set(uotsel.__all__)
    assert repr(selection._DEFAULT_TOP_K) == "100"


# ---------------------------------------------------------------------------------------------
# The command line


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def unit_files(tmp_path, rng):
    """The same 40 classes of 600 samples as a features + labels file, as means + counts, as
    means + assignment, and as means alone."""
    features = rng.normal(size=(600, 6)).astype(np.float32)
    labels = rng.integers(0, 40, size=600)
    labels[:40] = np.arange(40)
    np.savez(tmp_path / "labels.npz", features=features, labels=labels)
    means = uotsel.io.read_units(str(tmp_path / "labels.npz")).means
    counts = np.bincount(labels)
    np.savez(tmp_path / "counts.npz", means=means, counts=counts)
    np.savez(tmp_path / "assignment.npz", means=means, assignment=labels)
    np.save(tmp_path / "means.npy", means)
    np.savez(tmp_path / "target.npz", means=rng.normal(size=(4, 6)).astype(np.float32))
    return tmp_path, counts


def _select(tmp, source, out, *extra):
    return [
        "select",
        "--source",
        tmp / source,
        "--target",
        tmp / "target.npz",
        "--out",
        tmp / out,
        *extra,
    ]


@pytest.mark.slow
def test_the_cli_budget_is_a_recorded_prefix_within_the_budget(unit_files, capsys):
    tmp, counts = unit_files
    records = {}
    for source in ("labels.npz", "counts.npz", "assignment.npz"):
        code, stdout, err = _run(
            _select(tmp, source, f"{source}.json", "--budget-images", 200), capsys
        )
        assert code == 0, err
        record = json.loads((tmp / f"{source}.json").read_text())
        records[source] = record
        selected, ranking = record["selected"], record["ranking"]
        assert selected == ranking[: len(selected)] and record["top_k"] == len(selected)
        assert record["budget_images"] == 200
        assert record["images_used"] == int(counts[selected].sum()) <= 200
        assert record["images_used"] + counts[ranking[len(selected)]] > 200
        assert f"selected {len(selected)} of 40 units ({record['images_used']} images of a " in (
            stdout
        )
    chosen = {s: (r["selected"], r["images_used"]) for s, r in records.items()}
    assert len(set(map(str, chosen.values()))) == 1, chosen


@pytest.mark.slow
def test_the_whole_set_as_budget_takes_every_unit(unit_files, capsys):
    tmp, counts = unit_files
    argv = _select(tmp, "labels.npz", "all.json", "--budget-images", int(counts.sum()))
    argv += ["--samples-out", tmp / "all.npy", "--names-out", tmp / "all.txt"]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    record = json.loads((tmp / "all.json").read_text())
    assert len(record["selected"]) == 40 and record["images_used"] == 600
    assert np.load(tmp / "all.npy").tolist() == list(range(600))
    assert (tmp / "all.txt").read_text().split() == [str(u) for u in record["selected"]]


@pytest.mark.slow
def test_fine_tuning_reads_a_budget_selection_as_any_other(unit_files, capsys):
    from uotsel_train import selected

    tmp, _ = unit_files
    assert _run(_select(tmp, "counts.npz", "b.json", "--budget-images", 150), capsys)[0] == 0
    record = selected.read(str(tmp / "b.json"))
    assert selected.units(record).units.tolist() == record["selected"]


@pytest.mark.slow
def test_the_documented_example(tmp_path, capsys):
    """docs/cli.md: 100 000 images of ImageNet for CUB-200 on the embedded ResNet18 means."""
    counts = embedded.load("resnet18_supervised", "imagenet").counts
    assert int(counts.sum()) == 1281167
    source = "embedded:resnet18_supervised/imagenet"
    argv = ["select", "--source", source, "--target", "embedded:resnet18_supervised/cub"]
    code, stdout, _ = _run(argv + ["--budget-images", 100000, "--out", tmp_path / "c.json"], capsys)
    assert code == 0
    assert stdout.startswith("selected 77 of 1000 units (99758 images of a budget of 100000)")
    best = json.loads((tmp_path / "c.json").read_text())["selected"][0]
    assert (best, int(counts[best])) == (11, 1300)
    code, _, err = _run(argv + ["--budget-images", 1000, "--out", tmp_path / "d.json"], capsys)
    assert code == 2 and err == (
        "uotsel select: error: --budget-images: the best unit (11) alone holds 1300 images, "
        "more than the budget of 1000\n"
    )


@pytest.mark.slow
def test_the_cli_refuses_a_budget_below_the_best_unit_naming_its_size(unit_files, capsys):
    tmp, counts = unit_files
    code, _, _ = _run(_select(tmp, "counts.npz", "ref.json", "--top-k", 1), capsys)
    best = json.loads((tmp / "ref.json").read_text())["selected"][0]
    (tmp / "old.json").write_text("old\n")
    argv = _select(tmp, "counts.npz", "old.json", "--budget-images", int(counts[best]) - 1)
    code, stdout, err = _run(argv, capsys)
    assert code == 2 and stdout == "" and len(err.splitlines()) == 1
    assert err.startswith(
        f"uotsel select: error: --budget-images: the best unit ({best}) alone holds "
        f"{counts[best]} images, more than the budget of {counts[best] - 1}"
    )
    assert (tmp / "old.json").read_text() == "old\n"


def test_the_cli_refuses_counts_that_disagree_with_the_assignment(unit_files, capsys):
    tmp, counts = unit_files
    wrong = counts.copy()
    wrong[3] += 1
    means = np.load(tmp / "counts.npz")["means"]
    labels = np.load(tmp / "labels.npz")["labels"]
    np.savez(tmp / "wrong.npz", means=means, counts=wrong, assignment=labels)
    code, _, err = _run(_select(tmp, "wrong.npz", "w.json", "--budget-images", 100), capsys)
    assert code == 2 and not (tmp / "w.json").exists()
    assert err == (
        f"uotsel select: error: --source: unit 3 has {wrong[3]} images by its count but "
        f"{counts[3]} samples by the per-sample unit ids\n"
    )
