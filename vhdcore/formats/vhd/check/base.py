"""The checker's shared state and limits: what every rule set builds on."""

from __future__ import annotations

from typing import Sequence

from ....errors import CorruptImageError
from ....problems import Problem
from ..bat import MAX_REPORTED  # noqa: F401 - one cap for check and open
from .report import CheckReport

#: Unaccounted gaps smaller than this are alignment padding, not leaks:
#: blktap aligns each block's data to 4 KiB, leaving up to 3.5 KiB between
#: one block's end and the next block's bitmap.
MIN_LEAK = 4096

#: How far back from the end a fixed disk's footer is searched for when
#: the last sector is not one (trailing bytes appended after it).
FIXED_FOOTER_SEARCH = 1 << 20

#: The BAT is read only when it is at most this large (memory bound:
#: 64 Mi entries; a 2040 GiB disk in 2 MiB blocks needs 1,044,480).
MAX_CHECK_BAT_BYTES = 256 << 20

#: ``deep`` reads data in pieces of this size (streaming, bounded memory).
DEEP_CHUNK = 1 << 20

# tapdisk overwrites the footer with this while open.
_KILLED_BYTE = 0xC7

# Entries per pass of the block-order scan (256 KiB of uint32: cache-sized).
_ORDER_CHUNK = 1 << 16


def _is_all(data: bytes, value: int) -> bool:
    return len(data) > 0 and data.count(value) == len(data)


class _Stop(Exception):
    """Internal: checking cannot go on; the reason is in the report."""


class CheckerBase:
    """What every rule set of a check shares: the file, the report, and how
    findings are added."""

    def __init__(self, path: str, image_file, *, now: float, deep: bool):
        self.path = path
        self.f = image_file
        self.now = now
        self.report = CheckReport(path=path, deep=deep)
        self._pending_primary = None
        self.copy_raw = None

    def add(self, code, message, severity="error", offset=None, error=CorruptImageError):
        self.report.problems.append(
            Problem(code, f"{self.path}: {message}", severity, offset, error)
        )

    def extend(self, problems: Sequence[Problem]) -> None:
        self.report.problems.extend(problems)

    def stop(self, reason: str) -> None:
        self.report.stopped = reason
        raise _Stop(reason)

    def read(self, offset: int, length: int, what: str) -> bytes:
        return self.f.pread(offset, length, what)
