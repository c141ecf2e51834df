"""Bad arguments to the Python API: docs/api.md promises a ``ValueError``/``TypeError`` whose
message starts with the argument's name, raised before any work; never another exception and
never NaN scores."""

import json
import math

import numpy as np
import pytest

import uotsel
from uotsel import embedded, io, selection_file

rng = np.random.default_rng(0)
S = rng.normal(size=(6, 3)).astype(np.float32)
T = rng.normal(size=(2, 3)).astype(np.float32)
C = rng.random((6, 2)).astype(np.float32)
F = rng.normal(size=(8, 3)).astype(np.float32)
L = np.arange(8) % 4
NAN_S = np.where(np.eye(6, 3) > 0, np.nan, S)
ZERO_S = np.vstack([S[:5], np.zeros((1, 3), np.float32)])
OBJ = np.array([[1, None]], dtype=object)


def _sel(**kw):
    return lambda: uotsel.select(S, T, top_k=2, **kw)


# (name, call, the argument the message must start with)
CASES = [
    # select
    ("source None", lambda: uotsel.select(None, T, top_k=2), "source"),
    ("source text", lambda: uotsel.select("abc", T, top_k=2), "source"),
    ("source 1-d", lambda: uotsel.select(S[0], T, top_k=2), "source"),
    ("source 3-d", lambda: uotsel.select(S[None], T, top_k=2), "source"),
    ("source empty", lambda: uotsel.select(S[:0], T, top_k=None), "source"),
    ("source NaN", lambda: uotsel.select(NAN_S, T, top_k=2), "source"),
    ("source inf", lambda: uotsel.select(S * np.inf, T, top_k=2), "source"),
    ("source objects", lambda: uotsel.select(OBJ, T, top_k=1), "source"),
    ("source complex", lambda: uotsel.select(S.astype(complex), T, top_k=2), "source"),
    ("source zero row", lambda: uotsel.select(ZERO_S, T, top_k=2), "source"),
    ("target None", lambda: uotsel.select(S, None, top_k=2), "target"),
    ("target 1-d", lambda: uotsel.select(S, T[0], top_k=2), "target"),
    ("target empty", lambda: uotsel.select(S, T[:0], top_k=2), "target"),
    ("target NaN", lambda: uotsel.select(S, T * np.nan, top_k=2), "target"),
    ("target dim", lambda: uotsel.select(S, np.ones((2, 4)), top_k=2), "target"),
    ("strategy", lambda: uotsel.select(S, T, strategy="best"), "strategy"),
    ("setting", lambda: uotsel.select(S, T, top_k=2, colour=1), "colour"),
    ("a valid call", _sel(), None),
    ("top_k 0", lambda: uotsel.select(S, T, top_k=0), "top_k"),
    ("top_k -1", lambda: uotsel.select(S, T, top_k=-1), "top_k"),
    ("top_k bool", lambda: uotsel.select(S, T, top_k=True), "top_k"),
    ("top_k float", lambda: uotsel.select(S, T, top_k=1.5), "top_k"),
    ("top_k text", lambda: uotsel.select(S, T, top_k="3"), "top_k"),
    ("top_k huge", lambda: uotsel.select(S, T, top_k=10**20), "top_k"),
    ("n_groups 0", _sel(n_groups=0), "n_groups"),
    ("n_groups > K", _sel(n_groups=7), "n_groups"),
    ("n_groups float", _sel(n_groups=2.0), "n_groups"),
    ("unit_ids float", _sel(unit_ids=np.array([0.5, 1.0])), "unit_ids"),
    ("unit_ids range", _sel(unit_ids=np.array([0, 6])), "unit_ids"),
    ("unit_ids 2-d", _sel(unit_ids=np.zeros((2, 2), int)), "unit_ids"),
    ("cost", _sel(cost="manhattan"), "cost"),
    ("eps_c 0", _sel(eps_c=0.0), "eps_c"),
    ("eps_c nan", _sel(eps_c=math.nan), "eps_c"),
    ("eps_c inf", _sel(eps_c=math.inf), "eps_c"),
    pytest.param(
        "eps_c text",
        _sel(eps_c="a"),
        "eps_c",
    ),
    ("eps 0", _sel(eps=0.0), "eps"),
    ("eps -1", _sel(eps=-1.0), "eps"),
    ("eps None", _sel(eps=None), "eps"),
    ("eps bool", _sel(eps=True), "eps"),
    ("eps_c numpy bool", _sel(eps_c=np.bool_(True)), "eps_c"),
    ("tau_source bool array", _sel(tau_source=np.array([True])), "tau_source"),
    ("threshold bool", _sel(threshold=True), "threshold"),
    ("eps huge int", _sel(eps=10**400), "eps"),
    ("tau_target huge int", _sel(tau_target=-(10**400)), "tau_target"),
    ("eps_c huge int", _sel(eps_c=10**400), "eps_c"),
    ("tau_source 0", _sel(tau_source=0.0), "tau_source"),
    ("tau_source nan", _sel(tau_source=math.nan), "tau_source"),
    ("tau_target -inf", _sel(tau_target=-math.inf), "tau_target"),
    ("threshold 0", _sel(threshold=0.0), "threshold"),
    ("threshold inf", _sel(threshold=math.inf), "threshold"),
    ("max_iter 0", _sel(max_iter=0), "max_iter"),
    ("max_iter float", _sel(max_iter=2.5), "max_iter"),
    ("max_iter bool", _sel(max_iter=True), "max_iter"),
    pytest.param(
        "max_iter huge",
        _sel(max_iter=99999999999999),
        "max_iter",
    ),
    ("source_weights <0", _sel(source_weights=-np.ones(6)), "source_weights"),
    ("source_weights shape", _sel(source_weights=np.ones(5)), "source_weights"),
    ("target_weights nan", _sel(target_weights=np.array([1.0, np.nan])), "target_weights"),
    (
        "greedy target_weights",
        lambda: uotsel.select(S, T, strategy="greedy_ot", top_k=2, target_weights=np.ones(3)),
        "target_weights",
    ),
    ("seed -1", lambda: uotsel.select(S, None, strategy="random", top_k=2, seed=-1), "seed"),
    ("seed float", lambda: uotsel.select(S, None, strategy="random", top_k=2, seed=1.5), "seed"),
    ("seed bool", lambda: uotsel.select(S, None, strategy="random", top_k=2, seed=True), "seed"),
    (
        "matching float",
        lambda: uotsel.select(S, None, strategy="label", top_k=None, matching=[1.5]),
        "matching",
    ),
    (
        "matching range",
        lambda: uotsel.select(S, None, strategy="label", top_k=None, matching=[6]),
        "matching",
    ),
    (
        "matching empty",
        lambda: uotsel.select(S, None, strategy="label", top_k=None, matching=[]),
        "matching",
    ),
    ("label without matching", lambda: uotsel.select(S, None, strategy="label"), "matching"),
    (
        "source dimension 0",
        lambda: uotsel.select(np.ones((3, 0)), np.ones((2, 0)), top_k=2),
        "source",
    ),
    (
        "greedy dimension 0",
        lambda: uotsel.select(np.ones((3, 0)), np.ones((2, 0)), strategy="greedy_ot", top_k=2),
        "source",
    ),
    # solver
    ("cost None", lambda: uotsel.sinkhorn(None), "cost"),
    ("cost 1-d", lambda: uotsel.sinkhorn(C[0]), "cost"),
    ("cost NaN", lambda: uotsel.sinkhorn(C * np.nan), "cost"),
    ("cost -inf", lambda: uotsel.sinkhorn(-np.inf * C), "cost"),
    ("cost inf row", lambda: uotsel.sinkhorn(np.vstack([C, np.full((1, 2), np.inf)])), "cost"),
    ("cost empty", lambda: uotsel.sinkhorn(C[:0]), "cost"),
    ("sinkhorn eps", lambda: uotsel.sinkhorn(C, eps=0.0), "eps"),
    ("sinkhorn tau", lambda: uotsel.sinkhorn(C, tau_source=-1.0), "tau_source"),
    ("sinkhorn threshold", lambda: uotsel.sinkhorn(C, threshold=math.nan), "threshold"),
    ("sinkhorn max_iter", lambda: uotsel.sinkhorn(C, max_iter=0), "max_iter"),
    ("sinkhorn method", lambda: uotsel.sinkhorn(C, method="fast"), "method"),
    ("sinkhorn weights", lambda: uotsel.sinkhorn(C, source_weights=np.ones(5)), "source_weights"),
    (
        "sinkhorn mask",
        lambda: uotsel.sinkhorn(C, target_mask=np.ones(3, bool)),
        "target_mask",
    ),
    ("transport dim", lambda: uotsel.transport(S, np.ones((2, 4))), "target"),
    ("transport cost", lambda: uotsel.transport(S, T, cost="l1"), "cost"),
    ("transport zero", lambda: uotsel.transport(ZERO_S, T), "source"),
    ("transport chunk", lambda: uotsel.transport(S, T, chunk_size=0), "chunk_size"),
    # costs
    ("cosine zero", lambda: uotsel.cosine_cost(ZERO_S, T), "source"),
    ("cosine eps_c", lambda: uotsel.cosine_cost(S, T, 0.0), "eps_c"),
    ("cosine dim", lambda: uotsel.cosine_cost(S, np.ones((2, 4))), "target"),
    ("cosine chunk", lambda: uotsel.cosine_cost(S, T, chunk_size=0), "chunk_size"),
    pytest.param(
        "cost kind",
        lambda: uotsel.cost_matrix(S, T, "manhattan"),
        "kind",
    ),
    ("l2 NaN", lambda: uotsel.l2_cost(NAN_S, T), "source"),
    # class means
    ("features 1-d", lambda: uotsel.class_means(np.ones(5), np.zeros(5, int)), "features"),
    ("features None", lambda: uotsel.class_means(None, L), "features"),
    ("features NaN", lambda: uotsel.class_means(F * np.nan, L), "features"),
    ("features empty", lambda: uotsel.class_means(F[:0], L[:0]), "features"),
    ("features dim 0", lambda: uotsel.class_means(np.ones((8, 0)), L), "features"),
    ("labels fractional", lambda: uotsel.class_means(F, L + 0.5), "labels"),
    ("labels NaN", lambda: uotsel.class_means(F, np.where(L == 1, np.nan, L)), "labels"),
    ("labels bool", lambda: uotsel.class_means(F, L > 1), "labels"),
    ("labels text", lambda: uotsel.class_means(F, L.astype(str)), "labels"),
    ("labels negative", lambda: uotsel.class_means(F, L - 1), "labels"),
    ("labels length", lambda: uotsel.class_means(F, L[:-1]), "labels"),
    ("labels 2-d", lambda: uotsel.class_means(F, L.reshape(2, 4)), "labels"),
    ("labels gap", lambda: uotsel.class_means(F, np.where(L == 1, 2, L)), "labels"),
    ("labels huge", lambda: uotsel.class_means(F, np.where(L == 1, 10**12, L)), "labels"),
    (
        "labels huge allowed",
        lambda: uotsel.class_means(F, np.where(L == 1, 10**15, L), allow_empty=True),
        "labels",
    ),
    ("num_classes 0", lambda: uotsel.class_means(F, L, 0), "num_classes"),
    ("num_classes small", lambda: uotsel.class_means(F, L, 3), "labels"),
    (
        "num_classes huge",
        lambda: uotsel.class_means(F, L, 10**15, allow_empty=True),
        "num_classes",
    ),
    ("num_classes float", lambda: uotsel.class_means(F, L, 4.0), "num_classes"),
    ("chunk_size 0", lambda: uotsel.class_means(F, L, chunk_size=0), "chunk_size"),
    ("chunk_size bool", lambda: uotsel.class_means(F, L, chunk_size=True), "chunk_size"),
    ("accumulator 0", lambda: uotsel.ClassMeanAccumulator(0), "num_classes"),
    ("accumulator empty", lambda: uotsel.ClassMeanAccumulator(2).result(), "features"),
    (
        "accumulator label",
        lambda: uotsel.ClassMeanAccumulator(2).update(F, L),
        "labels",
    ),
    # k-means
    pytest.param(
        "kmeans features 1-d",
        lambda: uotsel.kmeans(np.ones(5), 2),
        "features: expected a 2-d array, got shape (5,)",
    ),
    ("kmeans NaN", lambda: uotsel.kmeans(F * np.nan, 2), "features"),
    ("kmeans zero row", lambda: uotsel.kmeans(np.zeros((8, 3)), 2), "features"),
    ("kmeans k 0", lambda: uotsel.kmeans(F, 0), "k"),
    ("kmeans k > N", lambda: uotsel.kmeans(F, 9), "k"),
    ("kmeans k bool", lambda: uotsel.kmeans(F, True), "k"),
    ("kmeans n_init 0", lambda: uotsel.kmeans(F, 2, n_init=0), "n_init"),
    ("kmeans max_iter 0", lambda: uotsel.kmeans(F, 2, max_iter=0), "max_iter"),
    ("kmeans tol", lambda: uotsel.kmeans(F, 2, tol=math.nan), "tol"),
    ("kmeans seed -1", lambda: uotsel.kmeans(F, 2, seed=-1), "seed"),
    pytest.param(
        "kmeans seed 2**70",
        lambda: uotsel.kmeans(F, 2, seed=2**70),
        "seed",
    ),
    ("kmeans chunk", lambda: uotsel.kmeans(F, 2, chunk_size=0), "chunk_size"),
    ("kmeans init_sample", lambda: uotsel.kmeans(F, 4, init_sample=2), "init_sample"),
    # helpers
    ("rank NaN", lambda: uotsel.rank([1.0, math.nan]), "scores"),
    ("rank 2-d", lambda: uotsel.rank(np.ones((2, 2))), "scores"),
    ("split_groups 0", lambda: uotsel.split_groups(np.arange(3), 0), "n_groups"),
    ("split_groups > K", lambda: uotsel.split_groups(np.arange(3), 4), "n_groups"),
    ("expand float", lambda: uotsel.expand_to_samples([0], [0.5]), "unit_ids"),
    ("expand range", lambda: uotsel.expand_to_samples([0], [0, 5], 3), "unit_ids"),
    ("embedded backbone", lambda: embedded.load("vgg", "cub"), "backbone"),
    ("embedded dataset", lambda: embedded.load("mocov2_resnet50", "dogs"), "dataset"),
    ("embedded spec", lambda: io.read_units("embedded:vgg/cub", "source"), "source"),
]


