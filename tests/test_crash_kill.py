"""A real ``kill -9`` of ``python -m vhdcore convert`` and ``commit`` at random moments.

vhdcore.faults simulates crashes inside the process; this kills the real
process, so whatever ``finally`` blocks and exception handlers would have
done is not done. Each command first runs once to completion to learn how
long it takes; then, for a few moments drawn with a fixed seed across
that span (from interpreter start-up to the last fsync), a fresh copy of
the inputs is converted or committed and the process is sent SIGKILL.

* convert: no destination file exists (at most a ``.NAME.vhdcore-tmp-*``
  leftover, which the next conversion removes once it is stale), the
  source is unchanged, and a rerun produces the right output.
* commit: the child is byte-identical, the parent opens and checks clean
  apart from leaked space, holds only old or committed bytes, and a rerun
  completes the commit.

``VHDCORE_KILL_MOMENTS=20`` tries more moments.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import vhdcore

KiB = 1024
MiB = 1024 * KiB
REPO = Path(__file__).resolve().parents[1]
MOMENTS = int(os.environ.get("VHDCORE_KILL_MOMENTS", "4"))
SEED = 6


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _content(path):
    with vhdcore.open(path) as image:
        return image.read(0, image.virtual_size)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A 32 MiB dynamic parent and a child that holds a third of it."""
    directory = tmp_path_factory.mktemp("pristine")
    rng = np.random.default_rng(SEED)
    size = 32 * MiB
    with vhdcore.create(directory / "parent.vhd", size, block_size=512 * KiB) as parent:
        for offset in range(0, size, 4 * MiB):
            parent.write(offset, rng.integers(1, 256, MiB, dtype=np.uint8).tobytes())
    with vhdcore.create(directory / "child.vhd", parent=directory / "parent.vhd") as child:
        for offset in range(MiB // 2, size, 3 * MiB):
            child.write(offset, rng.integers(1, 256, MiB + 1000, dtype=np.uint8).tobytes())
    return directory


def _fresh(pristine, tmp_path):
    work = tmp_path / "work"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(pristine, work)
    return work


def _start(*argv):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", "vhdcore", *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _timed(*argv):
    started = time.monotonic()
    process = _start(*argv)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return time.monotonic() - started


def _kill_at(delay, *argv, reset=None):
    """Start the command, SIGKILL it after ``delay`` s; returns whether the kill landed.

    When the command finished first (a loaded machine runs faster or slower
    than the timing run), ``reset()`` restores the inputs and the kill is
    tried again earlier, up to three times.
    """
    for _ in range(4):
        process = _start(*argv)
        time.sleep(delay)
        alive = process.poll() is None
        if alive:
            process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        if alive and process.returncode == -signal.SIGKILL:
            return True
        assert process.returncode == 0
        if reset is None:
            return False
        reset()
        delay /= 2
    return False


def _moments(duration, count=MOMENTS):
    rng = random.Random(SEED)
    # Spread over the run, biased past the interpreter's start-up.
    return sorted(duration * (0.15 + 0.8 * rng.random()) for _ in range(count))


@pytest.mark.parametrize("fmt", ["raw", "dynamic"])
def test_kill_during_convert_leaves_no_destination(pristine, tmp_path, fmt):
    moments = max(2, MOMENTS // 2)
    work = _fresh(pristine, tmp_path)
    wanted = _content(work / "child.vhd")
    dst = work / f"out.{fmt}"
    duration = _timed("convert", "-O", fmt, work / "child.vhd", dst)
    killed = 0
    for delay in _moments(duration, moments):
        work = _fresh(pristine, tmp_path)
        sources = {n: _digest(work / n) for n in ("child.vhd", "parent.vhd")}
        killed += _kill_at(delay, "convert", "-O", fmt, work / "child.vhd", dst,
                           reset=lambda: dst.unlink(missing_ok=True))
        names = set(os.listdir(work)) - {"child.vhd", "parent.vhd"}
        if dst.name in names:
            # The kill came after the rename: the output must then be whole.
            got = dst.read_bytes() if fmt == "raw" else _content(dst)
            assert got == wanted, f"kill at {delay:.2f}s left a wrong {dst.name}"
            names.discard(dst.name)
        assert all(n.startswith(f".{dst.name}.vhdcore-tmp-") for n in names), names
        assert {n: _digest(work / n) for n in sources} == sources
        _timed("convert", "-O", fmt, "--force", work / "child.vhd", dst)
        got = dst.read_bytes() if fmt == "raw" else _content(dst)
        assert got == wanted
    assert killed >= moments // 2, f"only {killed} of {moments} kills landed during the run"


def test_kill_during_commit_leaves_a_consistent_parent(pristine, tmp_path):
    from vhdcore.formats.vhd import check

    work = _fresh(pristine, tmp_path)
    old_parent = np.frombuffer(_content(work / "parent.vhd"), dtype=np.uint8)
    wanted = _content(work / "child.vhd")
    child_digest = _digest(work / "child.vhd")
    duration = _timed("commit", work / "child.vhd")
    assert _content(work / "parent.vhd") == wanted
    killed = 0
    for delay in _moments(duration):
        work = _fresh(pristine, tmp_path)
        killed += _kill_at(delay, "commit", work / "child.vhd",
                           reset=lambda: _fresh(pristine, tmp_path))
        assert _digest(work / "child.vhd") == child_digest, "the child changed"
        report = check.check(work / "parent.vhd")
        assert not report.errors, f"kill at {delay:.2f}s: {report.errors}"
        got = np.frombuffer(_content(work / "parent.vhd"), dtype=np.uint8)
        ok = (got == old_parent) | (got == np.frombuffer(wanted, dtype=np.uint8))
        assert ok.all(), f"kill at {delay:.2f}s: the parent holds other bytes"
        _timed("commit", work / "child.vhd")  # the rerun completes
        assert _content(work / "parent.vhd") == wanted
        assert not check.check(work / "parent.vhd").errors
    assert killed >= MOMENTS // 2, f"only {killed} of {MOMENTS} kills landed during the run"
