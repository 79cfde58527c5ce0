"""Shared fixtures: peer tools, deterministic randomness, the CLI in-process."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

IN_CI = bool(os.environ.get("CI"))


def require_peer(name: str) -> str:
    """Path of a peer tool (qemu-img, qemu-io, vhdiinfo).

    In CI a missing peer is a failure, because ``.ci/run`` installs them;
    elsewhere the test is skipped and says so.
    """
    path = shutil.which(name)
    if path:
        return path
    message = f"peer tool {name!r} not installed (apt-get install qemu-utils libvhdi-utils)"
    if IN_CI:
        pytest.fail(message + " -- required in CI")
    pytest.skip(message + " -- skipped outside CI only")


def run_peer(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a peer tool, capturing text output; fails the test on error if ``check``."""
    require_peer(argv[0])
    result = subprocess.run(list(argv), capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


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
