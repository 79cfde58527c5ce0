"""Simulated crashes, power loss, short writes, ENOSPC and EIO (vhdcore.faults).

Each workload runs once under a counting plan to learn its mutating
operations (writes, flushes, truncates); then, for every N, it runs again
and "dies" right after operation N. What is left must:

* open (read-only and for writing) without repair,
* pass the open-time validation and check with no error (leaked space is
  allowed),
* read back every byte acknowledged by a completed ``flush()`` unchanged,
  and show each unacknowledged byte either old or new, never anything
  else. After a *process* crash (no power loss) the stronger property
  holds and is tested: every ``write()`` that returned reads back, because
  the page cache keeps it.

Short writes, ENOSPC and EIO are injected at every operation of the same
workloads: the call fails with an ``OSError`` naming the file and the
errno (the CLI prints it as one line), the image stays consistent and
usable by the same handle, and a conversion leaves no destination and no
temporary file.

Run it longer (longer workloads, every failure kind at every operation,
three power-loss seeds per crash point) with
``VHDCORE_FAULT_STEPS=60 VHDCORE_FAULT_FULL=1 python -m pytest tests/test_faults.py``.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid as uuidlib
import warnings

import numpy as np
import pytest

import vhdcore
from vhdcore.formats.vhd import check, commit, compact, repair, resize
from vhdcore.formats.vhd.image import VHDWarning
from vhdcore.ops.convert import convert
from vhdcore.testing import faults, samples
from vhdcore.testing.faults import SimulatedCrash

KiB = 1024
MiB = 1024 * KiB
STEPS = int(os.environ.get("VHDCORE_FAULT_STEPS", "14"))
FULL = bool(os.environ.get("VHDCORE_FAULT_FULL"))
SEEDS = 3 if FULL else 1
FIXED_UUID = uuidlib.UUID("12345678-1234-5678-1234-567812345678")


# ---------------------------------------------------------------------------
# workloads: a list of steps, run against a model


def make_steps(seed, size, count=STEPS, flush_every=3, max_len=150 * KiB):
    """Deterministic writes (unaligned, block-straddling, zero, overwrites) and flushes."""
    rng = np.random.default_rng(seed)
    steps = []
    for i in range(count):
        kind = rng.integers(0, 10)
        length = int(rng.integers(1, max_len))
        if kind < 2:
            length = int(rng.integers(1, 4)) * 512  # small aligned
        offset = int(rng.integers(0, size - length))
        if kind == 3:
            offset -= offset % 512
        if kind == 4:
            data = bytes(length)  # zeros: may skip allocation
        else:
            data = rng.integers(1, 256, length, dtype=np.uint8).tobytes()
        steps.append(("write", offset, data))
        if (i + 1) % flush_every == 0:
            steps.append(("flush",))
    steps.append(("flush",))
    return steps


class Log:
    """What the workload completed before it died."""

    def __init__(self, base: bytes):
        self.base = base
        self.done = []  # completed steps, in order
        self.current = None  # the step in progress

    def expectations(self):
        """(durable, pending writes, completed writes after the last flush)."""
        durable = bytearray(self.base)
        last_flush = max((i for i, s in enumerate(self.done) if s[0] == "flush"), default=-1)
        for step in self.done[: last_flush + 1]:
            if step[0] == "write":
                durable[step[1] : step[1] + len(step[2])] = step[2]
        after = [s for s in self.done[last_flush + 1 :] if s[0] == "write"]
        pending = list(after)
        if self.current is not None and self.current[0] == "write":
            pending.append(self.current)
        return bytes(durable), pending, after


def run_steps(image, steps, log):
    for step in steps:
        log.current = step
        if step[0] == "write":
            image.write(step[1], step[2])
        else:
            image.flush()
        log.done.append(step)
        log.current = None


def assert_old_or_new(actual: bytes, log: Log, process_crash: bool, where: str):
    durable, pending, completed = log.expectations()
    got = np.frombuffer(actual, dtype=np.uint8)
    if process_crash:
        # The page cache survives a process crash: completed writes stay.
        model = bytearray(durable)
        for _, offset, data in completed:
            model[offset : offset + len(data)] = data
        pending = [log.current] if log.current and log.current[0] == "write" else []
        durable = bytes(model)
    allowed = got == np.frombuffer(durable, dtype=np.uint8)
    for _, offset, data in pending:
        span = slice(offset, offset + len(data))
        allowed[span] |= got[span] == np.frombuffer(data, dtype=np.uint8)
    if not allowed.all():
        bad = np.flatnonzero(~allowed)
        first = int(bad[0])
        raise AssertionError(
            f"{where}: {len(bad)} bytes are neither acknowledged nor pending data; first at "
            f"{first}: got {got[first]}, durable {durable[first]}"
        )


def assert_consistent(path, size, *, allow_parent_dirs=()):
    """The image opens, validates, checks clean (leaks allowed) and is writable."""
    with vhdcore.open(path, allow_parent_dirs=allow_parent_dirs) as image:
        assert image.virtual_size == size
        data = image.read(0, size)
        # The allocation map and the reads agree.
        rebuilt = bytearray(size)
        for extent in image.extents():
            if extent.state != "zero":
                member = image.chain[extent.depth]
                rebuilt[extent.offset : extent.end] = member._file.pread(
                    extent.file_offset, extent.length
                )
        assert bytes(rebuilt) == data
    report = check.check(path, allow_parent_dirs=allow_parent_dirs)
    assert not report.errors, f"{path}: check found {report.errors}"
    # Still usable for writing: the lock, footer and allocation point are sane.
    with vhdcore.open(path, "r+", allow_parent_dirs=allow_parent_dirs) as image:
        image.write(size - 512, b"\xa5" * 512)
        image.flush()
    with vhdcore.open(path, allow_parent_dirs=allow_parent_dirs) as image:
        assert image.read(size - 512, 512) == b"\xa5" * 512
        assert image.read(0, size - 512) == data[: size - 512]
    return data


# ---------------------------------------------------------------------------
# images to work on


def build(tmp, kind):
    """A pristine image of ``kind`` in ``tmp``; returns (path, size, base content, dirs)."""
    size = 1 * MiB
    rng = np.random.default_rng(7)
    if kind == "fixed":
        path = tmp / "fixed.vhd"
        with vhdcore.create(path, size, type="fixed", uuid=FIXED_UUID, timestamp=0) as image:
            image.write(4096, b"fixed!" * 100)
        base = bytearray(size)
        base[4096 : 4096 + 600] = b"fixed!" * 100
        return path, size, bytes(base)
    if kind == "dynamic":
        path = tmp / "dynamic.vhd"
        with vhdcore.create(path, size, block_size=64 * KiB, timestamp=0) as image:
            image.write(70 * KiB, b"seed" * 1000)
        base = bytearray(size)
        base[70 * KiB : 70 * KiB + 4000] = b"seed" * 1000
        return path, size, bytes(base)
    if kind == "differencing":
        parent = tmp / "parent.vhd"
        base = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        with vhdcore.create(parent, size, block_size=64 * KiB, timestamp=0) as image:
            image.write(0, base)
        path = tmp / "child.vhd"
        with vhdcore.create(path, parent=parent, timestamp=0) as image:
            image.write(200 * KiB, b"child" * 100)
        merged = bytearray(base)
        merged[200 * KiB : 200 * KiB + 500] = b"child" * 100
        return path, size, bytes(merged)
    raise AssertionError(kind)


def snapshot(tmp, kind):
    """Copy the pristine images of ``kind`` into a fresh directory (cheap resets)."""
    src = tmp / f"pristine-{kind}"
    if not src.exists():
        src.mkdir()
        built = build(src, kind)
        snapshot.cache[kind] = built
    path, size, base = snapshot.cache[kind]
    work = tmp / "work"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(src, work)
    return work / path.name, size, base


snapshot.cache = {}


# ---------------------------------------------------------------------------
# crash at every operation of a write workload


def crash_points(tmp_path, kind, steps):
    path, _, _ = snapshot(tmp_path, kind)

    def workload():
        with vhdcore.open(path, "r+") as image:
            run_steps(image, steps, Log(b""))

    plan = faults.count(workload)
    return len(plan.ops), plan


def crash_and_verify(tmp_path, kind, steps, n, power_loss=None, tear=False, seed=0):
    """Crash after operation ``n``; returns "clean" or "footer-lost" (see below)."""
    path, size, base = snapshot(tmp_path, kind)
    log = Log(base)
    with faults.inject(crash_after=n, power_loss=power_loss, tear=tear, seed=seed) as plan:
        with pytest.raises(SimulatedCrash):
            with vhdcore.open(path, "r+") as image:
                run_steps(image, steps, log)
    assert plan.crashed
    where = f"{kind} crash after op {n} ({plan.ops[-1][0]}) power_loss={power_loss} tear={tear}"
    outcome = "clean"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with vhdcore.open(path) as image:
            actual = image.read(0, size)
    if caught:
        # Only the random power-loss model can get here: the file grew (the
        # size reached the disk) but the page holding the new footer did
        # not. The copy at offset 0 still describes the image, reads work,
        # and 'vhdcore repair' puts the footer back.
        assert power_loss == "random", f"{where}: {[str(w.message) for w in caught]}"
        assert all(issubclass(w.category, VHDWarning) for w in caught)
        assert all("primary footer damaged" in str(w.message) for w in caught)
        outcome = "footer-lost"
    assert_old_or_new(actual, log, process_crash=power_loss is None, where=where)
    if outcome == "clean":
        assert_consistent(path, size)
    else:
        repair.repair(path)
        assert_consistent(path, size)
    return outcome


@pytest.mark.parametrize("kind", ["dynamic", "differencing", "fixed"])
def test_crash_after_every_operation(tmp_path, kind):
    steps = make_steps(11, MiB)
    total, _plan = crash_points(tmp_path, kind, steps)
    assert total >= len(steps)
    for n in range(1, total + 1):
        crash_and_verify(tmp_path, kind, steps, n)


@pytest.mark.parametrize("kind", ["dynamic", "differencing"])
def test_torn_write_at_every_operation(tmp_path, kind):
    steps = make_steps(12, MiB)
    _total, plan = crash_points(tmp_path, kind, steps)
    for n, op in enumerate(plan.ops, 1):
        if op[0] == "write":
            crash_and_verify(tmp_path, kind, steps, n, tear=True)


@pytest.mark.parametrize("kind", ["dynamic", "differencing", "fixed"])
def test_power_loss_drops_unsynced_writes(tmp_path, kind):
    steps = make_steps(13, MiB)
    total, _ = crash_points(tmp_path, kind, steps)
    for n in range(1, total + 1):
        crash_and_verify(tmp_path, kind, steps, n, power_loss="all")


@pytest.mark.parametrize("kind", ["dynamic", "differencing"])
def test_power_loss_keeps_random_unsynced_pages(tmp_path, kind):
    steps = make_steps(14, MiB)
    total, _ = crash_points(tmp_path, kind, steps)
    outcomes = {}
    for n in range(1, total + 1):
        for seed in range(n, n + SEEDS):
            outcome = crash_and_verify(tmp_path, kind, steps, n, power_loss="random", seed=seed)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(f"\n{kind}: random power loss at {total} points: {outcomes}")


# ---------------------------------------------------------------------------
# ENOSPC, EIO and short writes at every operation


def fail_and_verify(tmp_path, kind, steps, n, fail):
    path, size, base = snapshot(tmp_path, kind)
    model = bytearray(base)
    # Bytes of failed writes: the handle shows one of old/new (``model``),
    # the file after a reopen may show the other (``alt``).
    alt = np.zeros(size, dtype=np.uint8)
    uncertain = np.zeros(size, dtype=bool)
    failed = None
    with faults.inject(fail_at=n, fail=fail):
        image = vhdcore.open(path, "r+")
        try:
            for step in steps:
                if step[0] == "flush":
                    try:
                        image.flush()
                    except OSError as exc:
                        failed = exc
                    continue
                _, offset, data = step
                try:
                    image.write(offset, data)
                except OSError as exc:
                    failed = exc
                    # A failed write may have landed in part: the model
                    # takes whatever the image now shows for that range,
                    # which must be old or new byte by byte.
                    now = image.read(offset, len(data))
                    old = bytes(model[offset : offset + len(data)])
                    got = np.frombuffer(now, dtype=np.uint8)
                    ok = (got == np.frombuffer(old, dtype=np.uint8)) | (
                        got == np.frombuffer(data, dtype=np.uint8)
                    )
                    assert ok.all(), f"{kind} {fail} at op {n}: failed write left garbage"
                    span = slice(offset, offset + len(data))
                    model[span] = now
                    alt[span] = np.where(
                        got == np.frombuffer(data, dtype=np.uint8),
                        np.frombuffer(old, dtype=np.uint8), np.frombuffer(data, dtype=np.uint8),
                    )
                    uncertain[span] = True
                    continue
                model[offset : offset + len(data)] = data
                uncertain[offset : offset + len(data)] = False
            # The handle that saw the error goes on working.
            assert image.read(0, size) == bytes(model)
        finally:
            try:
                image.close()  # its final fsync may be the operation that fails
            except OSError as exc:
                failed = exc
    if failed is None:
        return False
    code = errno.EIO if fail == "eio" else errno.ENOSPC
    assert failed.errno == code and failed.filename == str(path), failed
    # The failed write is never retried behind the caller's back, so it may
    # show old or new bytes; every write that returned reads back, after a
    # clean reopen too.
    with vhdcore.open(path) as image:
        got = np.frombuffer(image.read(0, size), dtype=np.uint8)
    ok = (got == np.frombuffer(bytes(model), dtype=np.uint8)) | (uncertain & (got == alt))
    assert ok.all(), f"{kind} {fail} at op {n}: {np.count_nonzero(~ok)} bytes differ after reopen"
    assert_consistent(path, size)
    return True


@pytest.mark.parametrize("kind", ["dynamic", "differencing", "fixed"])
def test_failure_at_every_operation(tmp_path, kind):
    """Each operation fails once; the failure kind rotates (all three with VHDCORE_FAULT_FULL)."""
    steps = make_steps(21, MiB)
    total, _ = crash_points(tmp_path, kind, steps)
    kinds = ("enospc", "short", "eio")
    injected = 0
    for n in range(1, total + 1):
        for fail in (kinds if FULL else (kinds[n % 3],)):
            injected += fail_and_verify(tmp_path, kind, steps, n, fail)
    assert injected == total * (3 if FULL else 1)


def test_read_error_is_a_clear_oserror(tmp_path):
    path, size, _ = snapshot(tmp_path, "dynamic")
    with faults.inject(read_fail_at=3):
        with pytest.raises(OSError) as caught:
            with vhdcore.open(path) as image:
                image.read(0, size)
    assert caught.value.errno == errno.EIO and caught.value.filename == str(path)


def test_a_small_read_inside_one_block_is_seen_by_fault_injection(tmp_path):
    """The one-block fast path of VHD.readinto reads through the file object
    when it is not a plain ImageFile, so an injected EIO reaches the caller."""
    path = tmp_path / "d.vhd"
    with vhdcore.create(path, 4 << 20) as image:
        image.write(0, b"\x01" * 4096)
    with faults.inject() as plan:
        vhdcore.open(path).close()
    opening = plan.reads  # the reads that open takes; the next is the data read
    with faults.inject(read_fail_at=opening + 1):
        with vhdcore.open(path) as image:
            with pytest.raises(OSError) as caught:
                image.readinto(512, bytearray(1024))
    assert caught.value.errno == errno.EIO


def test_imagefile_finishes_short_writes(tmp_path, monkeypatch):
    """fileio.ImageFile loops over short pwrite results instead of losing bytes."""
    from vhdcore.io import imagefile as fileio

    real = os.pwrite
    calls = []

    def short(fd, data, offset):
        calls.append(len(data))
        return real(fd, memoryview(data)[: max(1, len(data) // 3)], offset)

    monkeypatch.setattr(fileio.os, "pwrite", short)
    path = tmp_path / "f"
    path.write_bytes(b"")
    with fileio.ImageFile(path, writable=True) as handle:
        handle.pwrite(10, b"abcdefghij" * 10)
    monkeypatch.undo()
    assert len(calls) > 1
    assert path.read_bytes() == bytes(10) + b"abcdefghij" * 10


def test_cli_reports_enospc_in_one_line(tmp_path, cli, monkeypatch):
    """A full disk during a command is one line on stderr, not a traceback."""
    src, _size, _ = snapshot(tmp_path, "dynamic")
    with faults.inject(fail_at=2, fail="enospc", fail_count=10**6):
        code, _out, err = cli("convert", src, tmp_path / "out.raw")
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], err
    assert not os.path.exists(tmp_path / "out.raw")
    assert not [n for n in os.listdir(tmp_path) if "vhdcore-tmp" in n]


# ---------------------------------------------------------------------------
# conversions


def _converted_ok(dst, base, fmt):
    if fmt == "raw":
        with open(dst, "rb") as f:
            return f.read() == base
    with vhdcore.open(dst) as image:
        return image.read(0, image.virtual_size)[: len(base)] == base


@pytest.mark.parametrize("fmt", ["raw", "fixed", "dynamic"])
def test_conversion_crash_and_failure_leave_no_output(tmp_path, fmt):
    src, _size, base = snapshot(tmp_path, "differencing")
    src_bytes = {p: p.read_bytes() for p in src.parent.iterdir()}
    dst = tmp_path / f"out.{fmt}"

    def run():
        convert(src, dst, out_format=fmt, block_size=64 * KiB if fmt == "dynamic" else None)

    plan = faults.count(run)
    assert _converted_ok(dst, base, fmt)
    os.unlink(dst)
    total = len(plan.ops)
    assert total >= 2
    for n in range(1, total + 1):
        for cue in ({"crash_after": n}, {"fail_at": n, "fail": "enospc"},
                    {"fail_at": n, "fail": "short"}, {"fail_at": n, "fail": "eio"}):
            with faults.inject(**cue):
                with pytest.raises((SimulatedCrash, OSError)) as caught:
                    run()
            if not isinstance(caught.value, SimulatedCrash):
                assert caught.value.errno in (errno.ENOSPC, errno.EIO)
            assert not dst.exists(), f"{fmt} {cue}: half-written destination"
            leftovers = [n for n in os.listdir(tmp_path) if "vhdcore-tmp" in n]
            assert not leftovers, f"{fmt} {cue}: left {leftovers}"
    # The source was only read.
    assert {p: p.read_bytes() for p in src.parent.iterdir()} == src_bytes


# ---------------------------------------------------------------------------
# maintenance operations: crash at every operation, then rerun


def _chain_dir(tmp_path):
    """A parent (dynamic, 64 KiB blocks, some data) and a child holding many runs."""
    src = tmp_path / "pristine-chain"
    if not src.exists():
        src.mkdir()
        rng = np.random.default_rng(5)
        with vhdcore.create(src / "parent.vhd", MiB, block_size=64 * KiB, timestamp=0) as p:
            p.write(0, rng.integers(1, 256, 300 * KiB, dtype=np.uint8).tobytes())
        with vhdcore.create(src / "child.vhd", parent=src / "parent.vhd", timestamp=0) as c:
            for offset, length in ((1000, 5000), (250 * KiB, 100 * KiB), (700 * KiB, 3 * 512),
                                   (1020 * KiB, 4 * KiB)):
                c.write(offset, rng.integers(1, 256, length, dtype=np.uint8).tobytes())
    work = tmp_path / "work"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(src, work)
    return work


def _content(path):
    with vhdcore.open(path) as image:
        return image.read(0, image.virtual_size)


def _every_crash(tmp_path, prepare, operation, verify, power_loss=None):
    """Count ``operation``'s I/O, then crash after each operation and ``verify``."""
    work = prepare(tmp_path)
    plan = faults.count(operation, work)
    total = len(plan.ops)
    assert total >= 2
    for n in range(1, total + 1):
        work = prepare(tmp_path)
        with faults.inject(crash_after=n, power_loss=power_loss):
            with pytest.raises(SimulatedCrash):
                operation(work)
        verify(work, n)
    return total


