"""Per-sample features in parts (``uotsel.feature-shards/1``): :class:`uotsel.shards.RowShards`
indexes like the concatenated array; the index is read with one-line errors naming the
argument; ``uotsel kmeans`` and ``uotsel centroids`` give the results of the single file."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uotsel import io, shards


def _parts(sizes, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, d)).astype(np.float32) for n in sizes]


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 7), min_size=1, max_size=5).filter(lambda s: sum(s) > 0),
    data=st.data(),
)
def test_rows_index_like_the_concatenation(sizes, data):
    parts = _parts(sizes)
    whole = np.concatenate(parts)
    view = shards.RowShards(parts)
    n = len(whole)
    assert view.shape == whole.shape and len(view) == n and view.dtype == whole.dtype
    lo = data.draw(st.integers(-n - 2, n + 2) | st.none())
    hi = data.draw(st.integers(-n - 2, n + 2) | st.none())
    step = data.draw(st.sampled_from([None, 1, 2, 3, -1, -2]))
    np.testing.assert_array_equal(view[lo:hi:step], whole[lo:hi:step])
    index = np.asarray(data.draw(st.lists(st.integers(-n, n - 1), max_size=12)), np.int64)
    np.testing.assert_array_equal(view[index], whole[index])
    np.testing.assert_array_equal(view[index.reshape(-1, 1)], whole[index.reshape(-1, 1)])
    row = data.draw(st.integers(-n, n - 1))
    np.testing.assert_array_equal(view[row], whole[row])
    np.testing.assert_array_equal(view[row, 1], whole[row, 1])
    np.testing.assert_array_equal(view[lo:hi, 1:], whole[lo:hi, 1:])
    mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    np.testing.assert_array_equal(view[mask], whole[mask])
    np.testing.assert_array_equal(np.asarray(view, np.float64), whole.astype(np.float64))


def test_rows_out_of_range_and_wrong_keys_raise_index_error():
    view = shards.RowShards(_parts([2, 3]))
    for key in (5, -6, np.array([0, 5]), np.array([-6]), np.array([0.5]), np.ones(4, bool)):
        with pytest.raises(IndexError):
            view[key]
    with pytest.raises(IndexError, match="too many indices"):
        view[0, 0, 0]
    with pytest.raises(ValueError, match="one D and one dtype"):
        shards.RowShards([np.zeros((2, 3)), np.zeros((2, 4))])


def _write(folder, sizes, name="f", d=3):
    parts = _parts(sizes, d)
    names = [
        (str(folder / shards.part_name(name, i, len(sizes))), len(p)) for i, p in enumerate(parts)
    ]
    for (path, _), part in zip(names, parts, strict=True):
        np.save(path, part)
    io.write_shards_index(str(folder / f"{name}.json"), names, d, np.float32)
    return str(folder / f"{name}.json"), np.concatenate(parts)


def test_index_written_and_read_back(tmp_path):
    path, whole = _write(tmp_path, [4, 0, 5])
    record = json.loads(open(path).read())
    assert record["format"] == "uotsel.feature-shards/1"
    assert record["rows"] == 9 and record["dim"] == 3 and record["dtype"] == "float32"
    assert [p["file"] for p in record["parts"]] == [
        "f-00000-of-00003.npy",
        "f-00001-of-00003.npy",
        "f-00002-of-00003.npy",
    ]
    features = io.read_features(path, "--features")
    np.testing.assert_array_equal(features[:], whole)
    assert all(isinstance(p, np.memmap) for p in features.parts if p.size)
    assert io.npz_keys(path, "--features") is None


def _broken(tmp_path, change):
    path, _ = _write(tmp_path, [4, 5])
    record = json.loads(open(path).read())
    change(record, tmp_path)
    with open(path, "w") as fh:
        fh.write(record if isinstance(record, str) else json.dumps(record))
    return path


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda r, t: r.update(format="other/1"),
            "is JSON but not a uotsel.feature-shards/1 index",
        ),
        (lambda r, t: r.update(parts=[]), "'parts' must be a non-empty list"),
        (lambda r, t: r["parts"][0].update(file="../f.npy"), "part 0 needs 'file', a file name"),
        (lambda r, t: r["parts"][1].update(file="/etc/passwd"), "part 1 needs 'file'"),
        (lambda r, t: r["parts"][1].update(rows=-1), "part 1 needs 'rows', a whole number"),
        (lambda r, t: r["parts"][1].update(rows=2.0), "part 1 needs 'rows', a whole number"),
        (lambda r, t: r["parts"][1].update(rows=4), r"part 1 \(f-00001-of-00002.npy\) holds shape"),
        (lambda r, t: r.update(rows=10), "announces rows, dim, dtype = "),
        (lambda r, t: r.update(dtype="float64"), "announces rows, dim, dtype = "),
        (lambda r, t: os.remove(t / "f-00001-of-00002.npy"), "file not found"),
        (
            lambda r, t: np.save(t / "f-00001-of-00002.npy", np.zeros((5, 4), np.float32)),
            "differ in dimension",
        ),
        (lambda r, t: open(t / "f-00001-of-00002.npy", "r+b").truncate(140), "is truncated"),
        (lambda r, t: open(t / "f-00001-of-00002.npy", "w").write("{}"), "truncated or corrupt"),
    ],
)
def test_broken_indexes_get_one_line_naming_the_argument(tmp_path, change, message):
    path = _broken(tmp_path, change)
    with pytest.raises(ValueError, match=message) as err:
        io.read_features(path, "--features")
    assert str(err.value).startswith("--features: ") and "\n" not in str(err.value)


def test_not_json_after_a_brace(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("{ not json")
    expected = r"^--features: .*f.json is not a uotsel.feature-shards/1 index \(not JSON: "
    with pytest.raises(ValueError, match=expected):
        io.read_features(str(path), "--features")


@pytest.mark.slow
def test_commands_read_parts_as_the_single_file(tmp_path):
    path, whole = _write(tmp_path, [200, 0, 301], d=8)
    np.save(tmp_path / "all.npy", whole)
    np.save(tmp_path / "labels.npy", np.arange(len(whole)) % 7)
    outs = {}
    for name, source in (("parts", path), ("one", str(tmp_path / "all.npy"))):
        for command, extra in (
            ("kmeans", ["--k", "6"]),
            ("centroids", ["--labels", str(tmp_path / "labels.npy")]),
        ):
            out = tmp_path / f"{command}-{name}.npz"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "uotsel",
                    command,
                    "--features",
                    source,
                    "--out",
                    str(out),
                    "--quiet",
                ]
                + extra,
                check=True,
                capture_output=True,
            )
            outs[command, name] = dict(np.load(out))
    for command in ("kmeans", "centroids"):
        a, b = outs[command, "parts"], outs[command, "one"]
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.slow
def test_python_api_takes_parts_as_the_single_array(tmp_path):
    import uotsel

    path, whole = _write(tmp_path, [150, 0, 211], d=8)
    parts = io.read_features(path, "features")
    labels = np.arange(len(whole)) % 5
    np.testing.assert_array_equal(
        uotsel.class_means(parts, labels).means, uotsel.class_means(whole, labels).means
    )
    a, b = uotsel.kmeans(parts, 4, seed=1), uotsel.kmeans(whole, 4, seed=1)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    np.testing.assert_array_equal(a.means, b.means)
    c = uotsel.kmeans(parts, 4, seed=1, stream_rows=100)
    np.testing.assert_array_equal(c.assignment, b.assignment)
