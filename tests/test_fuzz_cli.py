"""Bad input at the ``uotsel`` command line: every command keeps the promises of docs/cli.md.

Each failure must give exit status 2, exactly one stderr line starting with
``uotsel COMMAND: error: --FLAG``, no traceback, no new file (no output, no temporary) and every
existing file byte-identical.
"""

import errno
import hashlib
import os
import shutil
import stat
import tempfile
import zipfile

import numpy as np
import pytest

from uotsel.cli import MAX_CHUNK, MAX_IMAGES, MAX_ITER, MAX_N_INIT, MAX_SEED, MAX_UNITS, main

K, N, D, CLASSES = 12, 30, 4, 6


def _npy_bytes(array):
    path = os.path.join(tempfile.mkdtemp(), "a.npy")
    np.save(path, array)
    with open(path, "rb") as fh:
        return fh.read()


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
def d(tmp_path):
    """A folder of tiny valid inputs, broken inputs and existing outputs."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(K, D)).astype(np.float32)
    assignment = np.arange(N) % K
    np.savez(
        tmp_path / "src.npz",
        means=means,
        counts=np.bincount(assignment),
        names=np.array([f"u{i}" for i in range(K)]),
        assignment=assignment,
        sample_names=np.array([f"s{i}.jpg" for i in range(N)]),
    )
    np.savez(tmp_path / "tgt.npz", means=rng.normal(size=(3, D)).astype(np.float32))
    features = rng.normal(size=(N, D)).astype(np.float32)
    labels = np.arange(N) % CLASSES
    np.save(tmp_path / "f.npy", features)
    np.save(tmp_path / "l.npy", labels)
    np.savez(tmp_path / "fl.npz", features=features, labels=labels)
    (tmp_path / "l.txt").write_text("".join(f"{v}\n" for v in labels))
    (tmp_path / "names.txt").write_text("".join(f"class {i}\n" for i in range(CLASSES)))
    (tmp_path / "snames.txt").write_text("".join(f"s{i}.jpg\n" for i in range(N)))
    (tmp_path / "ids.txt").write_text("1\n3\n5\n")

    # Broken files.
    (tmp_path / "folder.npz").mkdir()
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "trunc.npy").write_bytes(_npy_bytes(features)[:-10])
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "src.npz").read_bytes()[:300])
    (tmp_path / "text.npz").write_text("hello\n")
    (tmp_path / "text.npy").write_text("1,2,3\n")
    (tmp_path / "obj.npy").write_bytes(_object_npy((2,)))
    with zipfile.ZipFile(tmp_path / "objmeans.npz", "w") as archive:
        archive.writestr("means.npy", _object_npy((2, 2)))
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81bad\n")
    (tmp_path / "frac.txt").write_text("1\n2.5\n")
    (tmp_path / "names5.txt").write_text("".join(f"class {i}\n" for i in range(5)))
    (tmp_path / "snames3.txt").write_text("a\nb\nc\n")
    arrays = {
        "vec.npy": np.ones(6, np.float32),
        "cube.npy": np.ones((2, 3, 4), np.float32),
        "d0.npy": np.ones((3, 0), np.float32),
        "n0.npy": np.ones((0, D), np.float32),
        "nan.npy": np.where(np.eye(N, D) > 0, np.nan, 1.0).astype(np.float32),
        "inf.npy": np.full((N, D), np.inf, np.float32),
        "big.npy": np.full((N, D), 1e39),
        "zero.npy": np.zeros((N, D), np.float32),
        "str.npy": np.array([["a", "b"], ["c", "d"]]),
        "dim5.npy": np.ones((3, 5), np.float32),
        "lfrac.npy": np.where(labels == 1, 0.5, labels).astype(np.float64),
        "lhuge.npy": np.where(np.arange(N) == 3, 10**12, labels),
        "lneg.npy": np.where(np.arange(N) == 3, -1, labels),
        "lgap.npy": np.where(labels == 2, 3, labels),
        "lshort.npy": labels[:-1],
        "l2d.npy": labels.reshape(5, 6),
        "lbool.npy": labels > 2,
        "lnan.npy": np.where(labels == 1, np.nan, labels),
        "idsfrac.npy": np.array([1.5, 2.0]),
    }
    for name, value in arrays.items():
        np.save(tmp_path / name, value)
    for name, bad in [
        ("flfrac.npz", np.where(labels == 1, 0.5, labels)),
        ("flhuge.npz", np.where(np.arange(N) == 0, 10**12, labels)),
        ("flgap.npz", np.where(labels == 2, 3, labels)),
        ("flneg.npz", np.where(labels == 2, -3, labels)),
    ]:
        np.savez(tmp_path / name, features=features, labels=bad)
    np.savez(tmp_path / "nokey.npz", other=features)
    np.savez(tmp_path / "asfrac.npz", means=means, assignment=assignment + 0.5)
    np.savez(tmp_path / "asbig.npz", means=means, assignment=assignment + K)

    # Existing outputs and odd output paths.
    (tmp_path / "old.json").write_text('{"old": true}\n')
    (tmp_path / "old.txt").write_text("old names\n")
    np.savez(tmp_path / "old.npz", old=np.arange(3))
    np.save(tmp_path / "old.npy", np.arange(3))
    (tmp_path / "afile").write_text("a regular file\n")
    for name in ("adir.json", "adir.txt", "adir.npz"):
        (tmp_path / name).mkdir()
    os.mkfifo(tmp_path / "fifo.txt")
    os.symlink(tmp_path / "src.npz", tmp_path / "link.json")
    os.symlink(tmp_path / "f.npy", tmp_path / "flink.npz")
    os.link(tmp_path / "tgt.npz", tmp_path / "hard.json")
    return tmp_path


def _snapshot(folder):
    """Every entry under ``folder``: sha256 of regular files, kind of the others."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                with open(path, "rb") as fh:
                    state[path] = hashlib.sha256(fh.read()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                state[path] = "link:" + os.readlink(path)
            else:
                state[path] = stat.S_IFMT(info.st_mode)
    return state


def _refused(argv, folder, capsys, flag, contains=None):
    command = argv[0]
    before = _snapshot(folder)
    code = main(argv)
    _, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, (argv, err)
    assert len(lines) == 1, (argv, err)
    assert lines[0].startswith(f"uotsel {command}: error: {flag}"), (argv, lines[0])
    assert "Traceback" not in err and "pickle" not in err
    if contains is not None:
        assert contains in lines[0], (contains, lines[0])
    assert _snapshot(folder) == before, argv
    return lines[0]


SEL = "select --source {d}/src.npz --target {d}/tgt.npz --top-k 2 --out {d}/old.json"
SEL_NO_OUT = "select --source {d}/src.npz --target {d}/tgt.npz --top-k 2"
CEN = "centroids --features {d}/f.npy --labels {d}/l.npy --out {d}/old.npz"
CEN_NO_OUT = "centroids --features {d}/f.npy --labels {d}/l.npy"
KM = "kmeans --features {d}/f.npy --k 2 --quiet --out {d}/old.npz"
KM_NO_OUT = "kmeans --features {d}/f.npy --k 2 --quiet"
LABEL = "select --source {d}/src.npz --strategy label --out {d}/old.json"
# src.npz: 12 units of 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2 samples
BUDGET = "select --source {d}/src.npz --target {d}/tgt.npz --out {d}/old.json"

# Outputs: (command line, flag, part of the message).
OUTPUT_CASES = [
    (SEL_NO_OUT + " --out {d}/nope/x.json", "--out", "folder does not exist"),
    (SEL_NO_OUT + " --out {d}/afile/x.json", "--out", "is not a folder"),
    (SEL_NO_OUT + " --out {d}/adir.json", "--out", "is a folder"),
    (SEL_NO_OUT + " --out {d}/x.npz", "--out", "must end in .json"),
    (SEL_NO_OUT + " --out {d}/x", "--out", "must end in .json"),
    (SEL_NO_OUT + " --out {d}/sub/", "--out", "names a folder"),
    (SEL_NO_OUT + " --out {d}/link.json", "--out", "is the input file of --source"),
    (SEL_NO_OUT + " --out {d}/hard.json", "--out", "is the input file of --target"),
    (SEL + " --names-out {d}/fifo.txt", "--names-out", "not a regular file"),
    (SEL + " --names-out {d}/x.json", "--names-out", "must end in .txt"),
    (SEL + " --names-out {d}/adir.txt", "--names-out", "is a folder"),
    (SEL + " --samples-out {d}/x.npz", "--samples-out", "must end in .npy or .txt"),
    (SEL + " --samples-out {d}/x.json", "--samples-out", "must end in .npy or .txt"),
    (SEL + " --names-out {d}/a.txt --samples-out {d}/a.txt", "--samples-out", "output of --names"),
    (SEL + " --names-out {d}/old.json.txt --samples-out {d}/nope/a.npy", "--samples-out", None),
    (
        LABEL + " --matching {d}/ids.txt --names-out {d}/ids.txt",
        "--names-out",
        "is the input file of --matching",
    ),
    (CEN_NO_OUT + " --out {d}/x.npy", "--out", "must end in .npz"),
    (CEN_NO_OUT + " --out {d}/x.json", "--out", "must end in .npz"),
    (CEN_NO_OUT + " --out {d}/nope/x.npz", "--out", "folder does not exist"),
    (CEN_NO_OUT + " --out {d}/afile/x.npz", "--out", "is not a folder"),
    (CEN_NO_OUT + " --out {d}/adir.npz", "--out", "is a folder"),
    (CEN_NO_OUT + " --out {d}/flink.npz", "--out", "is the input file of --features"),
    ("centroids --features {d}/fl.npz --out {d}/fl.npz", "--out", "input file of --features"),
    (KM_NO_OUT + " --out {d}/x.npy", "--out", "must end in .npz"),
    (KM_NO_OUT + " --out {d}/nope/x.npz", "--out", "folder does not exist"),
    (KM_NO_OUT + " --out {d}/afile/x.npz", "--out", "is not a folder"),
    (KM_NO_OUT + " --out {d}/adir.npz", "--out", "is a folder"),
    (KM_NO_OUT + " --out {d}/flink.npz", "--out", "is the input file of --features"),
    ("kmeans --features {d}/fl.npz --k 2 --out {d}/fl.npz", "--out", "input file of --features"),
]


def _argv(template, d):
    return template.format(d=d).split()


@pytest.mark.parametrize("template, flag, contains", OUTPUT_CASES)
def test_bad_outputs_are_refused_before_any_work(d, capsys, template, flag, contains):
    _refused(_argv(template, d), d, capsys, flag, contains)


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["select", "--source", "{d}/src.npz", "--target", "{d}/tgt.npz", "--out", ""], "--out"),
        (["centroids", "--features", "{d}/f.npy", "--labels", "{d}/l.npy", "--out", ""], "--out"),
        (["kmeans", "--features", "{d}/f.npy", "--k", "2", "--out", ""], "--out"),
    ],
)
def test_empty_output_name(d, capsys, argv, flag):
    _refused([a.format(d=d) for a in argv], d, capsys, flag, "no file name")


