"""``check``: every structural rule of a VHD, reported, never raised.

:func:`check` reads an image (read-only: not one byte changes) and returns
a :class:`CheckReport` listing every :class:`~vhdcore.problems.Problem` it
finds, graded ``error`` / ``warning`` / ``leak``, each with a stable code,
a message naming the file, the structure, the offset and the values, and
the byte offset it is about. It follows blktap's ``vhd-util check`` rules
(both footers, dynamic header, parent fields, BAT placement, batmap,
parent locators, file size) with three differences on purpose:

* it reports everything it can instead of stopping at the first finding;
  only a problem that leaves nothing to check against (no footer at all,
  no dynamic header) stops it, and the report says so (``stopped``);
* the BAT overlap test sorts (``kernels.bat_scan``) instead of comparing
  pairs, and the last partial block is checked like every other;
* leaked space (file bytes no structure accounts for, e.g. an orphan block
  left by a crash between extending the file and writing the BAT) is
  reported as in ``qemu-img check``, and ``deep`` adds the data rules
  (non-zero sectors under clear bitmap bits).

Exit codes (:attr:`CheckReport.exit_code`, as ``qemu-img check``): 0 clean
(warnings allowed), 2 corruption found, 3 only leaks, 1 could not check
(the CLI's code for an ``OSError`` such as a missing file, and for a file
that is no VHD at all: a raw disk, or another format's image, for which
:func:`check` raises :class:`~vhdcore.errors.NotVHDError` instead of
reporting the raw bytes at its end as a damaged footer).

The default check reads the footers, the header, the BAT, the batmap and
the locator payloads, nothing else, and never loops over blocks in Python:
its cost is one BAT read plus a sort.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..._backend import kernels
from ...errors import (
    ChainLoopError,
    CorruptImageError,
    FormatError,
    LimitError,
    NotVHDError,
    ParentMismatchError,
    ParentNotFoundError,
    UnsafeParentError,
    UnsupportedError,
)
from ...io.imagefile import open_image_file
from ...problems import Problem
from ...sizes import plural
from .. import probe
from . import bat as batmod
from .batmap import expects_batmap, find_batmap
from .blocksize import MIN_PORTABLE_BLOCK_SIZE
from .chain import ParentPolicy, file_identity, read_payloads, screen_candidates
from .constants import (
    BAT_UNUSED,
    DISK_DIFFERENCING,
    DISK_DYNAMIC,
    DISK_FIXED,
    DISK_TYPE_NAMES,
    DYNAMIC_COOKIE,
    DYNAMIC_HEADER_SIZE,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    KNOWN_PLATFORMS,
    LEGACY_FOOTER_SIZE,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    SECTOR_SIZE,
)
from .footer import Footer
from .header import DynamicHeader
from .layout import read_primary_footer
from .locators import candidate_paths, decode_locator

__all__ = [
    "check",
    "CheckReport",
    "Leak",
    "EXIT_CLEAN",
    "EXIT_CANNOT_CHECK",
    "EXIT_CORRUPT",
    "EXIT_LEAKS",
    "MIN_LEAK",
    "PROBLEM_CODES",
]

EXIT_CLEAN = 0
EXIT_CANNOT_CHECK = 1
EXIT_CORRUPT = 2
EXIT_LEAKS = 3

#: Unaccounted gaps smaller than this are alignment padding, not leaks:
#: blktap aligns each block's data to 4 KiB, leaving up to 3.5 KiB between
#: one block's end and the next block's bitmap.
MIN_LEAK = 4096
#: Per code, this many findings are named one by one, then summarised: a
#: table of a million bad entries must not print a million lines.
MAX_REPORTED = 16
#: How far back from the end a fixed disk's footer is searched for when
#: the last sector is not one (trailing bytes appended after it).
FIXED_FOOTER_SEARCH = 1 << 20
#: The BAT is read only when it is at most this large (memory bound:
#: 64 Mi entries; a 2040 GiB disk in 2 MiB blocks needs 1,044,480).
MAX_CHECK_BAT_BYTES = 256 << 20
#: ``deep`` reads data in pieces of this size (streaming, bounded memory).
DEEP_CHUNK = 1 << 20

#: Every code check reports, with what it means. ``footer_copy.<rule>``
#: is ``footer.<rule>`` found in the copy at offset 0. Severity is given
#: as usually reported; a few rules grade by value (e.g. a version whose
#: major number is 1 is only a warning).
PROBLEM_CODES: Dict[str, str] = {
    # the file
    "file.too_small": "error: under 511 bytes, no room for a footer (checking stops)",
    "file.size": "error: file size is neither 0 nor 511 modulo 512",
    "file.trailing_data": "error: bytes after a good footer (readers look in the last 512)",
    "file.truncated": "error: the file ends inside its metadata or blocks",
    "file.short_read": "error: the file shrank while being checked (checking stops)",
    "file.leak": "leak: at least 4 KiB that no structure accounts for",
    # footers
    "footer.cookie": "error: no 'conectix' cookie (checking stops if the copy is unusable too)",
    "footer.missing": "error: no footer at the end (cut off, or the last sector is zero)",
    "footer.killed": "error: the footer holds blktap's 0xC7 bytes (tapdisk open or crashed)",
    "footer.checksum": "error: stored checksum differs from the computed one",
    "footer.checksum_hidden": "warning: early blktap checksum that ignores the hidden flag",
    "footer.features_reserved": "warning: feature bit 0x2 (always set) is clear",
    "footer.features_unknown": "error: feature bits beyond 0x3",
    "footer.version": "error: format version not 1.0 (warning for 1.x)",
    "footer.data_offset": "error: dynamic header offset unaligned or outside the file "
                          "(warning on a fixed disk: not all ones)",
    "footer.timestamp": "warning: more than 30 minutes in the future",
    "footer.disk_type": "error: disk type not 2, 3 or 4",
    "footer.geometry": "warning: geometry above CHS(current size) (qemu force_size; vhd-util "
                       "rejects it)",
    "footer.chs_size": "warning: a CHS-sized creator whose CHS size differs from current size",
    "footer.current_size": "error: current size not a multiple of 512",
    "footer.size_limit": "error: above 2040 GiB (dynamic, differencing) or 64 TiB (fixed)",
    "footer.size_compat": "warning: fixed disk above 2040 GiB (qemu and Hyper-V refuse it)",
    "footer.file_size": "error: a fixed disk's file is not current size + 512 bytes",
    "footer.saved_state": "warning: saved state not 0 or 1",
    "footer.hidden": "warning: blktap hidden flag not 0 or 1",
    "footer.reserved": "warning: reserved bytes not zero",
    "footer.uuid": "warning: null unique id",
    "footer.legacy": "warning: a 511-byte legacy footer",
    "footer.mismatch": "error: the copy at offset 0 and the primary footer differ",
    "footer.mismatch_hidden": "warning: they differ only in blktap's hidden flag",
    "footer.copy_stale": "warning: the copy at offset 0 has an older size (an interrupted resize)",
    "footer_copy.missing": "error: no footer copy at offset 0 of a dynamic/differencing disk",
    # dynamic header
    "header.cookie": "error: no 'cxsparse' cookie (checking stops)",
    "header.checksum": "error: stored checksum differs from the computed one",
    "header.version": "error: header version not 1.0 (warning for 1.x)",
    "header.data_offset": "error: the header's own data offset is not all ones",
    "header.table_offset": "error: BAT offset unaligned or over the footer copy or header",
    "header.table_size": "error: the BAT runs past the footer (checking stops)",
    "header.block_size": "error: block size not a power of two from 512 B to 256 MiB "
                         "(checking stops)",
    "header.block_size_compat": "warning: blocks above 2 MiB (vhd-util and Hyper-V refuse) "
                                "or below 4 KiB (qemu reads the bitmap sector as data)",
    "header.max_table_entries": "error: fewer BAT entries than the virtual size needs",
    "header.reserved": "warning: reserved header fields not zero",
    "header.parent_fields": "warning: parent UUID/name/locators set on a non-differencing disk",
    "header.parent_uuid": "error: a differencing disk with a null parent UUID (a raw parent)",
    "header.parent_name": "error: a differencing disk with neither parent name nor locator",
    # BAT
    "bat.outside": "error: a block over the metadata, over the footer or past the file",
    "bat.overlap": "error: two blocks overlap (or are the same block)",
    "bat.beyond_size": "warning: entries past the virtual size are allocated",
    "bat.too_large": "error: a BAT beyond 256 MiB, not read (checking stops)",
    # blktap batmap (a hint: warnings, except a stale bit, which blktap refuses)
    "batmap.missing": "warning: a tap >= 1.2 image without its batmap",
    "batmap.cookie": "warning: no 'tdbatmap' cookie",
    "batmap.version": "warning: batmap version newer than 1.2",
    "batmap.offset": "warning: the map is misplaced (over the BAT, its header or the footer)",
    "batmap.size": "warning: the map has fewer bits than the BAT has entries",
    "batmap.checksum": "warning: map checksum differs",
    "batmap.unallocated": "error: the map marks unallocated blocks full (vhd-util check fails)",
    # parent locators and the parent
    "locator.code": "error: unknown platform code",
    "locator.unused_nonzero": "warning: an unused entry with non-zero fields",
    "locator.duplicate": "warning: a platform code used twice",
    "locator.fields": "error: zero offset, space or length in a used entry",
    "locator.space": "error: data space neither a sector count nor a multiple of 512",
    "locator.length": "error: data length larger than its space",
    "locator.offset": "error: data over the metadata or past the footer",
    "locator.decode": "warning: the payload cannot be decoded as a path",
    "locator.name_mismatch": "warning: the locator names another file than the header",
    "parent.missing": "error: no locator leads to an existing file",
    "parent.refused": "error: the parent lies outside the allowed directories or behind a link",
    "parent.invalid": "error: the parent has no valid footer",
    "parent.unreadable": "error: the parent cannot be read",
    "parent.uuid": "error: the parent's UUID is not the one the child was made from",
    # chains (--parents)
    "chain.loop": "error: the chain comes back to one of its own files",
    "chain.depth": "error: more images than the depth limit (30)",
    "chain.block_size": "warning: a parent with another block size (coalescing needs equal)",
    "chain.parent_smaller": "warning: a parent smaller than its child",
    # data (--deep)
    "data.clear_bitmap": "warning: dynamic disk with data under clear bitmap bits",
    "data.stale": "warning: differencing disk with stale data under clear bitmap bits",
}

# tapdisk overwrites the footer with this while open.
_KILLED_BYTE = 0xC7
# Entries per pass of the block-order scan (256 KiB of uint32: cache-sized).
_ORDER_CHUNK = 1 << 16

_FOOTER_FIELDS = [f.name for f in dataclasses.fields(Footer)]
# Footer fields a resize changes (besides the checksum it recomputes).
_RESIZE_FIELDS = {
    "current_size", "original_size", "geometry", "timestamp",
    "creator_app", "creator_version", "creator_os",
}


@dataclass(frozen=True)
class Leak:
    """A range of the file that no structure accounts for."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class CheckReport:
    """What :func:`check` found in one image (and, with ``parents``, its chain).

    Attributes:
        path: the image as given.
        problems: every finding in the order found.
        type: ``"fixed"``, ``"dynamic"``, ``"differencing"``, or None when
            no footer could be read.
        virtual_size: bytes of the virtual disk (by the footer's size rule).
        file_size: bytes of the file.
        counts: numbers gathered on the way (blocks, allocated blocks,
            leaked bytes, end of metadata, ...), JSON-ready.
        leaks: unaccounted ranges of at least :data:`MIN_LEAK` bytes.
        stopped: why checking stopped early, or None.
        deep: whether the data rules ran.
        parent: the parent's report when the chain was checked.
        footer_state: where the primary footer stands: ``"ok"``,
            ``"legacy"``, ``"damaged"`` (a footer with errors at the end),
            ``"killed"`` (blktap's 0xC7 bytes), ``"missing"`` (the file ends
            where the footer should start, or its last sector is zero or
            garbage), ``"trailing"`` (a good footer followed by other bytes),
            ``"truncated"`` (the file ends inside the data), or ``"none"``.
        footer_offset: where the footer is, or where it belongs.
        copy_state: ``"ok"``, ``"missing"``, ``"damaged"``, ``"mismatch"``
            for dynamic and differencing disks; None for fixed ones.
    """

    path: str
    problems: List[Problem] = field(default_factory=list)
    type: Optional[str] = None
    virtual_size: Optional[int] = None
    file_size: int = 0
    counts: Dict[str, int] = field(default_factory=dict)
    leaks: List[Leak] = field(default_factory=list)
    stopped: Optional[str] = None
    deep: bool = False
    parent: Optional["CheckReport"] = None
    footer_state: str = "none"
    footer_offset: Optional[int] = None
    copy_state: Optional[str] = None
    parent_path: Optional[str] = None
    # What repair needs, not part of the JSON report.
    footer: Optional[Footer] = field(default=None, repr=False)
    primary: Optional[Footer] = field(default=None, repr=False)
    copy: Optional[Footer] = field(default=None, repr=False)
    header: Optional[DynamicHeader] = field(default=None, repr=False)
    end_of_data: Optional[int] = field(default=None, repr=False)
    outside_entries: Optional[np.ndarray] = field(default=None, repr=False)
    overlap_entries: Optional[np.ndarray] = field(default=None, repr=False)
    bat: Optional[np.ndarray] = field(default=None, repr=False)

    # -- grading -------------------------------------------------------------

    @property
    def chain(self) -> List["CheckReport"]:
        """``[self, parent report, ...]`` (just ``[self]`` without ``parents``)."""
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    @property
    def all_problems(self) -> List[Problem]:
        """Problems of every checked chain member, leaf first."""
        return [p for member in self.chain for p in member.problems]

    @property
    def errors(self) -> List[Problem]:
        return [p for p in self.all_problems if p.severity == "error"]

    @property
    def warnings(self) -> List[Problem]:
        return [p for p in self.all_problems if p.severity == "warning"]

    @property
    def leak_problems(self) -> List[Problem]:
        return [p for p in self.all_problems if p.severity == "leak"]

    @property
    def leaked_bytes(self) -> int:
        return sum(leak.length for member in self.chain for leak in member.leaks)

    @property
    def codes(self) -> List[str]:
        """Codes of every problem of the chain, in order (duplicates kept)."""
        return [p.code for p in self.all_problems]

    @property
    def clean(self) -> bool:
        """No errors (warnings and leaks allowed)."""
        return not self.errors

    @property
    def status(self) -> str:
        """``"clean"``, ``"leaks"`` or ``"corrupt"``."""
        if self.errors:
            return "corrupt"
        if self.leak_problems:
            return "leaks"
        return "clean"

    @property
    def exit_code(self) -> int:
        """0 clean, 2 corruption found, 3 only leaks (as ``qemu-img check``)."""
        return {"clean": EXIT_CLEAN, "leaks": EXIT_LEAKS, "corrupt": EXIT_CORRUPT}[self.status]

    def to_dict(self) -> dict:
        """A JSON-ready summary (the CLI's ``--json`` output)."""
        data = {
            "filename": self.path,
            "format": "vhd",
            "type": self.type,
            "status": self.status,
            "exit_code": self.exit_code,
            "virtual_size": self.virtual_size,
            "file_size": self.file_size,
            "errors": sum(p.severity == "error" for p in self.problems),
            "warnings": sum(p.severity == "warning" for p in self.problems),
            "leaks": len(self.leaks),
            "leaked_bytes": sum(leak.length for leak in self.leaks),
            "footer": {
                "state": self.footer_state,
                "offset": self.footer_offset,
                "copy": self.copy_state,
            },
            "counts": self._counts(),
            "parent_path": self.parent_path,
            "deep": self.deep,
            "stopped": self.stopped,
            "problems": [
                {
                    "code": p.code,
                    "severity": p.severity,
                    "offset": p.offset,
                    "message": p.message,
                }
                for p in self.problems
            ],
            "leak_ranges": [{"offset": leak.offset, "length": leak.length} for leak in self.leaks],
        }
        data["parent"] = None if self.parent is None else self.parent.to_dict()
        return data

    #: The keys of ``to_dict()["counts"]``, present for every image: a
    #: count that does not apply (blocks of a fixed image, ``deep_*``
    #: without ``deep``) or was not reached (checking stopped) is ``None``.
    COUNT_KEYS = (
        "block_size", "blocks", "max_table_entries", "metadata_end", "allocated_blocks",
        "data_end", "leaked_bytes", "batmap_offset", "deep_blocks_read",
        "deep_dirty_sectors", "parent_found", "table_room",
    )

    def _counts(self) -> dict:
        counts = {**dict.fromkeys(self.COUNT_KEYS), **self.counts}
        if self.type == "differencing" and counts["parent_found"] is None:
            counts["parent_found"] = 0
        return counts


