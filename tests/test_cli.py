import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import uotsel
from uotsel import embedded
from uotsel.cli import main


@pytest.fixture
def files(tmp_path, rng):
    source = rng.normal(size=(150, 8)).astype(np.float32)
    target = rng.normal(size=(5, 8)).astype(np.float32)
    np.savez(
        tmp_path / "source.npz",
        means=source,
        counts=np.arange(150) + 1,
        names=np.array([f"unit{i}" for i in range(150)]),
    )
    np.savez(tmp_path / "target.npz", means=target)
    return tmp_path, source, target


def _run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_select_writes_a_complete_selection_file(files, capsys):
    tmp, source, target = files
    out = tmp / "sel.json"
    code, stdout, _ = _run(
        [
            "select",
            "--source",
            tmp / "source.npz",
            "--target",
            tmp / "target.npz",
            "--top-k",
            7,
            "--out",
            out,
            "--names-out",
            tmp / "names.txt",
        ],
        capsys,
    )
    assert code == 0 and "selected 7 of 150 units" in stdout
    record = json.loads(out.read_text())
    expected = uotsel.select(source, target, top_k=7)
    assert record["format"] == "uotsel.selection/1" and record["strategy"] == "uot"
    assert record["selected"] == expected.selected.tolist()
    assert record["ranking"] == expected.ranking.tolist()
    np.testing.assert_allclose(record["log_scores"], expected.log_scores)
    np.testing.assert_allclose(record["scores"], expected.scores)
    assert record["selected_names"] == [f"unit{i}" for i in expected.selected]
    assert len(record["groups"]) == 10
    assert record["settings"] == {
        "cost": "cosine",
        "eps_c": 0.01,
        "eps": 1.0,
        "tau_source": 1.0,
        "tau_target": 100.0,
        "source_weights": None,
        "target_weights": None,
        "threshold": 1e-5,
        "max_iter": 1000,
        "method": "auto",
        "init": None,
        "shard": "auto",
    }
    assert record["solver"]["converged"] is True
    digest = hashlib.sha256((tmp / "source.npz").read_bytes()).hexdigest()
    assert record["inputs"]["source"]["sha256"] == digest
    assert record["inputs"]["target"]["units"] == 5
    assert (tmp / "names.txt").read_text().split("\n")[:7] == record["selected_names"]


def test_select_from_features_and_labels_and_samples_out(tmp_path, rng, capsys):
    features = rng.normal(size=(300, 6)).astype(np.float32)
    labels = rng.integers(0, 12, size=300)
    np.savez(tmp_path / "src.npz", features=features, labels=labels)
    np.save(tmp_path / "tgt.npy", rng.normal(size=(3, 6)).astype(np.float32))
    code, _, _ = _run(
        [
            "select",
            "--source",
            tmp_path / "src.npz",
            "--target",
            tmp_path / "tgt.npy",
            "--strategy",
            "greedy_ot",
            "--top-k",
            4,
            "--out",
            tmp_path / "s.json",
            "--samples-out",
            tmp_path / "idx.npy",
        ],
        capsys,
    )
    assert code == 0
    record = json.loads((tmp_path / "s.json").read_text())
    idx = np.load(tmp_path / "idx.npy")
    np.testing.assert_array_equal(idx, np.flatnonzero(np.isin(labels, record["selected"])))
    assert record["num_selected_samples"] == idx.size


