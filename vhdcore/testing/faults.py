"""Fault injection under :mod:`vhdcore.io.imagefile`: crashes, power loss, ENOSPC, EIO.

Every image file vhdcore touches is opened through
:data:`vhdcore.io.imagefile.FILE_FACTORY`. :func:`inject` swaps in
:class:`FaultyImageFile`, a subclass of :class:`~vhdcore.io.imagefile.ImageFile`
that counts the mutating operations (``write``, ``flush``, ``truncate``) of
every file opened while it is installed, in one sequence, and acts on cue:

* ``crash_after=N``: the N-th mutating operation (1-based) is carried out,
  then :class:`SimulatedCrash` is raised. From then on the "process is
  dead": every descriptor opened through the factory is closed (which also
  drops their ``flock``), any later operation on those handles raises
  :class:`SimulatedCrash` again, and so does opening another file.
  ``SimulatedCrash`` derives from ``BaseException`` so that the engine's
  ``except Exception``/``except VHDError`` handlers cannot swallow it, as
  they could not swallow a real ``SIGKILL``. (``finally`` blocks and
  ``except BaseException`` clean-ups still run; they can remove temporary
  files with plain ``os`` calls, which a real kill would not. The real
  ``kill -9`` tests cover that difference.)
* ``tear=True`` with ``crash_after``: when the fatal operation is a write,
  only its first half (rounded down to a 512-byte sector, possibly
  nothing) reaches the file, as when the process dies inside a large
  ``pwrite``.
* ``power_loss="all"`` or ``"random"`` with ``crash_after``: also simulate
  the machine losing power at the crash. See "The page-cache model" below.
* ``fail_at=N`` with ``fail="enospc" | "eio" | "short"``: the N-th mutating
  operation fails with ``OSError``: ``ENOSPC`` or ``EIO`` before any byte is
  written, or (``"short"``) a write of which only the first half lands
  before the device reports ``ENOSPC``, which is what a caller of
  ``pwrite(2)`` sees when a disk fills mid-write. ``fail_count`` makes the
  following operations fail the same way (a full disk stays full). The
  process lives on: later operations succeed once the count is used up.
* ``read_fail_at=N``: the N-th ``pread``/``preadinto`` raises ``EIO``.

Only operations that pass through the file object are seen: files that a
module creates with plain ``os`` calls (``vhdcore.create`` builds new
images that way) are outside the model. The engine's fast paths
(``os.preadv``, ``copy_file_range``) are taken for plain ImageFiles only,
so a :class:`FaultyImageFile` sees those reads too.

The page-cache model (power loss)
---------------------------------
Without power loss a crash keeps every completed write, as the kernel's
page cache does when a process dies. With power loss, what reaches the
disk is decided per file (per inode) and per 4 KiB page:

* ``fsync`` (``ImageFile.flush``) makes the file's whole current content and
  size durable;
* every page written or truncated away since that file's last fsync is
  "dirty"; at the crash, ``"all"`` reverts every dirty page and the file
  size to their state at the last fsync (the pessimistic case: nothing
  unsynced survives), and ``"random"`` (seeded by ``seed``) keeps or reverts
  each dirty page independently and keeps either the old or the new file
  size, so any subset of unsynced pages may survive, in any order. A kept
  page holds its latest content; pages never tear inside themselves.

Directory entries (create, rename, unlink) are not modelled: they are
taken as durable at once.

Example::

    with faults.inject(crash_after=7) as plan:
        try:
            workload()
        except faults.SimulatedCrash:
            pass
    assert plan.crashed

``count()`` runs nothing special: it only records the operations, so a
test can learn how many crash points a workload has.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..io import imagefile as fileio

__all__ = [
    "SimulatedCrash",
    "FaultPlan",
    "FaultyImageFile",
    "inject",
    "count",
    "PAGE_SIZE",
]

#: Granularity of the power-loss model.
PAGE_SIZE = 4096

_FAILURES = ("enospc", "eio", "short")
_POWER = (None, "none", "all", "random")


class SimulatedCrash(BaseException):
    """The simulated process died here (raised by the fault layer only)."""


@dataclass
class _Dirty:
    """What an inode looked like at its last fsync, for the pages changed since."""

    path: str
    synced_size: int
    pages: Dict[int, bytes] = field(default_factory=dict)  # page index -> content at sync


@dataclass
class FaultPlan:
    """What to inject, and what happened.

    Attributes:
        crash_after, tear, power_loss, seed, fail_at, fail, fail_count,
        read_fail_at: the cues (see the module docstring).
        ops: mutating operations seen so far, as ``(kind, path, offset,
            length)`` with kind ``"write"``, ``"flush"`` or ``"truncate"``.
        reads: reads seen so far.
        crashed: the simulated crash has happened.
        failures: ``OSError``s injected.
        files: every handle opened while the plan was installed.
    """

    crash_after: Optional[int] = None
    tear: bool = False
    power_loss: Optional[str] = None
    seed: int = 0
    fail_at: Optional[int] = None
    fail: str = "enospc"
    fail_count: int = 1
    read_fail_at: Optional[int] = None
    ops: List[Tuple[str, str, int, int]] = field(default_factory=list)
    reads: int = 0
    crashed: bool = False
    failures: int = 0
    files: List["FaultyImageFile"] = field(default_factory=list)
    _dirty: Dict[Tuple[int, int], _Dirty] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.fail not in _FAILURES:
            raise ValueError(f"fail must be one of {_FAILURES}, not {self.fail!r}")
        if self.power_loss not in _POWER:
            raise ValueError(f"power_loss must be one of {_POWER}, not {self.power_loss!r}")
        if self.power_loss == "none":
            self.power_loss = None

    # -- counters ----------------------------------------------------------

    @property
    def writes(self) -> int:
        return sum(1 for op in self.ops if op[0] == "write")

    @property
    def flushes(self) -> int:
        return sum(1 for op in self.ops if op[0] == "flush")

    @property
    def truncates(self) -> int:
        return sum(1 for op in self.ops if op[0] == "truncate")

    # -- the cues ------------------------------------------------------------

    def _next(self, kind, path, offset, length) -> Tuple[int, Optional[str], bool]:
        """Record an operation; returns (its number, failure to inject, crash after it)."""
        self.ops.append((kind, path, offset, length))
        number = len(self.ops)
        failure = None
        if self.fail_at is not None and self.fail_at <= number < self.fail_at + self.fail_count:
            failure = self.fail
            if failure == "short" and kind != "write":
                failure = "enospc"
        crash = self.crash_after is not None and number == self.crash_after
        return number, failure, crash

    def _die(self) -> None:
        """The process dies: lose power if asked, close every descriptor."""
        self.crashed = True
        if self.power_loss:
            self._lose_power()
        for handle in self.files:
            handle._kill()
        raise SimulatedCrash(f"simulated crash after operation {len(self.ops)}")

    # -- the page-cache model -----------------------------------------------

    def _track(self, handle, start, end) -> None:
        """Remember the pre-change content of the pages in ``[start, end)``."""
        if not self.power_loss or end <= start:
            return
        st = os.fstat(handle.fd)
        key = (st.st_dev, st.st_ino)
        dirty = self._dirty.get(key)
        if dirty is None:
            dirty = self._dirty[key] = _Dirty(handle.path, st.st_size)
        for page in range(start // PAGE_SIZE, (end - 1) // PAGE_SIZE + 1):
            if page not in dirty.pages:
                at = page * PAGE_SIZE
                dirty.pages[page] = os.pread(handle.fd, PAGE_SIZE, at)

    def _synced(self, handle) -> None:
        if not self.power_loss:
            return
        st = os.fstat(handle.fd)
        self._dirty.pop((st.st_dev, st.st_ino), None)

    def _lose_power(self) -> None:
        rng = random.Random(self.seed)
        for dirty in self._dirty.values():
            try:
                fd = os.open(dirty.path, os.O_RDWR)
            except OSError:  # pragma: no cover - renamed away: not modelled
                continue
            try:
                now = os.fstat(fd).st_size
                if self.power_loss == "all":
                    keep_size, keep = False, set()
                else:
                    keep_size = rng.random() < 0.5
                    keep = {p for p in sorted(dirty.pages) if rng.random() < 0.5}
                size = now if keep_size else dirty.synced_size
                # Pages beyond the surviving size vanish with it; a page
                # inside it whose new content was lost shows its old bytes,
                # or zeros where the file was extended.
                for page, old in sorted(dirty.pages.items()):
                    if page in keep:
                        continue
                    at = page * PAGE_SIZE
                    if at >= size:
                        continue
                    wanted = old[: max(0, size - at)]
                    wanted += bytes(min(PAGE_SIZE, size - at) - len(wanted))
                    os.pwrite(fd, wanted, at)
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
        self._dirty.clear()


_active: Optional[FaultPlan] = None


class FaultyImageFile(fileio.ImageFile):
    """An :class:`~vhdcore.io.imagefile.ImageFile` that reports to the active :class:`FaultPlan`."""

    def __init__(self, path, writable: bool = False, create: bool = False, lock: bool = True,
                 name=None):
        plan = _active
        if plan is not None and plan.crashed:
            raise SimulatedCrash(f"{os.fspath(path)}: opened after the simulated crash")
        self.plan = plan
        self.dead = False
        super().__init__(path, writable=writable, create=create, lock=lock, name=name)
        if plan is not None:
            plan.files.append(self)

    def _kill(self) -> None:
        self.dead = True
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def _alive(self) -> None:
        if self.dead:
            raise SimulatedCrash(f"{self.path}: I/O after the simulated crash")

    # -- reads ---------------------------------------------------------------

    def _read_cue(self):
        self._alive()
        plan = self.plan
        if plan is not None:
            plan.reads += 1
            if plan.read_fail_at is not None and plan.reads == plan.read_fail_at:
                plan.failures += 1
                raise self._error(OSError(errno.EIO, os.strerror(errno.EIO)), "cannot read")

    def pread(self, offset, length, what="data"):
        self._read_cue()
        return super().pread(offset, length, what)

    def preadinto(self, offset, buffer, what="data"):
        self._read_cue()
        return super().preadinto(offset, buffer, what)

    def size(self):
        self._alive()
        return super().size()

    # -- mutations -----------------------------------------------------------

    def _fail(self, kind: str, action: str = "cannot write"):
        # The same StorageError (naming the user's file) a real failure
        # becomes in ImageFile.
        self.plan.failures += 1
        code = errno.EIO if kind == "eio" else errno.ENOSPC
        return self._error(OSError(code, os.strerror(code)), action)

    def pwrite(self, offset, data):
        self._alive()
        plan = self.plan
        if plan is None:
            return super().pwrite(offset, data)
        view = memoryview(data).cast("B")
        _number, failure, crash = plan._next("write", self.path, offset, len(view))
        if failure is not None:
            if failure == "short":
                half = len(view) // 2
                plan._track(self, offset, offset + half)
                if half:
                    super().pwrite(offset, view[:half])
            raise self._fail(failure, f"cannot write {len(view)} bytes at 0x{offset:x}")
        if crash and plan.tear:
            part = len(view) // 2 // 512 * 512
            plan._track(self, offset, offset + part)
            if part:
                super().pwrite(offset, view[:part])
            plan._die()
        plan._track(self, offset, offset + len(view))
        super().pwrite(offset, view)
        if crash:
            plan._die()

    def flush(self):
        self._alive()
        plan = self.plan
        if plan is None:
            return super().flush()
        _number, failure, crash = plan._next("flush", self.path, 0, 0)
        if failure is not None:
            raise self._fail("eio" if failure == "eio" else "enospc",
                             "cannot flush its writes to disk (fsync)")
        super().flush()
        plan._synced(self)
        if crash:
            plan._die()

    def truncate(self, size):
        self._alive()
        plan = self.plan
        if plan is None:
            return super().truncate(size)
        current = os.fstat(self.fd).st_size
        _number, failure, crash = plan._next("truncate", self.path, size, current)
        if failure is not None:
            raise self._fail(failure, f"cannot set its size to {size} bytes")
        plan._track(self, min(size, current), max(size, current))
        super().truncate(size)
        if crash:
            plan._die()

    def close(self):
        if self.dead:
            return
        super().close()


@contextlib.contextmanager
def inject(plan: Optional[FaultPlan] = None, **cues):
    """Install :class:`FaultyImageFile` as ``fileio.FILE_FACTORY`` for a block.

    Args:
        plan: a :class:`FaultPlan`; or give its cues as keywords.

    Yields:
        The plan, whose counters and ``crashed`` flag the caller inspects.
        On leaving, the previous factory is restored; handles opened inside
        stay usable (and keep reporting to the plan) unless the crash
        killed them.
    """
    global _active
    if plan is None:
        plan = FaultPlan(**cues)
    elif cues:
        raise TypeError("give either a FaultPlan or keyword cues, not both")
    previous_factory, previous_plan = fileio.FILE_FACTORY, _active
    fileio.FILE_FACTORY = FaultyImageFile
    _active = plan
    try:
        yield plan
    finally:
        fileio.FILE_FACTORY = previous_factory
        _active = previous_plan


def count(workload, *args, **kwargs) -> FaultPlan:
    """Run ``workload(*args, **kwargs)`` under a plan that injects nothing.

    Returns:
        The plan: ``len(plan.ops)`` is the number of crash points.
    """
    with inject() as plan:
        workload(*args, **kwargs)
    return plan
