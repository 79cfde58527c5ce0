"""Leaked space: file bytes before the footer that no structure accounts for."""

from __future__ import annotations

import numpy as np

from ....sizes import plural
from ..constants import (
    DYNAMIC_HEADER_SIZE,
    FOOTER_SIZE,
    SECTOR_SIZE,
)
from .base import (
    _ORDER_CHUNK,
    MAX_REPORTED,
    MIN_LEAK,
    CheckerBase,
)
from .report import Leak


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


class LeakRules(CheckerBase):
    """Reports file ranges no structure accounts for, as ``qemu-img check`` does."""

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
