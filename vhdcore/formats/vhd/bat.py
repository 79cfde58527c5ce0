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
from dataclasses import dataclass
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
    "beyond_size_problem",
    "check_placement",
    "validate_bat",
    "MAX_REPORTED",
    "Placement",
]

# check_placement names at most this many entries per code, then summarises:
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


@dataclass
class Placement:
    """Where a table puts its blocks, judged: what :func:`check_placement` finds.

    Attributes:
        problems: ``bat.outside`` and ``bat.overlap`` errors.
        allocated: allocated entries.
        data_end: the end of the last block in the file (0 if none).
        outside: indices of the entries that put a block outside the data area.
        overlap: indices of the (inside) entries whose blocks overlap another.
    """

    problems: List[Problem]
    allocated: int
    data_end: int
    outside: object = ()
    overlap: object = ()


def _metadata_name(header, header_offset: int, start: int) -> str:
    if start < SECTOR_SIZE:
        return "the footer copy"
    if header_offset <= start < header_offset + 1024:
        return "the dynamic header"
    if header.table_offset <= start < header.table_offset + bat_bytes(header.max_table_entries):
        return "the BAT"
    return "the batmap or parent locator data"


def check_placement(table, header, metadata_end: int, limit: int, file_size: int,
                    path="", *, header_offset: int = SECTOR_SIZE,
                    in_order=None) -> Placement:
    """The rule for where blocks may lie, the one ``check`` and every open apply.

    Each allocated block (bitmap + data) must start at or after
    ``metadata_end``, end at or before ``limit`` (the primary footer), and
    overlap no other block. The last, partial block is checked like the
    others (vhd-util skips it).

    Args:
        table: the decoded table (native uint32: numpy array, ``array("I")``).
        header: the dynamic header (block size, table offset, entries).
        metadata_end: from :func:`metadata_end`.
        limit: where the data area ends (the footer's offset).
        file_size: the file's size, to say whether a block runs past it.
        path: the image, for messages.
        header_offset: where the dynamic header sits (to name what a block covers).
        in_order: the allocated entries' sectors in table order, when the
            caller already knows they are in order and disjoint (``check``
            finds out while looking for leaks): the sort is then skipped.

    Returns:
        A :class:`Placement`; its problems name the BAT index, its offset
        and the blocks involved, at most :data:`MAX_REPORTED` each, then one
        summary.
    """
    where = _where(path)
    block_size = header.block_size
    span = bitmap_bytes_for(block_size) + block_size
    if in_order is not None and (
        not len(in_order)
        or int(in_order[0]) * SECTOR_SIZE >= metadata_end
        and int(in_order[-1]) * SECTOR_SIZE + span <= limit
    ):
        # In order, disjoint, inside the data area: nothing is misplaced.
        count = len(in_order)
        last_end = int(in_order[-1]) * SECTOR_SIZE + span if count else 0
        return Placement([], count, last_end)
    count, last_end, bad = kernels.bat_scan(
        table, block_size, span - block_size, metadata_end, limit
    )
    if not len(bad):
        return Placement([], int(count), int(last_end))
    # Classify and locate neighbours with array operations: a corrupt table
    # can flag every one of a million entries.
    import numpy as np

    table = np.asarray(table, dtype=np.uint32)
    bad = np.asarray(bad, dtype=np.int64)
    found = Placement([], int(count), int(last_end))
    starts = table[bad].astype(np.int64) * SECTOR_SIZE
    outside = (starts < metadata_end) | (starts + span > limit)
    found.outside = bad[outside]
    if outside.any():
        # A block thrown over the metadata or past the file also "overlaps"
        # its neighbours; judge overlaps without it.
        inside = table.copy()
        inside[bad[outside]] = BAT_UNUSED
        _, _, overlapping = kernels.bat_scan(
            inside, block_size, span - block_size, 0, 1 << 62
        )
        found.overlap = np.asarray(overlapping, dtype=np.int64)
    else:
        found.overlap = bad
    table_at = header.table_offset

    def add(code, message, offset):
        found.problems.append(
            Problem(code, f"{where}: {message}", "error", offset, CorruptImageError)
        )

    shown = 0
    for index, start in zip(bad[outside][:MAX_REPORTED].tolist(),
                            starts[outside][:MAX_REPORTED].tolist()):
        end = start + span
        if start < metadata_end:
            place = (f"over the metadata ({_metadata_name(header, header_offset, start)}), "
                     f"which ends at {metadata_end:#x}")
        elif start <= limit and limit + 512 <= file_size:
            place = f"over the footer at {limit:#x}"
            if end > file_size:
                place += f" and past the end of the file ({file_size:#x})"
        else:
            place = f"running past the end of the file ({file_size:#x})"
        add("bat.outside", f"BAT entry {index} (at {table_at + 4 * index:#x}) puts block "
                           f"{start:#x}..{end:#x} {place}", table_at + 4 * index)
        shown += 1
    hidden = int(np.count_nonzero(outside)) - shown
    if hidden > 0:
        add("bat.outside", f"{hidden} more BAT entries put blocks outside the data area "
                           f"{metadata_end:#x}..{limit:#x}", table_at)
    _overlap_problems(table, found.overlap, span, table_at, add)
    return found


