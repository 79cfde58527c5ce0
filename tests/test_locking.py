"""Two writers never share an image: the exclusive lock and what each command does about it.

Opening an image for writing takes an exclusive ``flock`` (vhdcore.fileio),
held until close. A second writer, in another process or through another
handle of this one, gets :class:`~vhdcore.errors.LockedError` at once
(never a wait, never a shared write). Readers take no lock and are never
blocked. Commands that would change a locked image (commit into a locked
parent, resize, compact, repair, rebase) fail with one line on stderr and
leave the file unchanged; a command that only reads a locked image (info,
check, convert's source) is a reader.

(tests/test_image.py already covers the second in-process handle.)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import vhdcore
from vhdcore import errors
from vhdcore.formats.vhd import commit, compact, repair, resize

KiB = 1024
MiB = 1024 * KiB
REPO = Path(__file__).resolve().parents[1]


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class Holder:
    """Another process holding ``path`` open for writing until stopped."""

    def __init__(self, path):
        script = textwrap.dedent(
            f"""
            import sys, vhdcore
            image = vhdcore.open({str(path)!r}, "r+")
            print("ready", flush=True)
            sys.stdin.read()
            image.close()
            """
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout.readline().strip() == "ready"

    def stop(self):
        self.process.stdin.close()
        code = self.process.wait(timeout=30)
        self.process.stdout.close()
        assert code == 0


@pytest.fixture
def chain(tmp_path):
    with vhdcore.create(tmp_path / "parent.vhd", 4 * MiB, block_size=512 * KiB) as p:
        p.write(0, b"parent" * 1000)
        p.write(MiB, bytes(512 * KiB))  # an allocated zero block for compact
        p.write(2 * MiB, b"z" * 10)
    with vhdcore.create(tmp_path / "child.vhd", parent=tmp_path / "parent.vhd") as c:
        c.write(3 * MiB, b"child" * 100)
    return tmp_path


def test_writer_in_another_process_refuses_a_second_writer(chain):
    path = chain / "parent.vhd"
    holder = Holder(path)
    try:
        with pytest.raises(errors.LockedError, match="open for writing"):
            vhdcore.open(path, "r+")
        with vhdcore.open(path) as reader:  # readers are never blocked
            assert reader.read(0, 6) == b"parent"
        with vhdcore.open(chain / "child.vhd") as reader:  # nor is a child's chain
            assert reader.read(0, 6) == b"parent"
    finally:
        holder.stop()
    with vhdcore.open(path, "r+"):  # the lock went with the holder
        pass


def test_second_handle_in_this_process_after_the_first_closes(chain):
    path = chain / "parent.vhd"
    first = vhdcore.open(path, "r+")
    with pytest.raises(errors.LockedError):
        vhdcore.open(path, "r+")
    first.close()
    vhdcore.open(path, "r+").close()


def test_lock_is_refused_without_waiting(chain):
    import time

    holder = Holder(chain / "parent.vhd")
    try:
        started = time.monotonic()
        with pytest.raises(errors.LockedError):
            vhdcore.open(chain / "parent.vhd", "r+")
        assert time.monotonic() - started < 1
    finally:
        holder.stop()


# Each command that changes ``target`` (relative to the chain fixture's
# directory), with its argv.
CHANGERS = [
    ("commit", "parent.vhd", ["commit", "{dir}/child.vhd"]),
    ("resize", "parent.vhd", ["resize", "{dir}/parent.vhd", "8M"]),
    ("compact", "parent.vhd", ["compact", "{dir}/parent.vhd"]),
    ("repair", "parent.vhd", ["repair", "{dir}/parent.vhd"]),
    ("rebase", "child.vhd", ["rebase", "{dir}/child.vhd", "{dir}/parent.vhd"]),
]


@pytest.mark.parametrize("command, target, argv", CHANGERS, ids=[c[0] for c in CHANGERS])
def test_changing_commands_fail_clearly_on_a_locked_image(chain, cli, command, target, argv):
    if command == "repair":
        _damage_copy(chain / target)  # something for repair to do
    before = {p.name: _digest(p) for p in chain.iterdir()}
    holder = Holder(chain / target)
    try:
        code, out, err = cli(*[a.format(dir=chain) for a in argv])
    finally:
        holder.stop()
    assert code != 0, out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "open for writing by another" in lines[0] and target in lines[0], lines[0]
    assert {p.name: _digest(p) for p in chain.iterdir()} == before


def _damage_copy(path):
    """Flip a byte of the footer copy at offset 0: the primary still opens."""
    with open(path, "r+b") as f:
        f.seek(70)
        byte = f.read(1)
        f.seek(70)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("command", ["commit", "resize", "compact", "repair"])
def test_library_calls_raise_locked_error(chain, command):
    if command == "repair":
        _damage_copy(chain / "parent.vhd")
    with vhdcore.open(chain / "parent.vhd", "r+"):
        with pytest.raises(errors.LockedError):
            if command == "commit":
                commit.commit(chain / "child.vhd")
            elif command == "resize":
                resize.resize(chain / "parent.vhd", 8 * MiB)
            elif command == "compact":
                compact.compact(chain / "parent.vhd")
            else:
                repair.repair(chain / "parent.vhd")


def test_readers_of_a_locked_image_work(chain, cli):
    holder = Holder(chain / "parent.vhd")
    try:
        code, _out, err = cli("info", chain / "parent.vhd")
        assert code == 0, err
        code, _out, err = cli("check", chain / "parent.vhd")
        assert code in (0, 3), err
    finally:
        holder.stop()


def test_convert_refuses_a_source_being_written(chain, cli):
    """A conversion of an image another process is writing would copy a torn state:
    conversions read their source under a shared lock, refused while a writer holds it."""
    holder = Holder(chain / "child.vhd")
    try:
        code, _out, err = cli("convert", chain / "child.vhd", chain / "out.raw")
    finally:
        holder.stop()
    assert code != 0, "converted an image while another process held it for writing"
    assert len(err.strip().splitlines()) == 1 and "child.vhd" in err
    assert not (chain / "out.raw").exists()


def test_convert_destination_locked_by_a_writer(chain, cli):
    """--force over an image another process is writing is refused, not replaced."""
    before = _digest(chain / "parent.vhd")
    holder = Holder(chain / "parent.vhd")
    try:
        code, _out, _err = cli("convert", "--force", chain / "child.vhd", chain / "parent.vhd")
    finally:
        holder.stop()
    assert code != 0
    assert _digest(chain / "parent.vhd") == before