# the cases that take seconds each on a 2-core CPU
SLOW_CASES = {"source NaN", "source inf", "cost NaN", "cost -inf", "cost inf row"}


@pytest.mark.parametrize(
    "name, call, arg",
    [pytest.param(*c, marks=pytest.mark.slow) if c[0] in SLOW_CASES else c for c in CASES],
)
def test_bad_argument_names_itself(name, call, arg):
    if arg is None:
        result = call()
        assert not np.isnan(result.scores).any()
        return
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    message = str(info.value)
    assert message.startswith(arg if ":" in arg else f"{arg}:"), message
    assert "\n" not in message.strip(), message


def test_n_init_has_a_bound():
    """A huge ``n_init`` must be refused up front rather than run (almost) forever."""
    iterations = []

    def stop(line):
        iterations.append(line)
        if len(iterations) > 20:
            raise RuntimeError("kmeans started restart after restart")

    with pytest.raises(ValueError, match=r"^n_init:"):
        uotsel.kmeans(F, 2, n_init=10**14, max_iter=1, progress=stop)


# Files: every failure its own one line, starting with the argument given.
def _write(path, data):
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return str(path)


def _object_npy(shape):
    """The bytes of a ``.npy`` whose header declares Python objects, with an opaque payload:
    what a pickled object array looks like to a reader that must refuse it (nothing here
    pickles or unpickles)."""
    import io as _io

    buf = _io.BytesIO()
    header = {"descr": "|O", "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + bytes(16)


@pytest.fixture
def files(tmp_path):
    np.save(tmp_path / "means.npy", S)
    good = (tmp_path / "means.npy").read_bytes()
    (tmp_path / "obj.npy").write_bytes(_object_npy(OBJ.shape))
    np.savez(tmp_path / "units.npz", means=S)
    (tmp_path / "folder").mkdir()
    return {
        "folder": (str(tmp_path / "folder"), "is a folder"),
        "missing": (str(tmp_path / "none.npy"), "file not found"),
        "empty": (_write(tmp_path / "empty.npy", b""), "is empty (0 bytes)"),
        "truncated": (_write(tmp_path / "cut.npy", good[:-5]), "is truncated"),
        "bad header": (_write(tmp_path / "head.npy", good[:12]), "truncated or corrupt"),
        "zip cut": (
            _write(tmp_path / "cut.npz", (tmp_path / "units.npz").read_bytes()[:60]),
            "truncated or corrupt",
        ),
        "text": (_write(tmp_path / "text.npy", "means\n"), "is not a numpy file"),
        "objects": (str(tmp_path / "obj.npy"), "holds Python objects"),
    }


@pytest.mark.parametrize(
    "case", ["folder", "missing", "empty", "truncated", "bad header", "zip cut", "text", "objects"]
)
def test_unreadable_unit_files(files, case):
    path, words = files[case]
    with pytest.raises(ValueError) as info:
        io.read_units(path, "source")
    message = str(info.value)
    assert message.startswith("source: ") and words in message, message
    assert "pickle" not in message and "\n" not in message


@pytest.mark.slow
def test_units_written_are_read_back(tmp_path):
    path = str(tmp_path / "u.npz")
    io.write_units(path, S, counts=np.ones(6, int), names=list("abcdef"), assignment=[0, 5, 1])
    units = io.read_units(path, "source")
    np.testing.assert_array_equal(units.means, S)
    assert units.names.tolist() == list("abcdef") and units.unit_ids.tolist() == [0, 5, 1]
    clusters = uotsel.kmeans(F, 2, max_iter=2)
    io.write_clusters(str(tmp_path / "c.npz"), clusters, sample_names=[f"s{i}" for i in range(8)])
    units = io.read_units(str(tmp_path / "c.npz"), "source")
    np.testing.assert_array_equal(units.means, clusters.means)
    assert units.sample_names.tolist()[0] == "s0"


@pytest.mark.parametrize(
    "content, words",
    [
        ("", "is empty (0 bytes)"),
        ("{", "is not a uotsel selection file (not JSON"),
        (b"\x93NUMPY\x01\x00", "is not a uotsel selection file (not UTF-8 text)"),
        ("[1, 2]", "is not a uotsel selection file"),
        ('{"format": "other"}', "is not a uotsel selection file"),
        ({"selected": [1, True]}, "no valid list 'selected'"),
        ({"selected": [-1]}, "no valid list 'selected'"),
        ({"ranking": [0.5]}, "no valid list 'ranking'"),
        ({"ranking": "0,1"}, "no valid list 'ranking'"),
        ({"groups": [1, 2]}, "no list of score groups"),
        ({"groups": [[0], [False]]}, "no list of score groups"),
        ({"groups": None}, "no list of score groups"),
    ],
)
def test_read_selection(tmp_path, content, words):
    good = {
        "format": selection_file.SELECTION_FORMAT,
        "selected": [1],
        "ranking": [1, 0],
        "groups": [[1], [0]],
    }
    path = tmp_path / "s.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(json.dumps({**good, **content}) if isinstance(content, dict) else content)
    with pytest.raises(ValueError) as info:
        selection_file.read_selection(str(path), "sel")
    assert str(info.value).startswith("sel: ") and words in str(info.value), str(info.value)
    path.write_text(json.dumps(good))
    assert selection_file.read_selection(str(path))["selected"] == [1]


def test_read_selection_folder_and_missing(tmp_path):
    with pytest.raises(ValueError, match=r"^selection: is a folder"):
        selection_file.read_selection(str(tmp_path))
    with pytest.raises(ValueError, match=r"^selection: file not found"):
        selection_file.read_selection(str(tmp_path / "none.json"))


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_headers_of_every_version_are_read_and_cut_ones_refused(tmp_path, version):
    from uotsel import io

    means = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = tmp_path / "units.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array(fh, means, version=version)
    np.testing.assert_array_equal(io.read_units(str(path), "--source").means, means)
    whole = path.read_bytes()
    for cut in (9, 12, 20, len(whole) - 49):
        path.write_bytes(whole[:cut])
        with pytest.raises(ValueError, match=r"^--source: .* (truncated|corrupt)"):
            io.read_units(str(path), "--source")