def _overlap_problems(table, overlap, span: int, table_at: int, add) -> None:
    """One ``bat.overlap`` per overlapping pair (at most :data:`MAX_REPORTED`), then a sum."""
    import numpy as np

    if not len(overlap):
        return
    allocated = np.flatnonzero(table != BAT_UNUSED)
    block_starts = table[allocated].astype(np.int64) * SECTOR_SIZE
    order = np.argsort(block_starts, kind="stable")
    sorted_starts = block_starts[order]
    sorted_index = allocated[order]
    position_of = np.empty(len(allocated), dtype=np.int64)
    position_of[order] = np.arange(len(allocated))
    rank = np.searchsorted(allocated, overlap[: 2 * MAX_REPORTED])
    pairs = set()
    for pos in position_of[rank].tolist():
        if len(pairs) == MAX_REPORTED:
            break
        if pos + 1 < len(sorted_starts) and sorted_starts[pos + 1] < sorted_starts[pos] + span:
            first, second = pos, pos + 1
        else:
            first, second = pos - 1, pos
        # Blame the block that starts inside the other (for equal starts,
        # the higher index), as vhd-util's "clobbers" does.
        index, other = int(sorted_index[second]), int(sorted_index[first])
        start, other_start = int(sorted_starts[second]), int(sorted_starts[first])
        if start == other_start and index < other:
            index, other = other, index
        if (index, other) in pairs:
            continue
        pairs.add((index, other))
        if other_start == start:
            what = f"points at the same block ({start:#x}) as BAT entry {other}"
        else:
            shared = other_start + span - start
            what = (f"(block {start:#x}..{start + span:#x}) overlaps BAT entry {other} "
                    f"(block {other_start:#x}..{other_start + span:#x}) by {shared} bytes")
        add("bat.overlap", f"BAT entry {index} (at {table_at + 4 * index:#x}) {what}",
            table_at + 4 * index)
    if len(overlap) > 2 * len(pairs):
        add("bat.overlap", f"{len(overlap)} BAT entries overlap other blocks in all; "
                           f"the first {plural(len(pairs), 'overlap')} "
                           f"{'is' if len(pairs) == 1 else 'are'} listed above", table_at)


def beyond_size_problem(total: int, first: int, needed: int, table_offset: int,
                        path="") -> Problem:
    """The ``bat.beyond_size`` warning: ``total`` entries past the ``needed``
    ones are allocated, the first of them at index ``first``."""
    return Problem(
        "bat.beyond_size",
        f"{_where(path)}: {plural(total, 'BAT entry', 'BAT entries')} past the "
        f"{plural(needed, 'block')} of the virtual size {'is' if total == 1 else 'are'} "
        f"allocated (first: entry {first}); readers ignore {'it' if total == 1 else 'them'}",
        "warning", table_offset + 4 * first, CorruptImageError,
    )


def validate_bat(
    bat,
    header,
    footer,
    metadata_end: int,
    file_size: int,
    path: Union[str, "os.PathLike[str]"] = "",
) -> List[Problem]:
    """Check where the BAT puts every allocated block (:func:`check_placement`),
    and that entries past the blocks the virtual size needs are unused.

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
        ``bat.outside`` and ``bat.overlap`` errors and a ``bat.beyond_size``
        warning.

    Raises:
        ValueError: the header's block size is not a positive multiple of
            512 (validate the header first).
    """
    if isinstance(bat, (bytes, bytearray)) or (isinstance(bat, memoryview) and bat.itemsize == 1):
        bat = kernels.bat_decode(bat)
    limit = max(footer_offset_for(file_size), 0)
    problems = check_placement(bat, header, metadata_end, limit, file_size, path,
                               header_offset=footer.data_offset).problems
    needed = blocks_needed(footer.current_size, header.block_size)
    if len(bat) > needed:
        import numpy as np

        extra = np.flatnonzero(np.asarray(bat, dtype=np.uint32)[needed:] != BAT_UNUSED)
        if len(extra):
            problems.append(beyond_size_problem(len(extra), needed + int(extra[0]), needed,
                                                header.table_offset, path))
    return problems