# Inputs: (command line, flag, part of the message).
_NUMPY_INPUTS = [
    ("missing.npy", "file not found"),
    ("folder.npz", "is a folder"),
    ("empty.npy", "is empty (0 bytes)"),
    ("trunc.npy", "is truncated"),
    ("trunc.npz", "truncated or corrupt"),
    ("text.npz", "is not a numpy file"),
    ("obj.npy", "holds Python objects"),
]
INPUT_CASES = (
    [(SEL.replace("src.npz", f), "--source", m) for f, m in _NUMPY_INPUTS]
    + [(SEL.replace("tgt.npz", f), "--target", m) for f, m in _NUMPY_INPUTS]
    + [(CEN.replace("f.npy", f), "--features", m) for f, m in _NUMPY_INPUTS]
    + [(KM.replace("f.npy", f), "--features", m) for f, m in _NUMPY_INPUTS]
    + [(CEN.replace("l.npy", f), "--labels", m) for f, m in _NUMPY_INPUTS if f not in ("text.npz",)]
    + [
        (SEL.replace("src.npz", "objmeans.npz"), "--source", "holds Python objects"),
        (SEL.replace("src.npz", "vec.npy"), "--source", "(6,)"),
        (SEL.replace("src.npz", "cube.npy"), "--source", "(2, 3, 4)"),
        (SEL.replace("src.npz", "d0.npy"), "--source", "dimension 0"),
        (SEL.replace("src.npz", "n0.npy"), "--source", "empty"),
        (SEL.replace("src.npz", "nan.npy"), "--source", "row 0 contains NaN or inf"),
        (SEL.replace("src.npz", "inf.npy"), "--source", "NaN or inf"),
        (SEL.replace("src.npz", "big.npy"), "--source", "beyond float32"),
        (SEL.replace("src.npz", "zero.npy"), "--source", "zero norm"),
        (SEL.replace("src.npz", "str.npy"), "--source", "not numeric"),
        (SEL.replace("src.npz", "flfrac.npz"), "--source", "0.5 is not a whole number"),
        (SEL.replace("src.npz", "flhuge.npz"), "--source", "1000000000000"),
        (SEL.replace("src.npz", "flgap.npz"), "--source", "have no samples"),
        (SEL.replace("src.npz", "flneg.npz"), "--source", "-3"),
        (SEL.replace("src.npz", "asfrac.npz"), "--source", "not a whole number"),
        (SEL.replace("src.npz", "asbig.npz"), "--source", "beyond the 12 units"),
        (SEL.replace("src.npz", "text.npy"), "--source", "is not a numpy file"),
        (SEL.replace("{d}/src.npz", "embedded:nope/imagenet"), "--source", "unknown embedded"),
        (SEL.replace("tgt.npz", "d0.npy"), "--target", "dimension 0"),
        (SEL.replace("tgt.npz", "vec.npy"), "--target", "(6,)"),
        (SEL.replace("tgt.npz", "dim5.npy"), "--target", "dimension 5 does not match"),
        (SEL.replace("tgt.npz", "zero.npy"), "--target", "zero norm"),
        (SEL.replace("tgt.npz", "nan.npy"), "--target", "NaN or inf"),
        (SEL.replace("tgt.npz", "n0.npy"), "--target", "empty"),
        (CEN.replace("f.npy", "vec.npy"), "--features", "(6,)"),
        (CEN.replace("f.npy", "cube.npy"), "--features", "(2, 3, 4)"),
        (CEN.replace("f.npy", "d0.npy"), "--features", "dimension 0"),
        (CEN.replace("f.npy", "n0.npy"), "--features", "no samples"),
        (CEN.replace("f.npy", "nan.npy"), "--features", "row 0 contains NaN or inf"),
        (CEN.replace("f.npy", "big.npy"), "--features", "beyond float32"),
        (CEN.replace("f.npy", "str.npy"), "--features", "expected numbers"),
        (CEN.replace("f.npy", "tgt.npz"), "--features", "has no key 'features'"),
        (KM.replace("f.npy", "src.npz"), "--features", "has no key 'features'"),
        (SEL.replace("tgt.npz", "nokey.npz"), "--target", "needs 'means' or 'features' + 'labels'"),
        (CEN.replace("l.npy", "lfrac.npy"), "--labels", "0.5 is not a whole number"),
        (CEN.replace("l.npy", "lnan.npy"), "--labels", "nan is not a whole number"),
        (CEN.replace("l.npy", "frac.txt"), "--labels", "'2.5' is not an integer"),
        (CEN.replace("l.npy", "text.npz"), "--labels", "'hello' is not an integer"),
        (CEN.replace("l.npy", "binary.txt"), "--labels", "not UTF-8"),
        (CEN.replace("l.npy", "empty.txt"), "--labels", "is empty"),
        (CEN.replace("l.npy", "lhuge.npy"), "--labels", "label 1000000000000 is not below"),
        (CEN.replace("l.npy", "lneg.npy"), "--labels", "label -1 is negative"),
        (CEN.replace("l.npy", "lgap.npy"), "--labels", "--allow-empty-classes"),
        (CEN.replace("l.npy", "lshort.npy"), "--labels", "29 labels for the 30 rows"),
        (CEN.replace("l.npy", "l2d.npy"), "--labels", "(5, 6)"),
        (CEN.replace("l.npy", "lbool.npy"), "--labels", "bool"),
        (CEN + " --num-classes 5", "--labels", "out of range for --num-classes 5"),
        ("centroids --features {d}/f.npy --out {d}/old.npz", "--labels", "required"),
        (CEN + " --names {d}/names5.txt", "--names", "5 names for 6 classes"),
        (CEN + " --names {d}/missing.txt", "--names", "file not found"),
        (CEN + " --names {d}/adir.txt", "--names", "is a folder"),
        (CEN + " --names {d}/binary.txt", "--names", "not UTF-8"),
        (CEN + " --names {d}/f.npy", "--names", "is a numpy file"),
        (CEN + " --names {d}/empty.txt", "--names", "is empty"),
        (CEN.replace("f.npy", "old.json"), "--features", "not a uotsel.feature-shards/1 index"),
        (KM.replace("f.npy", "old.json"), "--features", "not a uotsel.feature-shards/1 index"),
        (KM.replace("f.npy", "vec.npy"), "--features", "(6,)"),
        (KM.replace("f.npy", "d0.npy"), "--features", "dimension 0"),
        (KM.replace("f.npy", "n0.npy"), "--features", "no samples"),
        (KM.replace("f.npy", "nan.npy"), "--features", "NaN or inf"),
        (KM.replace("f.npy", "big.npy"), "--features", "beyond float32"),
        (KM.replace("f.npy", "zero.npy"), "--features", "row 0 is all zeros"),
        (KM.replace("--k 2", "--k 31"), "--k", "31 clusters for only 30 samples"),
        (KM + " --sample-names {d}/snames3.txt", "--sample-names", "3 names for 30 samples"),
        (KM + " --sample-names {d}/missing.txt", "--sample-names", "file not found"),
        (KM + " --sample-names {d}/binary.txt", "--sample-names", "not UTF-8"),
        (KM + " --sample-names {d}/adir.txt", "--sample-names", "is a folder"),
        (LABEL + " --matching 1.5,2", "--matching", "'1.5' is not an integer"),
        (LABEL + " --matching 2.0", "--matching", "'2.0' is not an integer"),
        (LABEL + " --matching abc", "--matching", "neither an existing file"),
        (LABEL + " --matching ,,,", "--matching", "neither an existing file"),
        (LABEL + " --matching -1", "--matching", "id -1 is not a source unit"),
        (LABEL + " --matching 3,12", "--matching", "id 12 is not a source unit"),
        (LABEL + " --matching 99999999999999999999999", "--matching", "too large"),
        (LABEL + " --matching {d}/frac.txt", "--matching", "'2.5' is not an integer"),
        (LABEL + " --matching {d}/idsfrac.npy", "--matching", "1.5 is not a whole number"),
        (LABEL + " --matching {d}/binary.txt", "--matching", "not UTF-8"),
        (LABEL + " --matching {d}/empty.txt", "--matching", "is empty"),
        (LABEL + " --matching {d}/folder.npz", "--matching", "is a folder"),
        (LABEL + " --matching {d}/obj.npy", "--matching", "Python objects"),
        (LABEL + " --matching {d}/lbool.npy", "--matching", "bool"),
        (LABEL + " --matching 1,3 --top-k 3", "--top-k", "3 is more than the 2 units listed"),
        (LABEL, "--matching", "required by --strategy label"),
        (
            BUDGET.replace("src.npz", "f.npy") + " --budget-images 5",
            "--budget-images",
            "no 'counts', 'labels' or 'assignment'",
        ),
        (
            LABEL + " --matching 1,3 --budget-images 7",
            "--budget-images",
            "7 is more than the 6 images of the 2 units listed in matching",
        ),
        (
            "select --source {d}/tgt.npz --strategy random --out {d}/old.json "
            "--samples-out {d}/s.npy",
            "--samples-out",
            "no per-sample unit ids",
        ),
    ]
)


