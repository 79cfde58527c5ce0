"""``--deep``: the data under clear bitmap bits, which must be zero."""

from __future__ import annotations

import numpy as np

from ....sizes import plural
from ..constants import (
    BAT_UNUSED,
    DISK_DIFFERENCING,
    SECTOR_SIZE,
)
from .base import (
    DEEP_CHUNK,
    MAX_REPORTED,
    CheckerBase,
)


class DeepRules(CheckerBase):
    """``--deep``: every allocated block's bitmap read, and the data under its
    clear bits, which must be zero (streamed, bounded per block)."""

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
                f"block {index} (data at {data_start:#x}) holds data in "
                f"{plural(count, 'sector')} whose bitmap bit is clear (first: sector {sector}, at "
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
