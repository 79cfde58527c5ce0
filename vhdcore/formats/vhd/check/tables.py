"""The dynamic header and block table rules.

The header, the table's place, entries past the virtual size, the batmap,
block placement.
"""

from __future__ import annotations

import sys

import numpy as np

from ...._backend import kernels
from ....errors import (
    FormatError,
    LimitError,
    UnsupportedError,
)
from .. import bat as batmod
from ..batmap import expects_batmap, find_batmap
from ..blocksize import MIN_PORTABLE_BLOCK_SIZE
from ..constants import (
    BAT_UNUSED,
    DISK_DIFFERENCING,
    DYNAMIC_COOKIE,
    DYNAMIC_HEADER_SIZE,
    FOOTER_SIZE,
    KNOWN_PLATFORMS,
    LEGACY_FOOTER_SIZE,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    SECTOR_SIZE,
)
from ..header import DynamicHeader
from .base import (
    _ORDER_CHUNK,
    MAX_CHECK_BAT_BYTES,
    MIN_LEAK,
    CheckerBase,
)


class TableRules(CheckerBase):
    """Reads the dynamic header and the table, and judges where blocks lie."""

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
