import importlib
import pkgutil
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("package", ["uotsel", "uotsel_train"])
def test_every_module_imports(package):
    """Every module of both packages, found on disk; ``__main__`` runs the command line and is
    run by ``python -m uotsel`` in tests/test_cli.py."""
    root = importlib.import_module(package)
    names = [
        info.name
        for info in pkgutil.walk_packages(root.__path__, f"{package}.")
        if not info.name.endswith(".__main__")
    ]
    assert f"{package}.cli" in names
    for name in names:
        importlib.import_module(name)
