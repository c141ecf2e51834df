import pytest

from uotsel import demo


@pytest.mark.slow
def test_demo_reproduces_table_4(capsys):
    rows = demo.run(top=5)
    got = {(r.method, r.cost, r.backbone): r.matches for r in rows}
    # Published figures (paper, Table 4): bird classes among the top 100 for CUB, out of 59.
    assert got == {
        ("Greedy-OT", "l2", "resnet18_supervised"): 51,
        ("Greedy-OT", "cosine", "resnet18_supervised"): 56,
        ("UOT", "cosine", "resnet18_supervised"): 58,
        ("Greedy-OT", "l2", "mocov2_resnet50"): 10,
        ("Greedy-OT", "cosine", "mocov2_resnet50"): 23,
        ("UOT", "cosine", "mocov2_resnet50"): 55,
    }
    out = capsys.readouterr().out
    assert "98.31 (58/59)" in out and "<- differs" not in out
    assert "goldfinch" in out
    lines = out.splitlines()
    table = lines[1:8]
    assert table[0].split() == ["method", "cost", "backbone", "uotsel", "paper"]
    # Aligned columns: every cell of a column starts (text) or ends (numbers) where its
    # header does.
    assert len({len(line) for line in table}) == 1, table
    for name in ("cost", "backbone"):
        start = table[0].index(name)
        assert all(line[start - 2 : start] == "  " and line[start] != " " for line in table)
    assert [line.split(". ")[0] for line in lines if ". " in line and "(class" in line] == [
        "1",
        "2",
        "3",
        "4",
        "5",
    ]


@pytest.mark.slow
def test_demo_says_compilation_only_when_it_compiled(capsys):
    demo.run(top=1)
    capsys.readouterr()
    demo.run(top=1)  # the same programs again: nothing left to compile
    out = capsys.readouterr().out
    assert "6 selections in" in out and "compilation" not in out


@pytest.mark.parametrize(
    "backbone, released, paper", [("resnet18_supervised", 56, 58), ("mocov2_resnet50", 53, 55)]
)
def test_uot_recall_with_the_released_eps_c(backbone, released, paper):
    # The authors' released selection script uses eps_c = 0.1 instead of the paper's 0.01:
    # measured 56/59 (supervised ResNet18) and 53/59 (MoCo-v2) bird classes in the top 100 for
    # CUB, against the paper's 58/59 and 55/59 with 0.01.
    assert demo.recall(backbone, "uot", eps_c=0.1) == (released, 59)
    assert demo.recall(backbone, "uot", eps_c=0.01) == (paper, 59)


def test_greedy_ot_default_is_the_l2_row_of_table_4():
    assert demo.recall("resnet18_supervised", "greedy_ot") == (51, 59)
    assert demo.recall("mocov2_resnet50", "greedy_ot") == (10, 59)


def test_demo_out_writes_the_uot_selection_and_its_picture(tmp_path, capsys):
    import numpy as np

    import uotsel
    from uotsel import embedded, selection_file
    from uotsel.cli import main

    out = tmp_path / "cub.json"
    assert main(["demo", "--top", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} and its picture {tmp_path / 'cub.png'}" in printed
    record = selection_file.read_selection(str(out))
    source = embedded.load("resnet18_supervised", "imagenet").means
    target = embedded.load("resnet18_supervised", "cub").means
    expected = uotsel.select(source, target, top_k=100)
    assert record["selected"] == expected.selected.tolist()
    birds = embedded.imagenet_classes()["concept"][np.asarray(record["selected"])] == "bird"
    assert int(birds.sum()) == 58  # Table 4
    assert len(record["target_mass"]) == 200
    assert (tmp_path / "cub.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "name, contains",
    [("cub.png", "--out: "), ("sub/cub.json", "--out: "), ("", "--out: no file name given")],
)
def test_demo_out_refused_before_work(tmp_path, capsys, name, contains):
    from uotsel.cli import main

    assert main(["demo", "--out", str(tmp_path / name) if name else ""]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("uotsel demo: error: ") and contains in captured.err
    assert list(tmp_path.iterdir()) == []


def test_demo_out_without_matplotlib(tmp_path):
    import os
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['matplotlib'] = None; from uotsel.cli import main; "
        f"sys.exit(main(['demo', '--out', {str(tmp_path / 'd.json')!r}]))"
    )
    env = dict(os.environ, UOTSEL_CACHE_DIR="")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "uotsel demo: error: --out: drawing needs matplotlib: pip install 'uotsel[plot]'\n"
    )
    assert list(tmp_path.iterdir()) == []
