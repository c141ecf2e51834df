from uotsel import demo


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