@pytest.mark.parametrize("template, flag, contains", INPUT_CASES)
def test_bad_inputs_are_refused(d, capsys, template, flag, contains):
    _refused(_argv(template, d), d, capsys, flag, contains)


# Numbers: every integer option has an upper bound; floats must be in range.
_HUGE = ["99999999999999", str(2**64), "1" + "0" * 40]
_NOT_INT = ["1.5", "abc", "1e3", "0x10"]
NUMBER_CASES = (
    [(SEL, "--top-k", v, m) for v, m in [("0", ">= 1"), ("-1", ">= 1"), ("13", "than the 12")]]
    + [(SEL, "--top-k", v, f"at most {MAX_UNITS}") for v in _HUGE]
    + [(SEL, "--top-k", v, "expected an integer") for v in _NOT_INT]
    + [(SEL, "--n-groups", v, m) for v, m in [("0", ">= 1"), ("13", "than the 12")]]
    + [
        (BUDGET, "--budget-images", v, m)
        for v, m in [
            ("0", ">= 1"),
            ("-1", ">= 1"),
            ("31", "31 is more than the 30 images of the 12 source units"),
            ("1", "alone holds"),
        ]
    ]
    + [(BUDGET, "--budget-images", v, f"at most {MAX_IMAGES}") for v in _HUGE]
    + [(BUDGET, "--budget-images", v, "expected an integer") for v in _NOT_INT]
    + [(SEL, "--n-groups", v, f"at most {MAX_UNITS}") for v in _HUGE]
    + [(SEL, "--max-iter", v, f"at most {MAX_ITER}") for v in _HUGE]
    + [(SEL, "--max-iter", v, m) for v, m in [("0", ">= 1"), ("1.5", "integer")]]
    + [(SEL, "--seed", v, f"at most {MAX_SEED}") for v in [str(2**32), str(2**63), *_HUGE]]
    + [(SEL, "--seed", v, m) for v, m in [("-1", ">= 0"), ("1.5", "integer")]]
    + [
        (SEL, flag, v, m)
        for flag in ("--eps", "--eps-c", "--threshold")
        for v, m in [("0", "> 0"), ("-1", "> 0"), ("nan", "> 0"), ("inf", "finite"), ("x", "num")]
    ]
    + [
        (SEL, flag, v, m)
        for flag in ("--tau-source", "--tau-target")
        for v, m in [("0", "> 0"), ("-inf", "> 0"), ("nan", "> 0"), ("abc", "number")]
    ]
    + [(CEN, "--num-classes", v, f"at most {MAX_UNITS}") for v in [str(MAX_UNITS + 1), *_HUGE]]
    + [(CEN, "--num-classes", v, m) for v, m in [("0", ">= 1"), ("2.0", "integer")]]
    + [(CEN, "--chunk-size", v, f"at most {MAX_CHUNK}") for v in [str(2**40), *_HUGE]]
    + [(CEN, "--chunk-size", v, m) for v, m in [("0", ">= 1"), ("x", "integer")]]
    + [(KM.replace(" --k 2", ""), "--k", v, f"at most {MAX_UNITS}") for v in _HUGE]
    + [(KM.replace(" --k 2", ""), "--k", v, m) for v, m in [("0", ">= 1"), ("two", "integer")]]
    + [(KM, "--n-init", v, f"at most {MAX_N_INIT}") for v in [str(MAX_N_INIT + 1), *_HUGE]]
    + [(KM, "--n-init", "0", ">= 1")]
    + [(KM, "--max-iter", v, f"at most {MAX_ITER}") for v in _HUGE]
    + [(KM, "--max-iter", "0", ">= 1")]
    + [(KM, "--seed", v, f"at most {MAX_SEED}") for v in [str(2**63), *_HUGE]]
    + [(KM, "--seed", "-1", ">= 0")]
    + [(KM, "--chunk-size", v, f"at most {MAX_CHUNK}") for v in _HUGE]
    + [(KM, "--stream-rows", v, f"at most {MAX_CHUNK}") for v in _HUGE]
    + [(KM, "--stream-rows", v, m) for v, m in [("0", ">= 1"), ("2.5", "integer")]]
    + [(KM, "--shard", "maybe", "invalid choice"), (SEL, "--shard", "1", "invalid choice")]
    + [(KM, "--num-processes", v, m) for v, m in [("0", ">= 1"), ("1.5", "integer")]]
    + [(SEL, "--process-id", v, m) for v, m in [("-1", ">= 0"), (str(2**40), "at most")]]
    + [(KM, "--tol", v, m) for v, m in [("-1", ">= 0"), ("nan", ">= 0"), ("inf", "finite")]]
    + [("demo", "--top", v, m) for v, m in [("-1", ">= 0"), ("101", "at most 100")]]
    + [("demo", "--top", v, "at most 100") for v in _HUGE]
    + [("demo", "--top", v, "integer") for v in _NOT_INT]
)