def test_centroids_then_select(tmp_path, rng, capsys, monkeypatch):
    monkeypatch.setattr("uotsel.progress.LOG_EVERY_S", 0.0)  # a line for every chunk
    features = rng.normal(size=(200, 5)).astype(np.float32)
    labels = rng.integers(0, 6, size=200)
    np.save(tmp_path / "f.npy", features)
    np.save(tmp_path / "l.npy", labels)
    (tmp_path / "names.txt").write_text("\n".join(f"class {i}" for i in range(6)) + "\n")
    code, stdout, err = _run(
        [
            "centroids",
            "--features",
            tmp_path / "f.npy",
            "--labels",
            tmp_path / "l.npy",
            "--names",
            tmp_path / "names.txt",
            "--chunk-size",
            17,
            "--out",
            tmp_path / "m.npz",
        ],
        capsys,
    )
    # In a log (not a terminal): a line per interval (here: per chunk of 17 rows).
    counts = [f"{min(i, 200)}/200" for i in range(17, 217, 17)]
    expected = [f"checking features {c}" for c in counts] + [f"class means {c}" for c in counts]
    assert [line.split(" (")[0] for line in err.splitlines()] == expected
    assert code == 0 and "6 class means" in stdout
    with np.load(tmp_path / "m.npz", allow_pickle=False) as m:
        np.testing.assert_allclose(
            m["means"], uotsel.class_means(features, labels).means, rtol=1e-6
        )
        assert m["names"].tolist()[0] == "class 0"
    code, _, _ = _run(
        [
            "select",
            "--source",
            tmp_path / "m.npz",
            "--strategy",
            "random",
            "--top-k",
            2,
            "--out",
            tmp_path / "r.json",
        ],
        capsys,
    )
    assert code == 0


@pytest.mark.slow
def test_kmeans_then_select_expands_to_sample_names(tmp_path, rng, capsys, monkeypatch):
    monkeypatch.setattr("uotsel.progress.LOG_EVERY_S", 0.0)  # a line for every step
    centres = rng.normal(size=(6, 8))
    labels = rng.integers(0, 6, size=600)
    features = (centres[labels] + 0.05 * rng.normal(size=(600, 8))).astype(np.float32)
    np.save(tmp_path / "f.npy", features)
    (tmp_path / "names.txt").write_text("".join(f"img{i:04d}.jpg\n" for i in range(600)))
    np.savez(tmp_path / "t.npz", means=centres[:2].astype(np.float32))
    code, out, err = _run(
        [
            "kmeans",
            "--features",
            tmp_path / "f.npy",
            "--k",
            6,
            "--seed",
            1,
            "--sample-names",
            tmp_path / "names.txt",
            "--out",
            tmp_path / "c.npz",
        ],
        capsys,
    )
    assert code == 0 and "6 clusters of 600 samples" in out
    lines = err.splitlines()
    assert lines[0].startswith("checking features 600/600 (100%)")
    for i in range(1, 9):
        assert lines[i].startswith(f"k-means seeding {i}/8 ({100 * i / 8:.0f}%) objective ")
    assert lines[9].startswith("k-means Lloyd 1/50 (2%) objective ")
    for i, line in enumerate(lines[10:], 2):
        assert re.match(rf"k-means Lloyd {i}/50 \(\d+%\) objective \S+ moved \d+\.\d\d% ", line)
    with np.load(tmp_path / "c.npz", allow_pickle=False) as c:
        assert c["means"].shape == (6, 8) and c["assignment"].shape == (600,)
        assert (
            c["centroids"].shape == (6, 8)
            and c["counts"].tolist() == np.bincount(c["assignment"], minlength=6).tolist()
        )
        assignment = c["assignment"]
        # 'means': the mean raw feature of each cluster's members; 'centroids': unit rows.
        groupby = np.stack([features[assignment == j].astype(np.float64).mean(0) for j in range(6)])
        np.testing.assert_allclose(c["means"], groupby, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(c["centroids"], axis=1), 1.0, rtol=1e-5)
        means = c["means"]
    code, _, _ = _run(
        [
            "select",
            "--source",
            tmp_path / "c.npz",
            "--target",
            tmp_path / "t.npz",
            "--top-k",
            2,
            "--out",
            tmp_path / "s.json",
            "--samples-out",
            tmp_path / "picked.txt",
        ],
        capsys,
    )
    assert code == 0
    record = json.loads((tmp_path / "s.json").read_text())
    selected = record["selected"]
    expected_sel = uotsel.select(means, centres[:2].astype(np.float32), top_k=2)
    assert selected == expected_sel.selected.tolist()
    np.testing.assert_allclose(record["log_scores"], expected_sel.log_scores)
    picked = (tmp_path / "picked.txt").read_text().split()
    expected = [f"img{i:04d}.jpg" for i in np.flatnonzero(np.isin(assignment, selected))]
    assert picked == expected
    # The two selected clusters are the two planted clusters the target was made from.
    assert set(labels[np.isin(assignment, selected)].tolist()) == {0, 1}


