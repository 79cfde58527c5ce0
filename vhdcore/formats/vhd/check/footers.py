"""The footer rules.

The primary and its copy at offset 0, legacy and trailing footers, and where
the primary belongs.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

from ....errors import FormatError
from ....problems import Problem
from ... import probe
from ..constants import (
    DISK_DIFFERENCING,
    DISK_DYNAMIC,
    DISK_FIXED,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    LEGACY_FOOTER_SIZE,
    SECTOR_SIZE,
)
from ..footer import Footer
from ..layout import read_primary_footer
from .base import (
    _KILLED_BYTE,
    FIXED_FOOTER_SEARCH,
    CheckerBase,
    _is_all,
)

_FOOTER_FIELDS = [f.name for f in dataclasses.fields(Footer)]


# Footer fields a resize changes (besides the checksum it recomputes).
_RESIZE_FIELDS = {
    "current_size", "original_size", "geometry", "timestamp",
    "creator_app", "creator_version", "creator_os",
}


class FooterRules(CheckerBase):
    """Finds the footer that describes the disk and judges both copies."""

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