def check(
    path,
    parents: bool = False,
    deep: bool = False,
    *,
    allow_parent_dirs: Sequence = (),
    allow_symlinks: bool = False,
    max_chain_depth: Optional[int] = None,
    now: Optional[float] = None,
) -> CheckReport:
    """Check an image and report every problem found; never modifies the file.

    Args:
        path: the image.
        parents: check every member of a differencing chain fully, plus
            the chain rules (equal block sizes, parent not smaller than the
            child). Without it a differencing disk's parent is only found
            and its UUID compared.
        deep: also read every allocated block's bitmap and the data under
            clear bits (bounded per block, streaming), which must be zero.
        allow_parent_dirs, allow_symlinks, max_chain_depth: the parent
            policy, as for :func:`vhdcore.open`: parents are looked for
            only in the leaf's directory and these, never through links.
        now: Unix time to judge footer timestamps by (default: now).

    Returns:
        The :class:`CheckReport`; damaged images never raise.

    Raises:
        OSError: the image cannot be opened or read at all (missing file,
            permission, I/O error): "could not check", exit code 1.
        NotVHDError: the file shows no sign of a VHD (no footer cookie, not
            even a damaged one, at its end or at offset 0; no dynamic
            header): "could not check" too. :class:`ForeignFormatError`
            (a subclass) names the format when the magic shows one.
    """
    policy = ParentPolicy.for_leaf(
        path, allow_parent_dirs=allow_parent_dirs, allow_symlinks=allow_symlinks,
        max_depth=max_chain_depth,
    )
    return _check_member(
        os.fspath(path), parents=parents, deep=deep, policy=policy,
        now=time.time() if now is None else now, depth=0, seen=(),
    )


