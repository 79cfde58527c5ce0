"""What a check reports: the problem codes, the exit codes, and :class:`CheckReport`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ....problems import Problem
from ..footer import Footer
from ..header import DynamicHeader

EXIT_CLEAN = 0
EXIT_CANNOT_CHECK = 1
EXIT_CORRUPT = 2
EXIT_LEAKS = 3

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
        format: the registry name of the format checked (``"vhd"``, ``"qcow2"``).
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
    format: str = "vhd"
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
            "format": self.format,
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
