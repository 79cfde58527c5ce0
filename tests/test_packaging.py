"""What ships: the cimport API, the typing and the marker, and no generated C.

numcodecs once forgot to install its ``.pxd``; these tests make that
impossible here. The files are checked beside the package this process
imports (the checkout, or site-packages after ``pip install .``), and once
in a freshly built wheel.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import vhdcore
from vhdcore import _reference

PACKAGE = Path(vhdcore.__file__).resolve().parent
REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["_kernels.pxd", "_kernels.pyi", "py.typed"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_is_beside_the_package(name):
    assert (PACKAGE / name).is_file()


def test_stub_signatures_equal_the_reference():
    tree = ast.parse((PACKAGE / "_kernels.pyi").read_text())
    stubs = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert sorted(stubs) == sorted(_reference.__all__)
    for name in _reference.__all__:
        arguments = stubs[name].args
        names = [a.arg for a in arguments.posonlyargs + arguments.args]
        defaults = [ast.literal_eval(d) for d in arguments.defaults]
        parameters = inspect.signature(getattr(_reference, name)).parameters.values()
        assert names == [p.name for p in parameters], name
        assert defaults == [p.default for p in parameters if p.default is not p.empty], name
        assert not arguments.kwonlyargs and not arguments.vararg and not arguments.kwarg, name


def test_pxd_declares_every_core():
    text = (PACKAGE / "_kernels.pxd").read_text()
    for name in _reference.__all__:
        assert f" c_{name}(" in text, name
    for helper in ("load_be16", "load_be32", "load_be64", "store_be16", "store_be32", "store_be64"):
        assert re.search(rf"cdef inline \w+ {helper}\(", text), helper


@pytest.mark.slow
def test_wheel_contents(tmp_path):
    """Build a wheel from a copy of the sources (about 10 s) and list it."""
    for module in ("Cython", "setuptools"):
        try:
            __import__(module)
        except ImportError:
            if os.environ.get("CI"):
                pytest.fail(f"{module} missing; the test extra installs it")
            pytest.skip(f"{module} is needed to build a wheel")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    # A copy, so the build's build/, *.egg-info and regenerated C never
    # touch the working tree; compiled leftovers are not copied.
    shutil.copytree(
        REPO_ROOT / "vhdcore",
        source / "vhdcore",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__"),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("vhdcore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in SHIPPED:
        assert f"vhdcore/{name}" in names
    assert any(n.startswith("vhdcore/_kernels.") and n.endswith((".so", ".pyd")) for n in names)
    assert not [n for n in names if n.endswith(".c")], "generated C must not ship"