@pytest.mark.parametrize("power_loss", [None, "all"])
def test_commit_crash_at_every_operation(tmp_path, power_loss):
    work = _chain_dir(tmp_path)
    child_bytes = (work / "child.vhd").read_bytes()
    old_parent = _content(work / "parent.vhd")
    wanted = _content(work / "child.vhd")

    def verify(work, n):
        assert (work / "child.vhd").read_bytes() == child_bytes, f"op {n}: child changed"
        got = np.frombuffer(_content(work / "parent.vhd"), dtype=np.uint8)
        ok = (got == np.frombuffer(old_parent, dtype=np.uint8)) | (
            got == np.frombuffer(wanted, dtype=np.uint8))
        assert ok.all(), f"commit crash after op {n}: parent holds other bytes"
        assert_consistent(work / "parent.vhd", MiB)
        commit.commit(work / "child.vhd")  # the rerun completes the job
        assert _content(work / "parent.vhd")[: MiB - 512] == wanted[: MiB - 512]

    _every_crash(tmp_path, _chain_dir, lambda w: commit.commit(w / "child.vhd"), verify,
                 power_loss)


MISMATCH_WINDOWS = []


@pytest.mark.parametrize("power_loss", [None, "all"])
@pytest.mark.parametrize("new_size", [10 * MiB + 512, MiB // 2])
def test_resize_crash_at_every_operation(tmp_path, new_size, power_loss):
    work = _chain_dir(tmp_path)
    before = _content(work / "parent.vhd")
    keep = min(MiB, new_size)

    def operation(work):
        resize.resize(work / "parent.vhd", new_size, force=True)

    def verify(work, n):
        with vhdcore.open(work / "parent.vhd") as image:
            assert image.virtual_size in (MiB, new_size), f"op {n}: size {image.virtual_size}"
            size = image.virtual_size
            assert image.read(0, keep) == before[:keep], f"resize crash after op {n}"
        report = check.check(work / "parent.vhd")
        # VHD.store_footer writes the primary footer, then the copy at
        # offset 0; a crash between the two leaves a copy with the old
        # size, which check reports as a warning (footer.copy_stale) and
        # repair (or a rerun of resize) brings up to date.
        assert not report.errors, f"resize crash after op {n}: {report.errors}"
        if any(p.code == "footer.copy_stale" for p in report.problems):
            MISMATCH_WINDOWS.append(n)
        operation(work)
        with vhdcore.open(work / "parent.vhd") as image:
            assert image.virtual_size == new_size
            assert image.read(0, keep) == before[:keep]
            if new_size > MiB:
                assert image.read(MiB, new_size - MiB) == bytes(new_size - MiB)
        del size

    _every_crash(tmp_path, _chain_dir, operation, verify, power_loss)


@pytest.mark.parametrize("power_loss", [None, "all"])
def test_compact_crash_at_every_operation(tmp_path, power_loss):
    def prepare(tmp_path):
        work = _chain_dir(tmp_path)
        with vhdcore.open(work / "parent.vhd", "r+") as image:
            image.write(64 * KiB, bytes(64 * KiB))  # an allocated all-zero block
            image.write(900 * KiB, b"late" * 100)  # a block after it, to move down
            image.write(900 * KiB, bytes(400))  # ... and zero again
            image.write(960 * KiB, b"kept" * 100)
        return work

    work = prepare(tmp_path)
    before = _content(work / "parent.vhd")

    def operation(work):
        compact.compact(work / "parent.vhd")

    def verify(work, n):
        assert _content(work / "parent.vhd") == before, f"compact crash after op {n}"
        assert_consistent(work / "parent.vhd", MiB)
        operation(work)
        assert _content(work / "parent.vhd")[: MiB - 512] == before[: MiB - 512]

    _every_crash(tmp_path, prepare, operation, verify, power_loss)


@pytest.mark.parametrize("power_loss", [None, "all"])
def test_compact_slide_crash_at_every_operation(tmp_path, power_loss):
    """Closing a hole smaller than a block: blocks go to the end, then every block slides."""

    def prepare(tmp_path):
        src = tmp_path / "pristine-room"
        if not src.exists():
            src.mkdir()
            rng = np.random.default_rng(7)
            with vhdcore.create(src / "d.vhd", MiB, block_size=64 * KiB, timestamp=0) as image:
                for block in range(12):
                    image.write(block * 64 * KiB + 512, rng.integers(
                        1, 256, 3000, dtype=np.uint8).tobytes())
            # the BAT grows by a sector: the first block moves out, leaving
            # table room a block cannot fit in
            resize.resize(src / "d.vhd", 16 * MiB)
        work = tmp_path / "work"
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(src, work)
        return work

    work = prepare(tmp_path)
    before = _content(work / "d.vhd")
    assert check.check(work / "d.vhd").counts["table_room"] > 0

    def operation(work):
        compact.compact(work / "d.vhd")

    def verify(work, n):
        assert _content(work / "d.vhd") == before, f"compact crash after op {n}"
        assert_consistent(work / "d.vhd", 16 * MiB)
        operation(work)  # (assert_consistent wrote the last sector)
        assert _content(work / "d.vhd")[:-512] == before[:-512]
        report = check.check(work / "d.vhd")
        assert report.exit_code == 0 and report.counts["table_room"] == 0, report.codes

    total = _every_crash(tmp_path, prepare, operation, verify, power_loss)
    assert total > 24  # twelve blocks moved, some twice


REPAIRABLE = ["footer_bad_checksum", "footer_copy_missing", "footer_missing_truncated",
              "footer_killed", "header_bad_checksum", "trailing_garbage", "bat_entry_past_eof",
              "footer_copy_size_mismatch"]


@pytest.mark.parametrize("name", REPAIRABLE)
def test_repair_crash_at_every_operation(tmp_path, name):
    """After a crash inside repair, running repair again finishes the job."""
    pristine = tmp_path / "pristine-repair"
    sample = samples.generate(name, pristine)
    force = sample.repair == "force"

    def prepare(tmp_path):
        work = tmp_path / "work"
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(pristine, work)
        return work

    def operation(work):
        repair.repair(work / sample.path.name, force=force)

    def verify(work, n):
        path = work / sample.path.name
        for leftover in work.iterdir():  # repair's backups and temporaries aside
            assert leftover.name.startswith(sample.path.name) or leftover.name.endswith(".vhd")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VHDWarning)
            operation(work)  # the rerun
        report = check.check(path, **dict(sample.check_options))
        assert not report.errors, f"{name}: crash after op {n}, rerun left {report.errors}"
        if sample.content_kept and sample.content:
            assert samples.content_digest(path) == sample.content, f"{name} op {n}"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VHDWarning)
        _every_crash(tmp_path, prepare, operation, verify)