@pytest.mark.parametrize("template, flag, value, contains", NUMBER_CASES)
def test_numbers_out_of_bounds(d, capsys, template, flag, value, contains):
    _refused(_argv(template, d) + [f"{flag}={value}"], d, capsys, flag, contains)


def test_default_top_k_beyond_the_units_names_the_flag(d, capsys):
    argv = _argv(SEL.replace(" --top-k 2", ""), d)
    _refused(argv, d, capsys, "--top-k", "the default 100 is more than the 12 source units")


# The parser's own errors are one line naming the flag too.
PARSER_CASES = [
    (SEL + " --bogus 1", "--bogus", "unrecognized"),
    (CEN + " --bogus", "--bogus", "unrecognized"),
    (KM + " --bogus", "--bogus", "unrecognized"),
    ("demo --bogus", "--bogus", "unrecognized"),
    ("select --target {d}/tgt.npz --out {d}/old.json", "--source", "required"),
    ("select --source {d}/src.npz --target {d}/tgt.npz", "--out", "required"),
    ("centroids --labels {d}/l.npy --out {d}/old.npz", "--features", "required"),
    ("kmeans --features {d}/f.npy --out {d}/old.npz", "--k", "required"),
    (SEL + " --top-k", "--top-k", "expected one argument"),
    (SEL + " --budget-images 5", "--budget-images", "not allowed with argument --top-k"),
    (BUDGET + " --budget-images 5 --top-k 2", "--top-k", "not allowed with argument --budget"),
    (SEL + " --strategy best", "--strategy", "invalid choice"),
    (SEL + " --cost manhattan", "--cost", "invalid choice"),
    (SEL + " --t 5", "--t", "ambiguous"),
    ("select --source {d}/src.npz --out {d}/old.json", "--target", "required by --strategy uot"),
    ("demo --top", "--top", "expected one argument"),
]


