"""VHDCORE_BACKEND picks the kernels, says which it picked, and never lies.

Selection happens once, at import, so each case runs in a fresh
interpreter with the variable set. A missing extension is simulated by
blocking its import (``sys.modules[name] = None``), which is exactly what
Python does for a module that cannot be found.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
if {block}:
    sys.modules["vhdcore._kernels"] = None
try:
    import vhdcore
    from vhdcore._backend import kernels
except ImportError as exc:
    print(json.dumps({{"error": str(exc)}}))
else:
    print(json.dumps({{"backend": vhdcore.BACKEND, "module": kernels.__name__}}))
"""


def probe(choice: str | None, *, block: bool = False) -> dict:
    """Import vhdcore in a child with VHDCORE_BACKEND=choice (unset if None)."""
    env = dict(os.environ)
    env.pop("VHDCORE_BACKEND", None)
    if choice is not None:
        env["VHDCORE_BACKEND"] = choice
    # The same vhdcore this process imports: the checkout first, as pytest
    # itself runs from it.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(block=block)],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def compiled_is_built() -> bool:
    return importlib.util.find_spec("vhdcore._kernels") is not None


@pytest.fixture
def built():
    """Skip (or, under VHDCORE_BACKEND=cython, fail) without the extension."""
    if not compiled_is_built():
        message = "vhdcore._kernels is not built"
        if os.environ.get("VHDCORE_BACKEND", "").strip().lower() == "cython":
            pytest.fail(message + "; VHDCORE_BACKEND=cython requires it")
        pytest.skip(message)


def test_reference_is_forced():
    assert probe("reference") == {"backend": "reference", "module": "vhdcore._reference"}


def test_reference_needs_no_extension():
    assert probe("reference", block=True)["backend"] == "reference"


def test_cython_loads_the_extension(built):
    assert probe("cython") == {"backend": "cython", "module": "vhdcore._kernels"}


@pytest.mark.parametrize("choice", [None, "", "auto", " AUTO "])
def test_auto_prefers_the_extension(built, choice):
    assert probe(choice) == {"backend": "cython", "module": "vhdcore._kernels"}


def test_auto_falls_back_without_the_extension():
    assert probe("auto", block=True) == {"backend": "reference", "module": "vhdcore._reference"}


@pytest.mark.parametrize("choice", ["cython", "Cython "])
def test_cython_fails_loudly_without_the_extension(choice):
    outcome = probe(choice, block=True)
    assert "VHDCORE_BACKEND=cython" in outcome["error"]
    assert "vhdcore._kernels" in outcome["error"]


@pytest.mark.parametrize("choice", ["bogus", "python", "c"])
def test_unknown_choice_is_refused(choice):
    outcome = probe(choice)
    assert repr(choice) in outcome["error"]
    assert "auto, cython, reference" in outcome["error"]


def test_this_process_reports_what_it_loaded():
    import vhdcore
    from vhdcore._backend import BACKEND, kernels

    assert vhdcore.BACKEND == BACKEND
    assert (
        kernels.__name__
        == {"cython": "vhdcore._kernels", "reference": "vhdcore._reference"}[BACKEND]
    )
    forced = os.environ.get("VHDCORE_BACKEND", "auto").strip().lower() or "auto"
    if forced != "auto":
        assert forced == BACKEND
