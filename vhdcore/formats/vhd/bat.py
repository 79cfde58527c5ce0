"""Block allocation table arithmetic and placement checks.

The BAT holds one big-endian uint32 per block: the *sector* of the block's
bitmap, or 0xFFFFFFFF for an unallocated block. Decoding and the scan for
misplaced blocks are kernels (``kernels.bat_decode`` / ``bat_scan``); this
module turns their results into sizes, the end of metadata, and Problems.
numpy is imported only to describe a damaged table: validating a sound one,
as every open does, needs none.
"""

from __future__ import annotations

import os
from typing import List, Union

from ..._backend import kernels
from ...errors import CorruptImageError
from ...problems import Problem
from ...problems import where as _where
from ...sizes import plural
from .constants import BAT_UNUSED, SECTOR_SIZE
from .layout import footer_offset_for

__all__ = [
    "bitmap_bytes_for",
    "blocks_needed",
    "bat_bytes",
    "metadata_end",
    "validate_bat",
    "MAX_REPORTED",
]

# validate_bat names at most this many entries per code, then summarises:
# a table of a million zero entries must not produce a million messages.
MAX_REPORTED = 16


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def bitmap_bytes_for(block_size: int) -> int:
    """Bytes of sector bitmap before each block: one bit per sector, padded to 512.

    Raises:
        ValueError: ``block_size`` is not a positive multiple of 512.
    """
    if block_size <= 0 or block_size % SECTOR_SIZE:
        raise ValueError(f"block size must be a positive multiple of 512, not {block_size}")
    sectors = block_size // SECTOR_SIZE
    return _round_up(-(-sectors // 8), SECTOR_SIZE)


def blocks_needed(size: int, block_size: int) -> int:
    """Blocks to hold ``size`` bytes (the last one may be partial).

    Raises:
        ValueError: ``block_size`` is not positive or ``size`` is negative.
    """
    if block_size <= 0:
        raise ValueError(f"block size must be positive, not {block_size}")
    if size < 0:
        raise ValueError(f"size must not be negative, not {size}")
    return -(-size // block_size)


def bat_bytes(max_entries: int) -> int:
    """On-disk bytes of a BAT of ``max_entries`` entries, padded to a sector."""
    if max_entries < 0:
        raise ValueError(f"max_entries must not be negative, not {max_entries}")
    return _round_up(max_entries * 4, SECTOR_SIZE)


def metadata_end(header, batmap=None, locators=None, *, header_offset: int = SECTOR_SIZE) -> int:
    """The first byte after every metadata structure, rounded up to a sector.

    New blocks go at or after ``max(metadata_end, end of the last block)``;
    qemu computes the free offset from the BAT alone and so overwrites
    blktap's batmap, which this avoids.

    Args:
        header: the :class:`~vhdcore.formats.vhd.header.DynamicHeader`.
        batmap: a :class:`~vhdcore.formats.vhd.batmap.Batmap` found after the BAT, or
            None; its header sector counts, its map only when loaded with a
            good checksum (``Batmap.trusted_end``).
        locators: the parent locators whose data count as metadata; None
            means every used locator of ``header``. Pass ``()`` for a
            dynamic disk whose stray locators should be ignored.
        header_offset: where the dynamic header sits (the footer's data
            offset; 512 in practice).
    """
    end = header_offset + 1024
    end = max(end, header.table_offset + bat_bytes(header.max_table_entries))
    if batmap is not None:
        end = max(end, batmap.trusted_end)
    if locators is None:
        locators = header.locators
    for locator in locators:
        if not locator.is_unused:
            end = max(end, locator.data_offset + locator.space_bytes)
    return _round_up(end, SECTOR_SIZE)


def validate_bat(
    bat,
    header,
    footer,
    metadata_end: int,
    file_size: int,
    path: Union[str, "os.PathLike[str]"] = "",
) -> List[Problem]:
    """Check where the BAT puts every allocated block.

    Each allocated block (bitmap + data) must start at or after
    ``metadata_end``, end at or before the primary footer, and overlap no
    other block; entries past the blocks the virtual size needs should be
    unused. The last, partial block is checked like the others (vhd-util
    skips it).

    Args:
        bat: the decoded table (a native uint32 buffer: numpy array,
            ``array("I")``, memoryview; ``kernels.bat_decode`` gives one),
            or its raw big-endian bytes.
        header: the dynamic header (block size, max table entries).
        footer: the footer (current size).
        metadata_end: from :func:`metadata_end`.
        file_size: the file's size in bytes.
        path: the image, for messages.

    Returns:
        ``bat.outside`` and ``bat.overlap`` errors naming the BAT index and
        the offsets involved (at most ``MAX_REPORTED`` each, then one
        summary), and a ``bat.beyond_size`` warning.

    Raises:
        ValueError: the header's block size is not a positive multiple of
            512 (validate the header first).
    """
    where = _where(path)
    if isinstance(bat, (bytes, bytearray)) or (isinstance(bat, memoryview) and bat.itemsize == 1):
        bat = kernels.bat_decode(bat)
    table = bat
    block_size = header.block_size
    bitmap = bitmap_bytes_for(block_size)
    span = bitmap + block_size
    footer_start = max(footer_offset_for(file_size), 0)
    table_offset = header.table_offset

    problems: List[Problem] = []
    _count, _end, bad = kernels.bat_scan(table, block_size, bitmap, metadata_end, footer_start)

    if len(bad):
        # Classify and locate neighbours with array operations: a corrupt
        # table can flag every one of a million entries.
        import numpy as np

        table = np.asarray(table, dtype=np.uint32)
        bad = np.asarray(bad, dtype=np.int64)
        allocated = np.flatnonzero(table != BAT_UNUSED)
        starts = table[allocated].astype(np.int64) * SECTOR_SIZE
        order = np.argsort(starts, kind="stable")
        sorted_index = allocated[order]
        sorted_start = starts[order]
        position_of = np.full(len(table), -1, dtype=np.int64)
        position_of[sorted_index] = np.arange(len(sorted_index))
        bad_start = table[bad].astype(np.int64) * SECTOR_SIZE
        is_outside = (bad_start < metadata_end) | (bad_start + span > footer_start)
        outside = bad[is_outside].tolist()
        overlap = bad[~is_outside].tolist()
        for index in outside[:MAX_REPORTED]:
            start = int(table[index]) * SECTOR_SIZE
            problems.append(
                Problem(
                    "bat.outside",
                    f"{where}: BAT entry {index} (at {table_offset + 4 * index:#x}) puts block "
                    f"{start:#x}..{start + span:#x} outside the data area "
                    f"{metadata_end:#x}..{footer_start:#x}",
                    "error",
                    table_offset + 4 * index,
                    CorruptImageError,
                )
            )
        if len(outside) > MAX_REPORTED:
            problems.append(
                Problem(
                    "bat.outside",
                    f"{where}: {len(outside) - MAX_REPORTED} more BAT entries put blocks outside "
                    f"the data area {metadata_end:#x}..{footer_start:#x}",
                    "error",
                    table_offset,
                    CorruptImageError,
                )
            )
        for index in overlap[:MAX_REPORTED]:
            start = int(table[index]) * SECTOR_SIZE
            other = _overlapping(int(position_of[index]), sorted_index, sorted_start, span)
            other_start = int(table[other]) * SECTOR_SIZE
            problems.append(
                Problem(
                    "bat.overlap",
                    f"{where}: BAT entry {index} (block at {start:#x}) overlaps BAT entry "
                    f"{other} (block at {other_start:#x}); blocks span {span} bytes",
                    "error",
                    table_offset + 4 * index,
                    CorruptImageError,
                )
            )
        if len(overlap) > MAX_REPORTED:
            problems.append(
                Problem(
                    "bat.overlap",
                    f"{where}: {len(overlap) - MAX_REPORTED} more BAT entries overlap other blocks",
                    "error",
                    table_offset,
                    CorruptImageError,
                )
            )

    needed = blocks_needed(footer.current_size, block_size)
    extra = ()
    if len(table) > needed:
        import numpy as np

        table = np.asarray(table, dtype=np.uint32)
        extra = np.flatnonzero(table[needed:] != BAT_UNUSED)
    if len(extra):
        first = needed + int(extra[0])
        problems.append(
            Problem(
                "bat.beyond_size",
                f"{where}: {plural(len(extra), 'BAT entry', 'BAT entries')} past the "
                f"{plural(needed, 'block')} of the virtual "
                f"size {'is' if len(extra) == 1 else 'are'} allocated (first: entry {first}, "
                f"value {int(table[first]):#x}); {'it is' if len(extra) == 1 else 'they are'} "
                f"ignored",
                "warning",
                table_offset + 4 * first,
                CorruptImageError,
            )
        )
    return problems


def _overlapping(position: int, sorted_index, sorted_start, span: int) -> int:
    """Index of a block that overlaps the one at ``position`` in start order."""
    start = int(sorted_start[position])
    if position + 1 < len(sorted_start) and int(sorted_start[position + 1]) < start + span:
        return int(sorted_index[position + 1])
    # Blocks all have the same span, so any earlier overlap shows in the
    # immediate predecessor (ties in start are adjacent too).
    if position > 0 and int(sorted_start[position - 1]) + span > start:
        return int(sorted_index[position - 1])
    return int(sorted_index[position])  # unreachable for entries bat_scan flagged