@pytest.mark.parametrize("template, flag, contains", PARSER_CASES)
def test_parser_errors(d, capsys, template, flag, contains):
    _refused(_argv(template, d), d, capsys, flag, contains)


# Failures while writing: made to happen by replacing the file-system calls.
RUNS = {
    "select": "select --source {d}/src.npz --strategy random --top-k 2 --out {d}/old.json "
    "--names-out {d}/old.txt --samples-out {d}/new.npy",
    "centroids": "centroids --features {d}/f.npy --labels {d}/l.npy --out {d}/old.npz",
    "kmeans": "kmeans --features {d}/f.npy --k 2 --max-iter 2 --quiet --out {d}/old.npz",
}


def _fail_on(calls, number, error):
    """A replacement that raises ``error`` on its ``number``-th call (1-based)."""

    def wrap(real):
        def fake(*args, **kwargs):
            calls.append(args)
            if len(calls) == number:
                raise OSError(error, os.strerror(error))
            return real(*args, **kwargs)

        return fake

    return wrap


WRITE_FAILURES = [
    ("select", 1, "--out"),
    ("select", 2, "--names-out"),
    ("select", 3, "--samples-out"),
    ("centroids", 1, "--out"),
    ("kmeans", 1, "--out"),
]


@pytest.mark.parametrize("command, number, flag", WRITE_FAILURES)
def test_temporary_file_cannot_be_created(d, capsys, monkeypatch, command, number, flag):
    calls = []
    monkeypatch.setattr(
        tempfile, "mkstemp", _fail_on(calls, number, errno.EACCES)(tempfile.mkstemp)
    )
    _refused(_argv(RUNS[command], d), d, capsys, flag, "cannot create a file in")