# ---------------------------------------------------------------------------
# regressions for what these tests found in the engine (vhdcore/formats/vhd/image.py)


def _op_numbers(plan, kind="write"):
    return [n for n, op in enumerate(plan.ops, 1) if op[0] == kind]


def test_failed_bitmap_write_is_not_believed_by_the_handle(tmp_path):
    """The cached bitmap used to change before its write: a later write of the same
    sectors then skipped the bitmap and was lost on reopen."""
    path, _size, base = snapshot(tmp_path, "differencing")
    offset = 512 * KiB  # an unallocated block of the child
    with faults.inject() as plan:
        with vhdcore.open(path, "r+") as image:
            image.write(offset, b"1" * 512)
    bitmap_write = _op_numbers(plan)[-1]  # allocation, data, then the bitmap
    assert plan.ops[bitmap_write - 1][3] == 512
    path, _size, base = snapshot(tmp_path, "differencing")
    with faults.inject(fail_at=bitmap_write, fail="eio"):
        with vhdcore.open(path, "r+") as image:
            with pytest.raises(OSError):
                image.write(offset, b"1" * 512)
            assert image.read(offset, 512) == base[offset : offset + 512]
            image.write(offset, b"2" * 512)
    with vhdcore.open(path) as image:
        assert image.read(offset, 512) == b"2" * 512


def test_short_footer_write_while_allocating_leaves_the_old_footer_at_the_end(tmp_path):
    """A disk that fills inside the new footer used to leave a torn footer at EOF."""
    path, size, _base = snapshot(tmp_path, "dynamic")
    before = path.stat().st_size
    with faults.inject(fail_at=1, fail="short", fail_count=1):
        with vhdcore.open(path, "r+") as image:
            with pytest.raises(OSError):
                image.write(512 * KiB, b"x" * 100)
    assert path.stat().st_size == before
    assert_consistent(path, size)


def test_differencing_bits_are_set_only_after_a_barrier(tmp_path):
    """W1 step 6: the data a new bit points at is fsynced before the bit is written."""
    path, _size, _base = snapshot(tmp_path, "differencing")
    with faults.inject() as plan:
        with vhdcore.open(path, "r+") as image:
            image.write(200 * KiB + 512 * 3, b"y" * 512)  # allocated block, new sector
    kinds = [op[0] for op in plan.ops]
    # data write, barrier, bitmap write (then the close's fsync)
    assert kinds[:3] == ["write", "flush", "write"], kinds
