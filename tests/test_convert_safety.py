"""A conversion that fails, is interrupted or is killed leaves no destination.

The output is built in ``.DST.vhdcore-tmp-XXXXXXXX`` and renamed into place
only when complete and fsynced. An exception, Ctrl-C or SIGTERM removes the
temporary file; SIGKILL cannot be caught, so it may leave the temporary
file (never DST), and the next conversion to the same DST removes it unless
a live conversion holds it locked. (Every crash point of the writers under
``vhdcore.testing.faults`` is covered in ``test_faults.py``.)
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vhdcore.disk.writers import RawWriter
from vhdcore.formats.vhd.writers import DynamicWriter
from vhdcore.io.imagefile import open_image_file
from vhdcore.ops.convert import convert, remove_stale_temps
from vhdcore.testing import faults

KiB = 1024
MiB = 1024 * KiB
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def sample(tmp_path, rng):
    path = tmp_path / "src" / "sample.raw"
    path.parent.mkdir()
    with open(path, "wb") as handle:
        handle.truncate(8 * MiB)
        for offset in (0, 3 * MiB, 5 * MiB + 4096, 7 * MiB):
            handle.seek(offset)
            handle.write(rng.bytes(20 * KiB))
    return path


def leftovers(directory):
    return sorted(name for name in os.listdir(directory) if "vhdcore-tmp" in name)


@pytest.mark.parametrize("exception", [RuntimeError("injected"), KeyboardInterrupt()])
@pytest.mark.parametrize("writer", [DynamicWriter, RawWriter])
def test_exception_part_way_leaves_no_destination(tmp_path, sample, monkeypatch, exception, writer):
    original = writer.data
    calls = []

    def failing(self, offset, view):
        calls.append(offset)
        if len(calls) == 3:
            raise exception
        return original(self, offset, view)

    monkeypatch.setattr(writer, "data", failing)
    dst = tmp_path / ("out.vhd" if writer is DynamicWriter else "out.raw")
    with pytest.raises(type(exception)):
        convert(sample, dst)
    assert len(calls) == 3
    assert not dst.exists()
    assert leftovers(tmp_path) == []


def test_read_error_in_the_reader_thread_leaves_no_destination(tmp_path, sample):
    dst = tmp_path / "out.vhd"
    with faults.inject(read_fail_at=2), pytest.raises(OSError) as caught:
        convert(sample, dst)
    assert caught.value.errno == errno.EIO
    assert not dst.exists() and leftovers(tmp_path) == []


def test_full_disk_leaves_no_destination(tmp_path, sample, cli):
    dst = tmp_path / "out.vhd"
    with faults.inject(fail_at=3, fail="enospc", fail_count=1000):
        code, _, err = cli("convert", sample, dst)
    assert code == 1 and "No space left" in err and err.count("\n") == 1
    assert not dst.exists() and leftovers(tmp_path) == []


def test_existing_destination_survives_a_failed_forced_conversion(tmp_path, sample):
    dst = tmp_path / "out.vhd"
    dst.write_bytes(b"the old image")
    with faults.inject(fail_at=2, fail="eio", fail_count=1000), pytest.raises(OSError):
        convert(sample, dst, force=True)
    assert dst.read_bytes() == b"the old image"
    assert leftovers(tmp_path) == []


def _start_conversion(dst, *extra):
    """A CLI conversion reading stdin, so it stays mid-way until we feed it."""
    return subprocess.Popen(
        [sys.executable, "-m", "vhdcore", "convert", "-", str(dst), *extra],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": REPO_ROOT},
    )


def _wait_for_temp(directory, process, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = leftovers(directory)
        if found:
            return found
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"no temporary file appeared: {process.communicate()}")


def test_sigkill_leaves_no_destination_and_the_next_run_cleans_up(tmp_path, rng, sample):
    dst = tmp_path / "out.vhd"
    process = _start_conversion(dst)
    process.stdin.write(rng.bytes(3 * MiB))
    process.stdin.flush()
    temps = _wait_for_temp(tmp_path, process)
    time.sleep(0.2)  # let it write some blocks
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not dst.exists()
    # SIGKILL cannot be caught: the temporary file stays behind ...
    assert leftovers(tmp_path) == temps
    # ... until the next conversion to the same destination, which removes
    # it once it is old enough and nobody holds its lock.
    old = time.time() - 60
    os.utime(tmp_path / temps[0], (old, old))
    result = convert(sample, dst)
    assert leftovers(tmp_path) == []
    assert any(temps[0] in note and "interrupted" in note for note in result.notes)


def test_sigterm_cleans_up(tmp_path, rng):
    dst = tmp_path / "out.raw"
    process = _start_conversion(dst)
    process.stdin.write(rng.bytes(2 * MiB))
    process.stdin.flush()
    _wait_for_temp(tmp_path, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 143, err
    assert b"terminated" in err
    assert not dst.exists() and leftovers(tmp_path) == []


def test_a_live_conversions_temp_file_is_left_alone(tmp_path):
    dst = tmp_path / "out.vhd"
    live = tmp_path / ".out.vhd.vhdcore-tmp-0000aaaa"
    handle = open_image_file(live, writable=True, create=True)  # holds the flock
    try:
        old = time.time() - 3600
        os.utime(live, (old, old))
        assert remove_stale_temps(dst) == []
        assert live.exists()
    finally:
        handle.close()
    assert remove_stale_temps(dst) == [str(live)]
    assert not live.exists()


def test_fresh_unlocked_temp_file_is_left_alone(tmp_path):
    """A writer may be between creating its temp file and locking it."""
    dst = tmp_path / "out.vhd"
    fresh = tmp_path / ".out.vhd.vhdcore-tmp-0000bbbb"
    fresh.write_bytes(b"")
    assert remove_stale_temps(dst) == []
    other = tmp_path / ".other.vhd.vhdcore-tmp-0000cccc"  # another destination's
    other.write_bytes(b"")
    old = time.time() - 3600
    os.utime(other, (old, old))
    assert remove_stale_temps(dst) == []
    assert other.exists()


def test_json_report_of_a_refusal_is_one_line_error(tmp_path, sample, cli):
    dst = tmp_path / "out.vhd"
    dst.write_bytes(b"x")
    code, out, err = cli("convert", sample, dst, "--json")
    assert code == 1 and out == "" and err.count("\n") == 1
    with pytest.raises(json.JSONDecodeError):
        json.loads(err)