def _check_member(path, *, parents, deep, policy, now, depth, seen) -> CheckReport:
    with open_image_file(path) as image_file:
        checker = _Checker(path, image_file, now=now, deep=deep)
        report = checker.run()
        parent_path = None
        if report.type == "differencing" and report.header is not None and not report.stopped:
            parent_path = checker.check_parent(policy, depth, seen)
    if parents and parent_path is not None:
        own = seen + (file_identity(path),)
        try:
            parent = _check_member(
                parent_path, parents=True, deep=deep, policy=policy, now=now,
                depth=depth + 1, seen=own,
            )
        except (OSError, NotVHDError) as exc:
            report.problems.append(Problem(
                "parent.unreadable",
                f"{path}: parent {parent_path} cannot be read: "
                f"{getattr(exc, 'strerror', None) or exc}",
                "error", None, ParentNotFoundError,
            ))
        else:
            report.parent = parent
            _chain_rules(report, parent)
    return report


def _chain_rules(child: CheckReport, parent: CheckReport) -> None:
    """Rules between a child and its checked parent."""
    if child.header is not None and parent.header is not None:
        if child.header.block_size != parent.header.block_size:
            child.problems.append(Problem(
                "chain.block_size",
                f"{child.path}: block size {child.header.block_size} differs from the "
                f"parent {parent.path}'s {parent.header.block_size}; reading works, but "
                f"coalescing (vhd-util, vhdcore commit) needs equal block sizes",
                "warning", child.footer_offset, UnsupportedError,
            ))
    if child.virtual_size is not None and parent.virtual_size is not None:
        if parent.virtual_size < child.virtual_size:
            child.problems.append(Problem(
                "chain.parent_smaller",
                f"{child.path}: parent {parent.path} holds {parent.virtual_size} bytes, less "
                f"than the child's {child.virtual_size}; the child reads zeros past the "
                f"parent's end (Hyper-V refuses such chains)",
                "warning", None, CorruptImageError,
            ))


def _gap_positions(sorted_starts: np.ndarray, min_step: int) -> np.ndarray:
    """Positions ``i`` where ``sorted_starts[i + 1] - sorted_starts[i] >= min_step``.

    In chunks that stay in cache; differences of a sorted uint32 array
    cannot wrap.
    """
    found = []
    for low in range(0, len(sorted_starts) - 1, _ORDER_CHUNK):
        part = sorted_starts[low : low + _ORDER_CHUNK + 1]
        gaps = np.flatnonzero(part[1:] - part[:-1] >= min_step)
        if len(gaps):
            found.append(gaps + low)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def _is_all(data: bytes, value: int) -> bool:
    return len(data) > 0 and data.count(value) == len(data)


class _Stop(Exception):
    """Internal: checking cannot go on; the reason is in the report."""