@pytest.mark.slow
def test_select_reads_the_cluster_means_not_the_centroids(tmp_path, rng, capsys):
    means = rng.normal(size=(40, 6)).astype(np.float32)
    centroids = rng.normal(size=(40, 6)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    target = rng.normal(size=(3, 6)).astype(np.float32)
    assignment = rng.integers(0, 40, size=500)
    np.savez(
        tmp_path / "clusters.npz",
        means=means,
        centroids=centroids,
        counts=np.bincount(assignment, minlength=40),
        assignment=assignment,
    )
    np.savez(tmp_path / "t.npz", means=target)
    for strategy in ("uot", "greedy_ot"):
        code, _, _ = _run(
            [
                "select",
                "--source",
                tmp_path / "clusters.npz",
                "--target",
                tmp_path / "t.npz",
                "--strategy",
                strategy,
                "--top-k",
                5,
                "--out",
                tmp_path / "s.json",
            ],
            capsys,
        )
        assert code == 0
        record = json.loads((tmp_path / "s.json").read_text())
        from_means = uotsel.select(means, target, strategy=strategy, top_k=5)
        from_centroids = uotsel.select(centroids, target, strategy=strategy, top_k=5)
        assert record["ranking"] == from_means.ranking.tolist()
        assert record["ranking"] != from_centroids.ranking.tolist()
        assert record["num_selected_samples"] == int(np.isin(assignment, record["selected"]).sum())


def test_greedy_ot_uses_l2_unless_a_cost_is_given(files, capsys):
    tmp, source, target = files
    s64, t64 = source.astype(np.float64), target.astype(np.float64)
    mean_l2 = np.stack([np.linalg.norm(s64 - row, axis=1) for row in t64], axis=1).mean(1)
    unit_s = s64 / np.linalg.norm(s64, axis=1, keepdims=True)
    unit_t = t64 / np.linalg.norm(t64, axis=1, keepdims=True)
    mean_cos = (1.0 - unit_s @ unit_t.T).mean(1)
    for extra, cost, distance in (([], "l2", mean_l2), (["--cost", "cosine"], "cosine", mean_cos)):
        code, _, _ = _run(
            [
                "select",
                "--source",
                tmp / "source.npz",
                "--target",
                tmp / "target.npz",
                "--strategy",
                "greedy_ot",
                *extra,
                "--out",
                tmp / "g.json",
            ],
            capsys,
        )
        assert code == 0
        record = json.loads((tmp / "g.json").read_text())
        assert record["settings"]["cost"] == cost
        assert record["ranking"] == np.argsort(distance, kind="stable").tolist()
    # The other strategies keep the cosine cost by default.
    code, _, _ = _run(
        [
            "select",
            "--source",
            tmp / "source.npz",
            "--target",
            tmp / "target.npz",
            "--strategy",
            "nearest",
            "--out",
            tmp / "n.json",
        ],
        capsys,
    )
    assert code == 0 and json.loads((tmp / "n.json").read_text())["settings"]["cost"] == "cosine"


@pytest.mark.slow
def test_quiet_commands_write_nothing_on_stderr(tmp_path, rng, capsys):
    np.save(tmp_path / "f.npy", rng.normal(size=(100, 4)).astype(np.float32))
    np.save(tmp_path / "l.npy", np.arange(100) % 3)
    for args in (
        ["kmeans", "--features", tmp_path / "f.npy", "--k", 3, "--out", tmp_path / "k.npz"],
        ["centroids", "--features", tmp_path / "f.npy", "--labels", tmp_path / "l.npy"]
        + ["--out", tmp_path / "c.npz"],
    ):
        code, out, err = _run([*args, "--quiet"], capsys)
        assert code == 0 and out.strip() and err == ""
        # Not quiet, in a log: a job shorter than the interval writes no progress line.
        code, out, err = _run(args, capsys)
        assert code == 0 and out.strip() and err == ""


def test_kmeans_bad_inputs(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.ones((5, 3), np.float32))
    for args, pattern in [
        (["--k", 6], "--k: 6 clusters for only 5 samples"),
        (["--k", 2, "--tol", "-1"], "--tol: must be >= 0, got -1"),
        (["--k", 2, "--sample-names", tmp_path / "none.txt"], "--sample-names: file not found"),
        (["--k", 2, "--stream-rows", 0], "--stream-rows: must be"),
        (["--k", 2, "--stream-rows", 2, "--shard", "on"], "--stream-rows: streaming runs on one"),
    ]:
        code, _, err = _run(
            ["kmeans", "--features", tmp_path / "f.npy", "--out", tmp_path / "c.npz", *args], capsys
        )
        assert code == 2 and pattern in err, err
        assert not (tmp_path / "c.npz").exists()
    np.save(tmp_path / "z.npy", np.zeros((5, 3), np.float32))
    code, _, err = _run(
        ["kmeans", "--features", tmp_path / "z.npy", "--k", 2, "--out", tmp_path / "c.npz"], capsys
    )
    assert code == 2 and "--features: row 0 is all zeros" in err


@pytest.mark.slow
def test_embedded_source(tmp_path, capsys):
    code, _, _ = _run(
        [
            "select",
            "--source",
            "embedded:resnet18_supervised/imagenet",
            "--target",
            "embedded:resnet18_supervised/dogs",
            "--out",
            tmp_path / "dogs.json",
        ],
        capsys,
    )
    assert code == 0
    record = json.loads((tmp_path / "dogs.json").read_text())
    concept = embedded.imagenet_classes()["concept"]
    # Stanford Dogs: nearly every selected ImageNet class is a dog class.
    assert sum(concept[i] == "dog" for i in record["selected"]) >= 95
    assert len(record["selected_names"]) == 100


def test_label_strategy_from_the_command_line(files, capsys):
    tmp, _, _ = files
    code, _, _ = _run(
        [
            "select",
            "--source",
            tmp / "source.npz",
            "--strategy",
            "label",
            "--matching",
            "5,2,9",
            "--out",
            tmp / "l.json",
        ],
        capsys,
    )
    assert code == 0
    assert json.loads((tmp / "l.json").read_text())["selected"] == [2, 5, 9]


def _bad_cases(tmp):
    src, tgt = tmp / "source.npz", tmp / "target.npz"
    np.savez(tmp / "nan.npz", means=np.array([[1.0, np.nan]] * 3))
    np.savez(tmp / "zero.npz", means=np.zeros((120, 8)))
    np.savez(tmp / "dim.npz", means=np.ones((3, 4)))
    np.savez(tmp / "empty.npz", means=np.ones((0, 8)))
    np.savez(tmp / "nokey.npz", other=np.ones((3, 8)))
    np.savez(tmp / "obj.npz", means=np.array([object()] * 3, dtype=object))
    np.savez(tmp / "badlabels.npz", features=np.ones((4, 8)), labels=np.array([0, 1, 2, -1]))
    (tmp / "garbage.npz").write_bytes(b"not a zip file")
    base = ["select", "--source", src, "--target", tgt]
    return [
        (["select", "--source", tmp / "missing.npz", "--target", tgt], "--source: file not found"),
        (["select", "--source", tmp / "nokey.npz", "--target", tgt], "--source: .* needs 'means'"),
        (
            ["select", "--source", tmp / "garbage.npz", "--target", tgt],
            "--source: .*garbage.npz is not a numpy file",
        ),
        (
            ["select", "--source", tmp / "obj.npz", "--target", tgt],
            "--source: key 'means' .* holds Python objects",
        ),
        (
            ["select", "--source", tmp / "nan.npz", "--target", tgt],
            "--source: unit features in .*nan.npz: row 0 contains NaN",
        ),
        (
            ["select", "--source", tmp / "badlabels.npz", "--target", tgt],
            "--source: per-sample unit ids in .*badlabels.npz include -1",
        ),
        (
            ["select", "--source", tmp / "zero.npz", "--target", tgt],
            "--source: 120 row.s. have zero norm",
        ),
        (["select", "--source", src, "--target", tmp / "dim.npz"], "--target: feature dimension"),
        (["select", "--source", src, "--target", tmp / "empty.npz"], "--target: .* are empty"),
        (base + ["--top-k", 151], "--top-k: 151 is more than the 150 source units"),
        (base + ["--top-k", 0], "--top-k: must be >= 1"),
        (base + ["--eps", 0], "--eps: must be > 0"),
        (base + ["--eps-c", -1], "--eps-c: must be > 0"),
        (base + ["--tau-source", "nan"], "--tau-source: must be > 0"),
        (base + ["--tau-target", 0], "--tau-target: must be > 0"),
        (base + ["--strategy", "best"], "--strategy: invalid choice"),
        (["select", "--source", src], "--target: required by --strategy uot"),
        (["select", "--source", src, "--strategy", "label"], "--matching: required"),
        (
            ["select", "--source", src, "--strategy", "label", "--matching", "3,999"],
            r"--matching: id 999 is not a source unit \(ids must be in \[0, 150\)\)",
        ),
        (base + ["--samples-out", tmp / "i.npy"], "--samples-out: the source file has no"),
        (
            ["select", "--source", "embedded:resnet18/imagenet", "--target", tgt],
            "--source: unknown embedded data",
        ),
    ]


def test_bad_input_exits_2_with_one_line_and_no_output(files, capsys):
    tmp, _, _ = files
    for args, pattern in _bad_cases(tmp):
        out = tmp / "out.json"
        code, _stdout, err = _run(args + ["--out", out], capsys)
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, (args, err)
        assert re.search(pattern, lines[0]), (pattern, lines[0])
        assert "Traceback" not in err
        assert not out.exists()
        assert not [p for p in os.listdir(tmp) if p.startswith(".uotsel-")]


def test_argparse_errors_are_one_line(capsys):
    assert main(["select", "--top-k", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "required" in err[0]


def test_out_directory_must_exist(files, capsys):
    tmp, _, _ = files
    code, _, err = _run(
        [
            "select",
            "--source",
            tmp / "source.npz",
            "--target",
            tmp / "target.npz",
            "--out",
            tmp / "nope" / "s.json",
        ],
        capsys,
    )
    assert code == 2 and err.startswith("uotsel select: error: --out: folder does not exist")


def test_centroids_bad_inputs(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.ones((4, 3), np.float32))
    np.save(tmp_path / "l.npy", np.array([0, 1, 1, 7]))
    code, _, err = _run(
        [
            "centroids",
            "--features",
            tmp_path / "f.npy",
            "--labels",
            tmp_path / "l.npy",
            "--num-classes",
            3,
            "--out",
            tmp_path / "m.npz",
        ],
        capsys,
    )
    assert code == 2 and "--labels: class id 7 is out of range for --num-classes 3" in err
    assert not (tmp_path / "m.npz").exists()
    code, _, err = _run(
        ["centroids", "--features", tmp_path / "f.npy", "--out", tmp_path / "m.npz"], capsys
    )
    assert code == 2 and "--labels: required" in err


@pytest.mark.parametrize("command", [[], ["select"], ["centroids"], ["kmeans"], ["demo"]])
def test_help(command, capsys):
    assert main(command + ["--help"]) == 0
    assert "usage: uotsel" in capsys.readouterr().out


@pytest.mark.slow
def test_compilation_cache_is_kept_between_runs(tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, UOTSEL_CACHE_DIR=str(cache))
    args = [
        sys.executable,
        "-m",
        "uotsel",
        "select",
        "--source",
        "embedded:mocov2_resnet50/imagenet",
        "--target",
        "embedded:mocov2_resnet50/cub",
        "--out",
        str(tmp_path / "s.json"),
    ]
    subprocess.run(args, env=env, check=True, capture_output=True)
    assert cache.is_dir() and any(cache.iterdir())
    first = json.loads((tmp_path / "s.json").read_text())
    subprocess.run(args, env=env, check=True, capture_output=True)
    assert json.loads((tmp_path / "s.json").read_text())["selected"] == first["selected"]


def test_console_module_runs():
    result = subprocess.run(
        [sys.executable, "-m", "uotsel", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"uotsel {uotsel.__version__}"


def test_infinite_tau_is_written_as_the_string_inf(files, capsys):
    tmp, source, target = files
    args = ["select", "--source", tmp / "source.npz", "--target", tmp / "target.npz"]
    args += ["--top-k", 3, "--tau-target", "inf", "--out", tmp / "s.json"]
    code, _, err = _run(args, capsys)
    assert code == 0, err
    record = json.loads((tmp / "s.json").read_text())
    assert record["settings"]["tau_target"] == "inf"
    expected = uotsel.select(source, target, top_k=3, tau_target=float("inf"))
    assert record["selected"] == expected.selected.tolist()


def test_a_solver_stopped_at_max_iter_still_writes_and_warns(files, capsys):
    tmp, _, _ = files
    args = ["select", "--source", tmp / "source.npz", "--target", tmp / "target.npz"]
    args += ["--top-k", 3, "--max-iter", 1, "--out", tmp / "s.json"]
    code, _, err = _run(args, capsys)
    assert code == 0
    assert err.startswith("uotsel select: warning: the solver did not reach --threshold")
    assert json.loads((tmp / "s.json").read_text())["solver"]["converged"] is False


def test_ids_from_text_files(files, capsys):
    tmp, _, _ = files
    (tmp / "ids.txt").write_text("7\n\n3\n")
    args = ["select", "--source", tmp / "source.npz", "--strategy", "label"]
    args += ["--matching", tmp / "ids.txt", "--out", tmp / "l.json", "--names-out", tmp / "n.txt"]
    code, _, _ = _run(args, capsys)
    assert code == 0
    assert json.loads((tmp / "l.json").read_text())["selected"] == [3, 7]
    assert (tmp / "n.txt").read_text() == "unit3\nunit7\n"
    features = np.arange(12, dtype=np.float32).reshape(6, 2)
    np.save(tmp / "f.npy", features)
    (tmp / "l.txt").write_text("0\n1\n0\n1\n2\n2\n")
    args = ["centroids", "--features", tmp / "f.npy", "--labels", tmp / "l.txt"]
    code, _, _ = _run(args + ["--out", tmp / "m.npz"], capsys)
    assert code == 0
    with np.load(tmp / "m.npz") as m:
        assert m["means"].tolist() == [[2.0, 3.0], [4.0, 5.0], [9.0, 10.0]]
        assert m["assignment"].tolist() == [0, 1, 0, 1, 2, 2]


def test_defaults_come_from_the_paper_module():
    from uotsel import paper
    from uotsel.cli import _build_parser

    parser, _ = _build_parser()
    args = parser.parse_args(["select", "--source", "s.npz", "--out", "s.json"])
    assert (args.eps_c, args.eps, args.tau_source, args.tau_target) == (
        paper.EPS_C,
        paper.EPS,
        paper.TAU_SOURCE,
        paper.TAU_TARGET,
    )
    assert (args.threshold, args.max_iter) == (paper.SOLVER_RTOL, paper.SOLVER_MAX_ITER)


def test_documented_input_and_output_forms(tmp_path, capsys):
    means = np.eye(5, 3, dtype=np.float32) + 0.1
    np.savez(tmp_path / "plain.npz", means=means, assignment=np.array([4, 0, 4, 1]))
    np.save(tmp_path / "ids.npy", np.array([4.0, 1.0]))
    args = ["select", "--source", tmp_path / "plain.npz", "--strategy", "label"]
    args += ["--matching", tmp_path / "ids.npy", "--out", tmp_path / "l.json"]
    args += ["--names-out", tmp_path / "n.txt", "--samples-out", tmp_path / "s.txt"]
    code, _, err = _run(args, capsys)
    assert code == 0, err
    # Without names: the unit ids; without sample names: the sample indices.
    assert (tmp_path / "n.txt").read_text() == "1\n4\n"
    assert (tmp_path / "s.txt").read_text() == "0\n2\n3\n"

    features = np.arange(12, dtype=np.float64).reshape(6, 2)
    np.savez(tmp_path / "fl.npz", features=features, labels=np.array([0.0, 1, 0, 1, 2, 2]))
    code, _, err = _run(
        ["centroids", "--features", tmp_path / "fl.npz", "--out", tmp_path / "m.npz"], capsys
    )
    assert code == 0, err
    with np.load(tmp_path / "m.npz") as m:
        assert m["counts"].tolist() == [2, 2, 2] and m["assignment"].dtype == np.int64
    args = ["centroids", "--features", tmp_path / "fl.npz", "--num-classes", 40]
    code, _, err = _run(args + ["--allow-empty-classes", "--out", tmp_path / "m40.npz"], capsys)
    assert code == 0, err
    with np.load(tmp_path / "m40.npz") as m:
        assert m["means"].shape == (40, 2) and m["counts"][3:].sum() == 0
        assert not m["means"][3:].any()


@pytest.mark.slow
def test_kmeans_streamed_from_disk_writes_the_same_clusters(tmp_path, rng, capsys):
    x = rng.normal(size=(230, 6)).astype(np.float32)
    np.save(tmp_path / "f.npy", x)
    base = ["kmeans", "--features", tmp_path / "f.npy", "--k", 4, "--quiet"]
    assert _run([*base, "--out", tmp_path / "a.npz"], capsys)[0] == 0
    assert _run([*base, "--stream-rows", 64, "--out", tmp_path / "b.npz"], capsys)[0] == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(a["assignment"], b["assignment"])
    np.testing.assert_allclose(a["means"], b["means"], atol=1e-6)


def test_outputs_of_a_process_that_does_not_write(tmp_path):
    """Every process of a multi-process run but process 0: names are checked, nothing is made."""
    from uotsel import io
    from uotsel.outputs import Outputs

    (tmp_path / "old.txt").write_text("kept\n")
    with Outputs([("--in", str(tmp_path / "old.txt"))], writes=False) as outputs:
        assert outputs.add("--out", str(tmp_path / "new.txt"), ("txt",)) == "txt"
        with pytest.raises(ValueError, match=r"--x: .* must end in \.npz"):
            outputs.add("--x", str(tmp_path / "a.json"), ("npz",))
        with pytest.raises(ValueError, match=r"--y: .* is the input file of --in"):
            outputs.add("--y", str(tmp_path / "old.txt"), ("txt",))
        outputs.write("--out", io.write_lines, ["x"])
        outputs.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.txt"]


def test_an_output_filled_through_a_memory_map(tmp_path, rng):
    from uotsel.outputs import Outputs

    values = rng.normal(size=(7, 5)).astype(np.float32)
    (tmp_path / "old.npy").write_bytes(b"old")
    with Outputs() as outputs:
        outputs.add("--x", str(tmp_path / "old.npy"), ("npy",))
        outputs.add("--y", str(tmp_path / "y.txt"), ("txt",))
        mapped = outputs.array("--x", values.shape, np.float32)
        np.testing.assert_array_equal(mapped, np.zeros_like(values))
        mapped[2:] = values[2:]
        mapped[:2] = values[:2]
        assert (tmp_path / "old.npy").read_bytes() == b"old"  # nothing in place before commit
        outputs.write("--y", lambda fh: fh.write(b"y\n"))
        outputs.commit()
    np.testing.assert_array_equal(np.load(tmp_path / "old.npy"), values)
    assert sorted(os.listdir(tmp_path)) == ["old.npy", "y.txt"]


def test_an_output_map_on_a_full_disk_fails_before_filling(tmp_path, monkeypatch):
    import errno

    from uotsel.outputs import Outputs

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with Outputs() as outputs:
        outputs.add("--x", str(tmp_path / "x.npy"), ("npy",))
        with pytest.raises(ValueError, match=r"^--x: cannot write .*No space left on device"):
            outputs.array("--x", (1000, 10), np.float32)
    assert os.listdir(tmp_path) == []


def test_a_dropped_or_abandoned_output_map_leaves_nothing(tmp_path):
    from uotsel.outputs import Outputs

    with Outputs() as outputs:
        outputs.add("--x", str(tmp_path / "x.npy"), ("npy",))
        outputs.add("--y", str(tmp_path / "y.npy"), ("npy",))
        outputs.array("--x", (3, 2), np.float64)[:] = 1.0
        outputs.drop("--x")
        outputs.array("--y", (3, 2), np.float64)[:] = 1.0
    assert os.listdir(tmp_path) == []


def test_a_writer_killed_mid_write_leaves_nothing_after_the_next_write(tmp_path):
    import signal
    import time

    from uotsel import outputs

    # A process that has reserved a large output (as extract does) and is killed by SIGKILL.
    code = (
        "import sys, time\n"
        "from uotsel.outputs import Outputs\n"
        "o = Outputs([]).__enter__()\n"
        "o.add('--out', sys.argv[1], ('npy',))\n"
        "o.array('--out', (1024, 1024), 'float32')\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    (tmp_path / "keep.npy").write_bytes(b"earlier output")
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "keep.npy")], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "ready"
    left = [n for n in os.listdir(tmp_path) if n.startswith(".uotsel-")]
    assert len(left) == 1 and f"-{child.pid}-" in left[0]
    # a running writer's temporary is never taken away
    assert outputs.sweep(str(tmp_path)) == []
    child.send_signal(signal.SIGKILL)
    child.wait()
    time.sleep(0.1)
    # another host's temporaries in a shared folder stay
    (tmp_path / ".uotsel-otherhost-1-abc.tmp").write_bytes(b"x")
    with outputs.atomic_writer(str(tmp_path / "next.txt")) as fh:
        fh.write("next")
    names = sorted(os.listdir(tmp_path))
    assert names == [".uotsel-otherhost-1-abc.tmp", "keep.npy", "next.txt"]
    assert (tmp_path / "keep.npy").read_bytes() == b"earlier output"


@pytest.mark.slow
def test_select_takes_the_papers_count_of_clusters_or_classes_by_default(tmp_path, rng, capsys):
    from uotsel import io, paper

    features = rng.normal(size=(2400, 6)).astype(np.float32)
    np.savez(tmp_path / "t.npz", means=rng.normal(size=(3, 6)).astype(np.float32))
    result = uotsel.kmeans(features, 220, seed=0, max_iter=2)
    io.write_clusters(str(tmp_path / "clusters.npz"), result)
    np.savez(tmp_path / "classes.npz", means=np.asarray(result.means))  # the same units
    for name, want in (("clusters", paper.TOP_K_CLUSTERS), ("classes", paper.TOP_K_CLASSES)):
        out = tmp_path / f"{name}.json"
        args = ["select", "--source", tmp_path / f"{name}.npz", "--target", tmp_path / "t.npz"]
        code, _, _ = _run([*args, "--out", out], capsys)
        assert code == 0
        assert len(json.loads(out.read_text())["selected"]) == want
    assert io.read_units(str(tmp_path / "clusters.npz")).clusters
    assert not io.read_units(str(tmp_path / "classes.npz")).clusters


def test_label_strategy_takes_an_imagenet_concept(tmp_path, capsys):
    out = tmp_path / "birds.json"
    source = "embedded:resnet18_supervised/imagenet"
    args = ["select", "--source", source, "--strategy", "label", "--matching", "concept:bird"]
    code, _, _ = _run([*args, "--out", out], capsys)
    assert code == 0
    concepts = embedded.imagenet_classes()["concept"].astype(str)
    assert (
        sorted(json.loads(out.read_text())["selected"])
        == np.flatnonzero(concepts == "bird").tolist()
    )
    code, _, err = _run([*args[:-1], "concept:planes", "--out", tmp_path / "x.json"], capsys)
    assert code == 2 and "--matching: unknown ImageNet concept 'planes'; valid: " in err
    args[2] = "embedded:resnet18_supervised/cub"
    code, _, err = _run([*args, "--out", tmp_path / "x.json"], capsys)
    assert code == 2 and "not the 1000 ImageNet classes" in err
    assert not (tmp_path / "x.json").exists()
