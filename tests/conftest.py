"""Shared fixtures: peer tools, deterministic randomness, the CLI in-process.

Tests run with ``--import-mode=importlib``, so helpers are offered as
fixtures rather than importable modules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

IN_CI = bool(os.environ.get("CI"))
REPO_ROOT = Path(__file__).resolve().parents[1]


def unavailable(message: str) -> None:
    """Skip a test whose tool or platform support is missing; in CI, fail it instead."""
    if IN_CI:
        pytest.fail(message + "; it is required in CI")
    pytest.skip(message + "; skipped because this is not CI")


@pytest.fixture(name="unavailable")
def unavailable_fixture():
    """:func:`unavailable` for test modules (which cannot import conftest)."""
    return unavailable


class Peers:
    """Access to the referee tools: qemu-img, qemu-io and vhdiinfo.

    In CI a missing peer fails the test, because ``.ci/run`` installs them;
    elsewhere the test is skipped and says why.
    """

    def require(self, name: str) -> str:
        path = shutil.which(name)
        if path:
            return path
        unavailable(f"peer tool {name!r} not installed (apt-get install qemu-utils libvhdi-utils)")

    def run(self, *argv, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Run a peer, capturing text output; fail the test on a non-zero exit if ``check``."""
        argv = [str(a) for a in argv]
        self.require(argv[0])
        result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
        if check and result.returncode != 0:
            pytest.fail(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result


@pytest.fixture(scope="session")
def peers() -> Peers:
    return Peers()


@pytest.fixture
def rng():
    """A numpy Generator with a fixed seed, so failures reproduce."""
    return np.random.default_rng(20261125)


@pytest.fixture
def cli(capsys):
    """Run ``vhdcore`` in-process: ``code, out, err = cli("info", path)``."""
    from vhdcore.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def cli_process():
    """Run ``python -m vhdcore`` as a real process (installed or from the checkout)."""

    def run(*argv, input=None, check=False):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        result = subprocess.run(
            [sys.executable, "-m", "vhdcore", *[str(a) for a in argv]],
            capture_output=True,
            input=input,
            env=env,
        )
        if check and result.returncode != 0:
            pytest.fail(f"vhdcore {argv} exited {result.returncode}: {result.stderr!r}")
        return result

    return run


class Crash(BaseException):
    """A simulated process crash (not an Exception, so nothing swallows it)."""


@pytest.fixture
def crasher(monkeypatch):
    """``run(limit, fn, ...)``: run ``fn`` with the ``limit``-th pwrite/truncate crashing.

    Returns ``(crashed, writes)``. Every file the run opened is closed
    afterwards, as the death of a process would. fsync is a no-op: a process
    crash loses nothing the kernel already has.
    """
    from vhdcore.io import imagefile as fileio

    state = {"limit": None, "count": 0, "files": []}

    class CrashingFile(fileio.ImageFile):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            state["files"].append(self)

        def _tick(self):
            state["count"] += 1
            if state["limit"] is not None and state["count"] >= state["limit"]:
                raise Crash(state["count"])

        def pwrite(self, offset, data):
            self._tick()
            super().pwrite(offset, data)

        def truncate(self, size):
            self._tick()
            super().truncate(size)

        def flush(self):
            pass

    monkeypatch.setattr(fileio, "FILE_FACTORY", CrashingFile)

    def run(limit, fn, *args, **kwargs):
        state.update(limit=limit, count=0, files=[])
        crashed = False
        try:
            fn(*args, **kwargs)
        except Crash:
            crashed = True
        finally:
            for f in state["files"]:
                f.close()
            state["limit"] = None
        return crashed, state["count"]

    return run