class _Checker:
    """Checks one image file; :meth:`run` fills a :class:`CheckReport`."""

    def __init__(self, path: str, image_file, *, now: float, deep: bool):
        self.path = path
        self.f = image_file
        self.now = now
        self.report = CheckReport(path=path, deep=deep)
        self._pending_primary = None
        self.copy_raw = None

    # -- helpers -------------------------------------------------------------

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

    # -- the whole check -----------------------------------------------------

    def run(self) -> CheckReport:
        report = self.report
        try:
            report.file_size = self.size = self.f.size()
            self._locate_footer()
            footer = report.footer
            report.type = DISK_TYPE_NAMES.get(footer.disk_type)
            report.virtual_size = footer.virtual_size
            if footer.disk_type == DISK_FIXED:
                report.end_of_data = footer.current_size
                return report
            self._check_dynamic()
        except _Stop:
            pass
        except CorruptImageError as exc:
            # A short read: the file changed size while being checked.
            self.add("file.short_read", f"{exc}; checking stopped", offset=None)
            report.stopped = str(exc)
        return report

    # -- footers -------------------------------------------------------------

    def _footer_problems(self, footer: Footer, offset: int, file_size: int, copy=False):
        problems = footer.validate(self.path, offset, file_size=file_size, now=self.now)
        if footer.disk_type in (DISK_DYNAMIC, DISK_DIFFERENCING):
            # The size-modulo rule is a file rule, reported once by check.
            problems = [p for p in problems if p.code != "footer.file_size"]
        if copy:
            problems = [
                dataclasses.replace(
                    p,
                    code="footer_copy." + p.code.split(".", 1)[1],
                    message=p.message.replace(": footer ", ": footer copy ", 1),
                )
                for p in problems
            ]
        return problems

    def _locate_footer(self) -> None:
        report, size = self.report, self.size
        if size < LEGACY_FOOTER_SIZE:
            self._refuse_if_not_vhd()
            self.add(
                "file.too_small",
                f"file of {size} bytes is too small for a VHD (a footer needs 512 bytes)",
                offset=0, error=FormatError,
            )
            self.stop("no footer: the file is too small")

        # The primary: the last 512 bytes, or a legacy 511-byte footer.
        raw, primary_offset, legacy = read_primary_footer(self.read, size)
        legacy = legacy and raw[:8] == FOOTER_COOKIE
        primary = Footer.from_bytes(raw)
        cookie_ok = primary.cookie == FOOTER_COOKIE
        primary_problems = self._footer_problems(primary, primary_offset, size) if cookie_ok else []
        primary_ok = cookie_ok and not any(p.is_error for p in primary_problems)

        copy = copy_raw = None
        copy_problems: List[Problem] = []
        wants_copy = not primary_ok or primary.disk_type in (DISK_DYNAMIC, DISK_DIFFERENCING)
        if wants_copy and size >= 2 * FOOTER_SIZE:
            copy_raw = self.read(0, FOOTER_SIZE, "footer copy")
            self.copy_raw = copy_raw
            copy = Footer.from_bytes(copy_raw)
            if copy.cookie == FOOTER_COOKIE:
                copy_problems = self._footer_problems(copy, 0, size, copy=True)
        copy_usable = (
            copy is not None
            and copy.cookie == FOOTER_COOKIE
            and copy.disk_type in (DISK_DYNAMIC, DISK_DIFFERENCING)
        )
        copy_ok = copy_usable and not any(p.is_error for p in copy_problems)
        report.primary, report.copy = primary, copy

        if primary_ok:
            report.footer = primary
            report.footer_offset = primary_offset
            report.footer_state = "legacy" if legacy else "ok"
            self.extend(primary_problems)
            if legacy:
                self.add(
                    "footer.legacy",
                    f"footer at {primary_offset:#x} is a legacy 511-byte footer (before "
                    f"Virtual PC 2004); vhdcore reads it, writers append 512 bytes",
                    "warning", primary_offset,
                )
            elif size % SECTOR_SIZE:
                self.add(
                    "file.size",
                    f"file size {size} is neither 0 nor 511 modulo 512",
                    offset=size, error=FormatError,
                )
            if primary.disk_type in (DISK_DYNAMIC, DISK_DIFFERENCING):
                self._compare_copy(primary, raw, copy, copy_raw, copy_problems, primary_offset)
            return

        if copy_ok:
            # Checking goes on from the copy; where the primary stands is
            # decided once the BAT says where the data ends.
            report.footer = copy
            report.copy_state = "ok"
            self.extend(copy_problems)
            self._pending_primary = (primary, primary_offset, cookie_ok, primary_problems, raw)
            return

        # Neither footer is clean: go on from one whose cookie and type are
        # right (e.g. both checksums wrong), or stop.
        if cookie_ok and primary.disk_type in (DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING):
            report.footer = primary
            report.footer_offset = primary_offset
            report.footer_state = "damaged"
            self.extend(primary_problems)
            if primary.disk_type in (DISK_DYNAMIC, DISK_DIFFERENCING):
                self._compare_copy(primary, raw, copy, copy_raw, copy_problems, primary_offset)
            return
        if copy_usable:
            report.footer = copy
            report.copy_state = "damaged"
            self.extend(copy_problems)
            self._pending_primary = (primary, primary_offset, cookie_ok, primary_problems, raw)
            return

        # No usable footer at the end nor at 0. A fixed disk may have bytes
        # appended after its footer: look for it a little further back.
        self._report_bad_primary(primary, primary_offset, cookie_ok, primary_problems, raw)
        if copy is not None and copy.cookie == FOOTER_COOKIE:
            self.extend(copy_problems)
        found = self._find_fixed_footer()
        if found is None:
            self._refuse_if_not_vhd()
            self.stop("no usable footer at the end of the file or at offset 0")
        offset, footer = found
        report.footer = footer
        report.footer_offset = offset
        report.footer_state = "trailing"
        report.primary = footer
        # The damaged-primary problem above was about the last sector.
        report.problems = [
            p for p in report.problems if not p.code.startswith(("footer.", "footer_copy."))
        ]
        self.extend(self._footer_problems(footer, offset, offset + FOOTER_SIZE))
        self._trailing(offset)

    def _refuse_if_not_vhd(self) -> None:
        """Raise :class:`NotVHDError` when nothing in the file belongs to a VHD.

        A raw disk or another format's image is "could not check", not
        "corrupt"; :func:`vhdcore.formats.probe.shows_vhd` lists what counts as a sign.
        """
        probe.refuse_unless_vhd(self.path, self.read, self.size)

    def _report_bad_primary(self, primary, offset, cookie_ok, problems, raw) -> None:
        """The last sector is not a good footer: say what it holds."""
        if cookie_ok:
            self.extend(problems)
        elif _is_all(raw, _KILLED_BYTE):
            self.add(
                "footer.killed",
                f"footer at {offset:#x} was overwritten with 0xC7 bytes: blktap's tapdisk "
                f"does this while the image is open for writing, so it crashed or is "
                f"still running",
                offset=offset, error=FormatError,
            )
        elif _is_all(raw, 0):
            self.add(
                "footer.missing",
                f"no footer at the end of the file: the last sector ({offset:#x}) is all zero",
                offset=offset, error=FormatError,
            )
        else:
            self.extend(primary.validate(self.path, offset, now=self.now))

    def _find_fixed_footer(self) -> Optional[Tuple[int, Footer]]:
        """A fixed disk's footer at ``offset == current_size``, shortly before EOF."""
        size = self.size
        top = (size - FOOTER_SIZE) // SECTOR_SIZE * SECTOR_SIZE
        if top < 0:
            return None
        bottom = max(0, top - FIXED_FOOTER_SEARCH)
        window = self.read(bottom, top + FOOTER_SIZE - bottom, "end of the file")
        position = len(window)
        while True:
            position = window.rfind(FOOTER_COOKIE, 0, position)
            if position < 0:
                return None
            offset = bottom + position
            if offset % SECTOR_SIZE == 0 and position + FOOTER_SIZE <= len(window):
                footer = Footer.from_bytes(window[position : position + FOOTER_SIZE])
                if (
                    footer.disk_type == DISK_FIXED
                    and footer.current_size == offset
                    and footer.checksum == footer.computed_checksum
                ):
                    return offset, footer
            if position == 0:
                return None

    def _compare_copy(self, primary, raw, copy, copy_raw, copy_problems, primary_offset) -> None:
        """Rules on the copy at offset 0 of a dynamic or differencing disk."""
        report = self.report
        if copy is None or copy.cookie != FOOTER_COOKIE:
            report.copy_state = "missing"
            found = "the file is too short" if copy is None else f"cookie {copy.cookie!r}"
            self.add(
                "footer_copy.missing",
                f"no footer copy at offset 0 ({found}); dynamic and differencing disks keep "
                f"one there, and qemu reads it first",
                offset=0, error=FormatError,
            )
            return
        if any(p.is_error for p in copy_problems):
            report.copy_state = "damaged"
            self.extend(copy_problems)
            return
        stored = raw.ljust(FOOTER_SIZE, b"\0")
        if copy_raw == stored:
            report.copy_state = "ok"
            return
        differing = [
            name for name in _FOOTER_FIELDS
            if name != "checksum" and getattr(primary, name) != getattr(copy, name)
        ]
        hidden_only = differing == ["reserved"] and primary.reserved[1:] == copy.reserved[1:]
        if hidden_only:
            report.copy_state = "ok"
            self.add(
                "footer.mismatch_hidden",
                f"footer copy at 0x0 differs from the footer at {primary_offset:#x} only in "
                f"blktap's hidden flag ({copy.hidden} vs {primary.hidden})",
                "warning", 0,
            )
            return
        report.copy_state = "mismatch"
        self.extend(copy_problems)
        if (
            "current_size" in differing
            and set(differing) <= _RESIZE_FIELDS
            and primary.timestamp > copy.timestamp
        ):
            # Both footers are valid and agree on identity and layout; the
            # primary is strictly newer and differs only in what a resize
            # changes. That is what a resize interrupted between its two
            # footer writes leaves (resize writes the primary first, with a
            # newer timestamp): the primary is authoritative and repair
            # brings the copy up to date.
            self.add(
                "footer.copy_stale",
                f"footer copy at 0x0 still describes {copy.current_size} bytes while the "
                f"footer at {primary_offset:#x} describes {primary.current_size} (an "
                f"interrupted resize): qemu reads the copy; 'vhdcore repair' updates it",
                "warning", 0,
            )
            return
        self.add(
            "footer.mismatch",
            f"footer copy at 0x0 differs from the footer at {primary_offset:#x} in "
            f"{', '.join(differing) or 'the checksum field'}",
            offset=0,
        )

    # -- the primary footer once the end of data is known --------------------

    def _place_primary(self, end_of_data: Optional[int]) -> None:
        """Decide where the primary footer stands, from the copy's view of the file.

        Args:
            end_of_data: where metadata and blocks end (where vhd-util puts
                the footer), or None when the header or BAT is unusable.
        """
        pending = self._pending_primary
        if pending is None:
            return
        self._pending_primary = None
        primary, offset, cookie_ok, problems, raw = pending
        report, size = self.report, self.size
        if cookie_ok:
            # A footer is there, with errors: it is damaged in place.
            report.footer_state = "damaged"
            report.footer_offset = offset
            self.extend(problems)
            self._compare_mismatch_only(primary, offset)
            return
        if end_of_data is None:
            report.footer_state = "killed" if _is_all(raw, _KILLED_BYTE) else "missing"
            report.footer_offset = offset
            self._report_bad_primary(primary, offset, cookie_ok, problems, raw)
            return
        if end_of_data > size:
            report.footer_state = "truncated"
            report.footer_offset = end_of_data
            self.add(
                "file.truncated",
                f"file ends at {size:#x}, but its metadata and blocks reach {end_of_data:#x} "
                f"({end_of_data - size} bytes are missing, with the footer)",
                offset=size,
            )
            self._unaligned_size()
            return
        if end_of_data + FOOTER_SIZE < size:
            candidate_raw = self.read(end_of_data, FOOTER_SIZE, "footer")
            candidate = Footer.from_bytes(candidate_raw)
            if candidate.cookie == FOOTER_COOKIE:
                found = self._footer_problems(candidate, end_of_data, end_of_data + FOOTER_SIZE)
                if not any(p.is_error for p in found):
                    report.footer_state = "trailing"
                    report.footer_offset = end_of_data
                    report.primary = candidate
                    self._trailing(end_of_data)
                    if candidate_raw != self.copy_raw:
                        self._compare_mismatch_only(candidate, end_of_data)
                    return
        if end_of_data + FOOTER_SIZE <= size:
            # The last sector is not a footer and holds no data: the footer
            # belongs there (bytes between the data and it are leaks).
            report.footer_offset = (size - FOOTER_SIZE) // SECTOR_SIZE * SECTOR_SIZE
            if _is_all(raw, _KILLED_BYTE):
                report.footer_state = "killed"
            elif _is_all(raw, 0):
                report.footer_state = "missing"
            else:
                report.footer_state = "damaged"
            self._report_bad_primary(primary, offset, cookie_ok, problems, raw)
            if size % SECTOR_SIZE not in (0, LEGACY_FOOTER_SIZE):
                self.add(
                    "file.size", f"file size {size} is neither 0 nor 511 modulo 512",
                    offset=size, error=FormatError,
                )
            return
        # The file ends at the end of the data, or inside where the footer
        # should be: it was never written or was cut off.
        report.footer_state = "missing"
        report.footer_offset = end_of_data
        self.add(
            "footer.missing",
            f"no footer: the file ends at {size:#x}, "
            + ("right after the last block, where the footer should start"
               if end_of_data == size else
               f"{size - end_of_data} bytes into where the footer should be ({end_of_data:#x})"),
            offset=end_of_data, error=FormatError,
        )

    def _compare_mismatch_only(self, primary: Footer, offset: int) -> None:
        copy = self.report.copy
        differing = [
            name for name in _FOOTER_FIELDS
            if name != "checksum" and getattr(primary, name) != getattr(copy, name)
        ]
        if differing and primary.cookie == FOOTER_COOKIE:
            self.add(
                "footer.mismatch",
                f"footer copy at 0x0 differs from the footer at {offset:#x} in "
                f"{', '.join(differing)}",
                offset=0,
            )

    def _trailing(self, footer_offset: int) -> None:
        extra = self.size - footer_offset - FOOTER_SIZE
        self.add(
            "file.trailing_data",
            f"{extra} bytes follow the footer at {footer_offset:#x} (file size {self.size}); "
            f"readers look for the footer in the last 512 bytes",
            offset=footer_offset + FOOTER_SIZE,
        )

    # -- dynamic and differencing disks --------------------------------------

    def _check_dynamic(self) -> None:
        report, size = self.report, self.size
        footer = report.footer
        header_offset = footer.data_offset
        # Where structures may live: before the footer, or before EOF when
        # the footer's place is not yet known.
        limit = self._data_limit()
        if header_offset < SECTOR_SIZE or header_offset % SECTOR_SIZE or (
            header_offset + DYNAMIC_HEADER_SIZE > limit
        ):
            if not any(p.code.endswith("data_offset") for p in report.problems):
                self.add(
                    "footer.data_offset",
                    f"footer data offset {header_offset:#x} leaves no room for a 1024-byte "
                    f"dynamic header before {limit:#x}",
                    offset=report.footer_offset,
                )
            self._place_primary(None)
            self.stop("the dynamic header lies outside the file")
        header = DynamicHeader.from_bytes(
            self.read(header_offset, DYNAMIC_HEADER_SIZE, "dynamic header")
        )
        report.header = header
        if header.cookie != DYNAMIC_COOKIE:
            self.extend(header.validate(self.path, header_offset))
            self._place_primary(None)
            self.stop("no dynamic header (its cookie is wrong)")

        header_problems = header.validate(
            self.path, header_offset, file_size=limit + FOOTER_SIZE,
            disk_type=footer.disk_type, current_size=footer.current_size,
        )
        block_size = header.block_size
        block_ok = (
            MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE and not block_size & (block_size - 1)
        )
        table_ok = not any(
            p.code in ("header.table_offset", "header.table_size") for p in header_problems
        )
        if block_ok and block_size > 2 * 1024 * 1024:
            self.add(
                "header.block_size_compat",
                f"dynamic header block size at {header_offset + 32:#x} is {block_size}; "
                f"vhd-util and Hyper-V read only blocks of at most 2 MiB",
                "warning", header_offset + 32, UnsupportedError,
            )
        if block_ok and block_size < MIN_PORTABLE_BLOCK_SIZE:
            self.add(
                "header.block_size_compat",
                f"dynamic header block size at {header_offset + 32:#x} is {block_size}; "
                f"qemu sizes the sector bitmap as block_size / 4096 bytes (0 here) and reads "
                f"the bitmap sector as data, so it sees other contents than vhdcore",
                "warning", header_offset + 32, UnsupportedError,
            )
        if block_ok and not table_ok:
            self._stop_if_cut_in_table(header, header_problems)
        if not (block_ok and table_ok):
            self._place_primary(None)
            self.extend(header_problems)
            self.stop(
                "the block size is invalid" if not block_ok
                else "the block allocation table lies outside the file"
            )

        needed = batmod.blocks_needed(footer.current_size, block_size)
        report.counts["block_size"] = block_size
        report.counts["blocks"] = needed
        report.counts["max_table_entries"] = header.max_table_entries
        entries = min(needed, header.max_table_entries)
        if entries * 4 > MAX_CHECK_BAT_BYTES:
            self._place_primary(None)
            self.extend(header_problems)
            self.add(
                "bat.too_large",
                f"block allocation table of {entries} entries ({entries * 4} bytes) is beyond "
                f"the {MAX_CHECK_BAT_BYTES} bytes check reads",
                offset=header.table_offset, error=LimitError,
            )
            self.stop("the block allocation table is too large to check")
        table = self._read_table(header.table_offset, entries)
        report.bat = table
        self._check_table_tail(header, entries)

        batmap = find_batmap(
            footer, header, lambda o, n: self.read(o, n, "batmap"), min(size, limit + FOOTER_SIZE)
        )
        locators = self._sane_locators(header, header_offset, limit)
        metadata_end = batmod.metadata_end(
            header, batmap, locators, header_offset=header_offset
        )
        report.counts["metadata_end"] = metadata_end

        # Now the end of the data is known: settle the primary footer.
        span = header.bitmap_bytes + block_size
        # The allocated entries' starts (in sectors) in table order, and
        # whether the blocks follow that order: computed once, shared by
        # the BAT and leak scans.
        used = table != BAT_UNUSED
        self._starts = table if used.all() else table[used]
        self._ordered, self._splits = self._scan_order(self._starts, span)
        allocated = len(self._starts)
        if not allocated:
            last_end = 0
        elif self._ordered:
            last_end = int(self._starts[-1]) * SECTOR_SIZE + span
        else:
            last_end = int(self._starts.max()) * SECTOR_SIZE + span
        end_of_data = max(metadata_end, last_end)
        report.end_of_data = end_of_data
        self._place_primary(end_of_data)
        self.extend(header_problems)
        self._check_batmap(footer, header, batmap, table, size)

        self._check_bat(header, table, metadata_end, span)
        self._check_leaks(header, header_offset, batmap, locators, table, span)
        if report.deep:
            self._check_deep(header, table)

    def _stop_if_cut_in_table(self, header, header_problems) -> None:
        """Report a file cut inside its block allocation table, and stop checking.

        A table running past the end of the file is a header defect when
        the primary footer stands at the end; when it is missing and the
        copy at offset 0 is what describes the disk, the header is fine
        and the file was cut short: the rest of the table, every block
        and the footer are gone. Saying "the table runs past the footer"
        (placing a footer after the end of the file) would misdirect, and
        a footer written where the file ends would land on the table.
        """
        report, size = self.report, self.size
        codes = {p.code for p in header_problems if p.is_error}
        if self._pending_primary is None or "header.table_offset" in codes:
            return
        table_end = header.table_offset + batmod.bat_bytes(header.max_table_entries)
        if header.table_offset >= size or table_end <= size:
            return
        self._pending_primary = None
        report.footer_state = "truncated"
        report.footer_offset = table_end
        self.add(
            "file.truncated",
            f"file ends at {size:#x}, inside its block allocation table "
            f"({header.table_offset:#x}-{table_end:#x}): {table_end - size} bytes of the table, "
            f"every block after it and the footer are missing",
            offset=size,
        )
        self._unaligned_size()
        self.extend(p for p in header_problems if p.code != "header.table_size")
        self.stop("the file ends inside its block allocation table")

    def _unaligned_size(self) -> None:
        """Report ``file.size`` (once) when the size is neither 0 nor 511 modulo 512."""
        size = self.size
        if size % SECTOR_SIZE in (0, LEGACY_FOOTER_SIZE):
            return
        if any(p.code == "file.size" for p in self.report.problems):
            return
        self.add(
            "file.size", f"file size {size} is neither 0 nor 511 modulo 512",
            offset=size, error=FormatError,
        )

    def _data_limit(self) -> int:
        """Where the data area ends: the footer's offset, or EOF if not yet placed."""
        report = self.report
        if report.footer_offset is not None and report.footer_offset + FOOTER_SIZE <= self.size:
            return report.footer_offset
        return self.size

    def _check_table_tail(self, header, entries) -> None:
        """Entries past the blocks the disk needs should be unused (streamed)."""
        extra_count = header.max_table_entries - entries
        position = header.table_offset + entries * 4
        chunk = 1 << 20  # entries per read
        first = None
        total = 0
        done = 0
        while done < extra_count:
            count = min(chunk, extra_count - done)
            part = kernels.bat_decode(self.read(position + done * 4, count * 4, "BAT"))
            used = np.flatnonzero(part != BAT_UNUSED)
            if len(used) and first is None:
                first = entries + done + int(used[0])
            total += len(used)
            done += count
        if total:
            self.extend([batmod.beyond_size_problem(total, first, entries, header.table_offset,
                                                    self.path)])

    def _sane_locators(self, header, header_offset, limit):
        """Locators whose data count as metadata: used, known, inside the file."""
        if self.report.footer.disk_type != DISK_DIFFERENCING:
            return ()
        header_end = header_offset + DYNAMIC_HEADER_SIZE
        sane = []
        for locator in header.locators:
            if locator.is_unused or locator.code not in KNOWN_PLATFORMS:
                continue
            if not (locator.data_offset and locator.data_space and locator.data_length):
                continue
            start, end = locator.data_offset, locator.data_end
            if start < header_end or end > limit:
                continue
            if start < header.table_end and end > header.table_offset:
                continue
            sane.append(locator)
        return sane

    def _check_batmap(self, footer, header, batmap, table, size) -> None:
        if batmap is None:
            if expects_batmap(footer):
                at = header.table_offset + batmod.bat_bytes(header.max_table_entries)
                self.add(
                    "batmap.missing",
                    f"vhd-util {footer.creator_version >> 16}.{footer.creator_version & 0xFFFF} "
                    f"images carry a batmap after the BAT, but {at:#x} holds none",
                    "warning", at,
                )
            return
        self.report.counts["batmap_offset"] = batmap.header_offset
        self.extend(batmap.validate(
            self.path, file_size=self._data_limit() + FOOTER_SIZE, header=header, bat=table
        ))

    # -- BAT -----------------------------------------------------------------

    def _read_table(self, offset: int, entries: int) -> np.ndarray:
        """The first ``entries`` BAT entries as native uint32 (read in place, no copy)."""
        table = np.empty(entries, dtype=np.uint32)
        if entries:
            self.f.preadinto(offset, table, "BAT")
            if sys.byteorder == "little":
                table.byteswap(inplace=True)
        return table

    @staticmethod
    def _scan_order(starts: np.ndarray, span: int):
        """Whether blocks follow table order, each ending before the next starts.

        That is the usual layout (blocks appended as they are first
        written), and when it holds no two blocks can overlap, so the sort
        of ``kernels.bat_scan`` is not needed. Checked in linear time, in
        chunks that stay in cache, collecting on the way the positions
        after which a gap of a leak's size opens.

        Returns:
            ``(ordered, splits)``: ``splits`` (int64 positions in
            ``starts``) only when ``ordered``.
        """
        count = len(starts)
        if count < 2:
            return True, np.zeros(0, dtype=np.int64)
        step = span // SECTOR_SIZE
        leak_step = (span + MIN_LEAK) // SECTOR_SIZE
        if int(starts.max()) > 0xFFFFFFFF - leak_step:
            return False, None  # the sums below would wrap; let the kernel judge
        splits = []
        for low in range(0, count - 1, _ORDER_CHUNK):
            part = starts[low : low + _ORDER_CHUNK + 1]
            following, current = part[1:], part[:-1]
            if not np.all(following >= current + step):
                return False, None
            gaps = np.flatnonzero(following >= current + leak_step)
            if len(gaps):
                splits.append(gaps + low)
        return True, (np.concatenate(splits) if splits else np.zeros(0, dtype=np.int64))

    def _check_bat(self, header, table, metadata_end, span) -> None:
        report = self.report
        placement = batmod.check_placement(
            table, header, metadata_end, self._data_limit(), self.size, self.path,
            header_offset=report.footer.data_offset,
            in_order=self._starts if self._ordered else None,
        )
        report.counts["allocated_blocks"] = placement.allocated
        report.counts["data_end"] = placement.data_end
        empty = np.zeros(0, dtype=np.int64)
        report.outside_entries = np.asarray(placement.outside, dtype=np.int64) if len(
            placement.outside) else empty
        report.overlap_entries = np.asarray(placement.overlap, dtype=np.int64) if len(
            placement.overlap) else empty
        self.extend(placement.problems)

    # -- leaks ---------------------------------------------------------------

    def _check_leaks(self, header, header_offset, batmap, locators, table, span) -> None:
        """File bytes before the footer that no structure accounts for."""
        report = self.report
        if report.footer_state not in ("ok", "legacy", "trailing", "damaged", "killed"):
            return
        footer_at = report.footer_offset
        ranges = [
            (0, FOOTER_SIZE),
            (header_offset, header_offset + DYNAMIC_HEADER_SIZE),
            (header.table_offset, header.table_end),
        ]
        if batmap is not None:
            ranges += [r for r in batmap.extents if r[1] <= footer_at]
        ranges += [(loc.data_offset, loc.data_end) for loc in locators]
        starts = np.array([r[0] for r in ranges], dtype=np.int64)
        ends = np.array([r[1] for r in ranges], dtype=np.int64)
        sectors = self._starts
        if len(sectors):
            # Only gaps of a leak's size split the blocks (in file order)
            # into runs, so a full table becomes a handful of ranges. Every
            # block spans the same bytes, so a run ends where its last
            # (highest) block ends, overlaps or not.
            metadata_end = report.counts["metadata_end"]
            run_span = span
            disjoint_inside = not len(report.outside_entries) and not len(report.overlap_entries)
            if self._ordered:
                split = self._splits
            elif disjoint_inside and footer_at - metadata_end - len(sectors) * span < MIN_LEAK:
                # Disjoint blocks inside the data area that leave less than
                # a leak's worth of it uncovered: no gap to find, no sort.
                sectors = np.array([metadata_end // SECTOR_SIZE], dtype=np.uint32)
                run_span = footer_at - metadata_end
                split = np.zeros(0, dtype=np.int64)
            else:
                sectors = np.sort(sectors)
                split = _gap_positions(sectors, (span + MIN_LEAK) // SECTOR_SIZE)
            firsts = np.concatenate([[0], split + 1])
            lasts = np.concatenate([split, [len(sectors) - 1]])
            block_starts = sectors[firsts].astype(np.int64) * SECTOR_SIZE
            block_ends = sectors[lasts].astype(np.int64) * SECTOR_SIZE + run_span
            starts = np.concatenate([starts, block_starts])
            ends = np.concatenate([ends, block_ends])
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
        covered = np.maximum.accumulate(ends)
        gap_from = np.concatenate([[0], covered[:-1]])
        gap_to = starts
        gap_from = np.append(gap_from, covered[-1])
        gap_to = np.append(gap_to, footer_at)
        gap_to = np.minimum(gap_to, footer_at)
        keep = gap_to - gap_from >= MIN_LEAK
        report.counts["table_room"] = 0
        if len(self._starts):
            # Table room: less than a block (plus alignment) between the
            # tables and the first block is where a growing BAT or new
            # locators go without moving data. blktap's resize leaves it
            # (it moves the first blocks to the end and shifts its tables
            # into part of their space), and so do vhdcore's resize and
            # rebase; it is not a leak. compact gives it back.
            first_block = int(self._starts.min()) * SECTOR_SIZE
            room = (gap_to == first_block) & (gap_to - gap_from < span + MIN_LEAK)
            report.counts["table_room"] = int((gap_to - gap_from)[room & keep].sum())
            keep &= ~room
        leaks = [Leak(int(a), int(b - a)) for a, b in zip(gap_from[keep], gap_to[keep])]
        report.leaks = leaks
        total = sum(leak.length for leak in leaks)
        report.counts["leaked_bytes"] = total
        for leak in leaks[:MAX_REPORTED]:
            blocks = leak.length // span
            hint = (
                f" (room for {blocks} block{'s' if blocks > 1 else ''}: left by an "
                f"interrupted allocation?)" if blocks else ""
            )
            self.add(
                "file.leak",
                f"{leak.length} bytes at {leak.offset:#x}..{leak.end:#x} belong to no "
                f"structure{hint}",
                "leak", leak.offset,
            )
        if len(leaks) > MAX_REPORTED:
            rest = leaks[MAX_REPORTED:]
            self.add(
                "file.leak",
                f"{sum(leak.length for leak in rest)} more bytes in {plural(len(rest), 'region')} "
                f"belong to no structure",
                "leak", rest[0].offset,
            )

    # -- deep: data under clear bitmap bits ----------------------------------

    def _check_deep(self, header, table) -> None:
        """Sectors whose bitmap bit is clear must hold zeros."""
        report = self.report
        differencing = report.footer.disk_type == DISK_DIFFERENCING
        bitmap_bytes = header.bitmap_bytes
        sectors = header.sectors_per_block
        bad = set(report.outside_entries.tolist()) | set(report.overlap_entries.tolist())
        allocated = np.flatnonzero(table != BAT_UNUSED)
        order = np.argsort(table[allocated], kind="stable")  # read in file order
        findings = []  # (block, first sector, count)
        blocks_read = 0
        for index in allocated[order].tolist():
            if index in bad:
                continue
            start = int(table[index]) * SECTOR_SIZE
            bitmap = np.frombuffer(self.read(start, bitmap_bytes, "sector bitmap"), dtype=np.uint8)
            bits = np.unpackbits(bitmap)[:sectors]
            clear = np.flatnonzero(bits == 0)
            blocks_read += 1
            if not len(clear):
                continue
            data_start = start + bitmap_bytes
            first, last = int(clear[0]), int(clear[-1]) + 1
            dirty = 0
            first_dirty = None
            for chunk_first in range(first, last, DEEP_CHUNK // SECTOR_SIZE):
                chunk_last = min(last, chunk_first + DEEP_CHUNK // SECTOR_SIZE)
                data = self.read(
                    data_start + chunk_first * SECTOR_SIZE,
                    (chunk_last - chunk_first) * SECTOR_SIZE, "block data",
                )
                nonzero = np.frombuffer(data, dtype=np.uint8).reshape(-1, SECTOR_SIZE).any(axis=1)
                hits = np.flatnonzero(nonzero & (bits[chunk_first:chunk_last] == 0))
                if len(hits):
                    dirty += len(hits)
                    if first_dirty is None:
                        first_dirty = chunk_first + int(hits[0])
            if dirty:
                findings.append((index, first_dirty, dirty, data_start))
        report.counts["deep_blocks_read"] = blocks_read
        report.counts["deep_dirty_sectors"] = sum(f[2] for f in findings)
        if differencing:
            code, severity = "data.stale", "warning"
            meaning = (
                "reads come from the parent there, but the stale bytes leak through any "
                "tool that copies the file"
            )
        else:
            # A warning, not corruption: a crash between writing data and
            # setting its bits leaves exactly this, for a write nobody had
            # flushed, and either reading of it (old zeros, new data) is fair.
            code, severity = "data.clear_bitmap", "warning"
            meaning = (
                "the specification reads those sectors as zeros while qemu and vhdcore "
                "return the data"
            )
        for index, sector, count, data_start in findings[:MAX_REPORTED]:
            self.add(
                code,
                f"block {index} (data at {data_start:#x}) holds data in {plural(count, 'sector')} whose "
                f"bitmap bit is clear (first: sector {sector}, at "
                f"{data_start + sector * SECTOR_SIZE:#x}); {meaning}",
                severity, data_start + sector * SECTOR_SIZE,
            )
        if len(findings) > MAX_REPORTED:
            rest = findings[MAX_REPORTED:]
            self.add(
                code,
                f"{plural(len(rest), 'more block')} "
                f"{'holds' if len(rest) == 1 else 'hold'} data under clear bitmap bits "
                f"({plural(sum(f[2] for f in rest), 'sector')})",
                severity, rest[0][3],
            )

    # -- the parent ------------------------------------------------------------

    def check_parent(self, policy: ParentPolicy, depth: int, seen) -> Optional[str]:
        """Find the parent of a differencing disk; compare names and UUIDs.

        Returns:
            The parent's path when it was found and may be checked further.
        """
        report = self.report
        header = report.header
        if depth + 2 > policy.max_depth:
            self.add(
                "chain.depth",
                f"differencing chain is deeper than the limit of {policy.max_depth} images",
                offset=None, error=LimitError,
            )
            return None
        payloads = read_payloads(header, self.read, self.size, known_only=True)
        for index, data in payloads.items():
            locator = header.locators[index]
            offset = locator.data_offset
            try:
                text = decode_locator(locator.code, data)
            except (FormatError, UnsupportedError) as exc:
                self.add(
                    "locator.decode",
                    f"parent locator {index} ({locator.code_name}) cannot be decoded: {exc}",
                    "warning", offset,
                )
                continue
            name = header.parent_name
            base = text.replace("\\", "/").rsplit("/", 1)[-1]
            if name and base and base != name.replace("\\", "/").rsplit("/", 1)[-1]:
                self.add(
                    "locator.name_mismatch",
                    f"parent locator {index} ({locator.code_name}) names {base!r}, the header's "
                    f"parent name is {name!r}",
                    "warning", offset,
                )
        candidates = candidate_paths(self.path, header, payloads)
        tried, refused = [], []
        own = set(seen) | {file_identity(self.path)}
        for _code, candidate in screen_candidates(candidates, policy, tried, refused):
            if file_identity(candidate) in own:
                self.add(
                    "chain.loop",
                    f"parent {candidate} is already part of this chain (a loop)",
                    offset=None, error=ChainLoopError,
                )
                return None
            self._compare_parent(candidate)
            report.counts["parent_found"] = 1
            report.parent_path = candidate
            return candidate
        if refused:
            self.add(
                "parent.refused",
                f"parent refused by the path policy: {'; '.join(refused)}",
                offset=None, error=UnsafeParentError,
            )
            return None
        name = header.parent_name or "(no name)"
        self.add(
            "parent.missing",
            f"parent {name!r} not found"
            + (f" (tried {', '.join(tried)})" if tried else " (no usable locator)"),
            offset=None, error=ParentNotFoundError,
        )
        return None

    def _compare_parent(self, parent_path: str) -> None:
        header = self.report.header
        try:
            footer = _peek_footer(parent_path)
        except OSError as exc:
            self.add(
                "parent.unreadable",
                f"parent {parent_path} cannot be read: {exc.strerror or exc}",
                offset=None, error=ParentNotFoundError,
            )
            return
        if footer is None:
            self.add(
                "parent.invalid",
                f"parent {parent_path} has no valid VHD footer",
                offset=None, error=FormatError,
            )
            return
        if header.parent_uuid.int and footer.uuid != header.parent_uuid:
            self.add(
                "parent.uuid",
                f"parent {parent_path} has UUID {footer.uuid}, but the child was made from "
                f"{header.parent_uuid}",
                offset=self.report.footer.data_offset + 40, error=ParentMismatchError,
            )


def _peek_footer(path) -> Optional[Footer]:
    """The footer of a would-be parent (the primary, else the copy at 0), or None."""
    with open_image_file(path) as parent:
        size = parent.size()
        raws = []
        if size >= FOOTER_SIZE:
            raws.append(read_primary_footer(parent.pread, size)[0])
        if size >= 2 * FOOTER_SIZE:
            raws.append(None)  # the copy at 0, read only if the primary fails
        for raw in raws:
            copy = raw is None
            footer = Footer.from_bytes(parent.pread(0, FOOTER_SIZE, "footer copy") if copy
                                       else raw)
            if footer.cookie == FOOTER_COOKIE and footer.checksum == footer.computed_checksum:
                if copy and footer.disk_type == DISK_FIXED:
                    continue
                return footer
    return None