@pytest.mark.parametrize("command, number, flag", WRITE_FAILURES)
def test_disk_full_while_writing(d, capsys, monkeypatch, command, number, flag):
    calls = []
    monkeypatch.setattr(os, "fsync", _fail_on(calls, number, errno.ENOSPC)(os.fsync))
    line = _refused(_argv(RUNS[command], d), d, capsys, flag, "cannot write")
    assert "No space left on device" in line


@pytest.mark.parametrize("number", [1, 2, 3])
def test_a_failed_rename_puts_back_what_was_replaced(d, capsys, monkeypatch, number):
    flags = ["--out", "--names-out", "--samples-out"]
    real = os.replace
    renames = []

    def fake(src, dst):
        if os.path.basename(str(src)).endswith(".tmp"):
            renames.append(dst)
            if len(renames) == number:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fake)
    _refused(_argv(RUNS["select"], d), d, capsys, flags[number - 1], "cannot write")


def test_a_file_that_cannot_be_kept_aside_is_not_replaced(d, capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", fail)
    monkeypatch.setattr(shutil, "copy2", fail)
    _refused(_argv(RUNS["centroids"], d), d, capsys, "--out", "cannot replace")


@pytest.mark.parametrize("command", list(RUNS))
def test_outputs_get_the_umask_permissions(d, capsys, command):
    argv = _argv(RUNS[command], d)
    for path in (d / "old.json", d / "old.txt", d / "old.npz"):
        os.chmod(path, 0o600)
    mask = os.umask(0o027)
    try:
        assert main(argv) == 0, capsys.readouterr().err
    finally:
        os.umask(mask)
    outputs = [argv[i + 1] for i, a in enumerate(argv) if a.endswith("-out") or a == "--out"]
    for path in outputs:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640, path
    assert not [p for p in os.listdir(d) if p.startswith(".uotsel-")]


def test_the_extension_sets_the_format(d, capsys):
    argv = _argv(RUNS["select"], d) + ["--groups", "3"]
    assert main(argv) == 0
    assert np.load(d / "new.npy").dtype == np.int64
    argv[argv.index("--samples-out") + 1] = str(d / "new.txt")
    assert main(argv) == 0
    assert (d / "new.txt").read_text().splitlines()[0].endswith(".jpg")
    assert main(_argv(RUNS["centroids"], d)) == 0
    assert zipfile.is_zipfile(d / "old.npz")
    capsys.readouterr()


def test_allow_empty_classes(d, capsys):
    argv = _argv(CEN.replace("l.npy", "lgap.npy"), d)
    assert main(argv + ["--allow-empty-classes"]) == 0
    with np.load(d / "old.npz") as m:
        assert m["counts"].tolist() == [5, 5, 0, 10, 5, 5]
    argv = _argv(CEN.replace("l.npy", "lhuge.npy"), d)
    argv += ["--num-classes", str(MAX_UNITS), "--allow-empty-classes"]
    _refused(argv, d, capsys, "--labels", "out of range for --num-classes")
    capsys.readouterr()


@pytest.mark.parametrize(
    "command, function",
    [
        ("select", "uotsel.io.read_units"),
        ("centroids", "uotsel.io.read_features"),
        ("kmeans", "uotsel.io.read_features"),
    ],
)
@pytest.mark.parametrize("failure", ["no folder", "no temporary"])
def test_outputs_are_checked_before_reading_or_computing(
    d, capsys, monkeypatch, command, function, failure
):
    def untouched(*args, **kwargs):
        raise AssertionError("read before the outputs were checked")

    monkeypatch.setattr(function, untouched)
    argv = _argv(RUNS[command], d)
    if failure == "no folder":
        out = argv.index("--out") + 1
        argv[out] = str(d / "nope" / os.path.basename(argv[out]))
        _refused(argv, d, capsys, "--out", "folder does not exist")
    else:
        calls = []
        fail = _fail_on(calls, 1, errno.EROFS)(tempfile.mkstemp)
        monkeypatch.setattr(tempfile, "mkstemp", fail)
        _refused(argv, d, capsys, "--out", "Read-only file system")
