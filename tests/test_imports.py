import subprocess
import sys

HEAVY = [
    "flax",
    "optax",
    "tensorflow",
    "tensorflow_datasets",
    "torch",
    "ott",
    "ot",
    "sklearn",
    "faiss",
    "uotsel_train",
    "scipy",
]


def test_import_uotsel_stays_light():
    code = (
        "import sys, uotsel, uotsel.cli, uotsel.demo, uotsel.io\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_install_requires_is_jax_and_numpy_only():
    import configparser
    import pathlib

    cfg = configparser.ConfigParser()
    cfg.read(pathlib.Path(__file__).resolve().parents[1] / "setup.cfg")
    requires = [
        r.split(">")[0].split("=")[0].strip()
        for r in cfg["options"]["install_requires"].split("\n")
        if r.strip()
    ]
    assert sorted(requires) == ["jax", "jaxlib", "numpy"]


def test_the_package_and_the_cli_kit_load_without_jax():
    code = (
        "import sys, uotsel, uotsel.cli_kit, uotsel.settings\n"
        "print(','.join(m for m in ('jax', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
