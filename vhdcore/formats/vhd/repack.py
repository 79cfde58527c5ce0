"""Packing the data blocks of a dynamic image: closing holes, then truncating.

Blocks only ever move into space nothing references, through
:meth:`VHD.relocate_blocks` (copy, barrier, BAT entries, barrier), so a
crash at any point leaves an image that reads the same with leaked space at
worst; packing again finishes the job. Two levels:

* **settle** (after a shrink): the blocks nearest the end of the file move
  into the lowest holes a whole block fits in, then the file is cut after
  the last block. Few blocks move (at most one per hole).
* **full** (``compact``): that, then close what is left, holes smaller
  than a block included. A block cannot slide down by less than its own
  size (its copy would overwrite itself), so the first few blocks after
  such a hole are moved to the end of the file first: the hole then holds
  that many blocks, every later block slides down into it in batches, and
  the moved ones follow last. Every block from the hole on moves once (the
  first few twice); the file grows by at most :data:`BOUNCE` blocks while
  this runs.

The space between the tables and the first block is packed too: ``check``
calls less than a block of it table room (blktap leaves it when its table
grows, and so do vhdcore's resize and rebase), not a leak, but ``compact``
gives everything back.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from .check import MIN_LEAK  # smaller gaps are alignment padding, not leaks
from .constants import BAT_UNUSED, FOOTER_SIZE, SECTOR_SIZE

__all__ = ["BOUNCE", "apply", "plan", "settle"]

#: Blocks moved to the end of the file to open a sub-block hole: the
#: slide that follows then moves this many blocks per barrier pair.
BOUNCE = 8

Batch = List[Tuple[int, Optional[int]]]  # (block, target offset or None = append)


def _round(value: int) -> int:
    return -(-value // SECTOR_SIZE) * SECTOR_SIZE


def _fill_holes(where: Dict[int, int], span: int, base: int) -> Batch:
    """Move the highest blocks into the lowest holes they fit (targets below their source)."""
    order = sorted(where, key=where.get)
    taken = [(where[b], where[b] + span) for b in order]
    free = []
    position = base
    for lo, hi in taken:
        if lo > position:
            free.append([position, lo])
        position = max(position, hi)
    moves: Batch = []
    for block in reversed(order):
        source = where[block]
        for pair in free:
            lo = _round(pair[0])
            if lo + span <= pair[1] and lo + span <= source:
                moves.append((block, lo))
                pair[0] = lo + span
                break
        else:
            break
    for block, target in moves:
        where[block] = target
    return moves


def _slide(where: Dict[int, int], span: int, base: int, gap: int, end: int) -> List[Batch]:
    """Batches closing every gap of at least ``gap`` bytes (see the module docstring)."""
    order = sorted(where, key=where.get)
    position = base
    first = None
    for index, block in enumerate(order):
        if where[block] - position >= gap:
            first = index
            break
        position = where[block] + span
    if first is None:
        return []
    end = max(end, _round(max([base] + [where[b] + span for b in order])))
    batches: List[Batch] = []
    rest = order[first:]
    bounced = []
    if where[rest[0]] - position < BOUNCE * span:
        bounced = rest[:BOUNCE]
        rest = rest[BOUNCE:]
        batches.append([(b, None) for b in bounced])
        for i, block in enumerate(bounced):
            where[block] = end + i * span
    batch: Batch = []
    free_to = None  # space below this is free at the start of the current batch
    for block in rest + bounced:
        if free_to is None:
            free_to = where[block]
        if position + span > free_to:
            batches.append(batch)
            batch, free_to = [], where[block]
            if position + span > free_to:  # cannot happen: the gap never shrinks
                raise AssertionError(f"block {block} would be copied over itself")
        batch.append((block, position))
        where[block] = position
        position += span
    if batch:
        batches.append(batch)
    return [b for b in batches if b]


def plan(image, blocks=None, *, full: bool) -> Tuple[List[Batch], int]:
    """``(batches, data_end)``: the moves that pack ``blocks`` (default: all
    allocated ones), and where the data ends afterwards.

    Args:
        image: a dynamic or differencing :class:`~vhdcore.formats.vhd.image.VHD`.
        blocks: the blocks that stay (compact leaves out the ones it drops).
        full: close holes smaller than a block too (``compact``), not
            only the ones a block fits in (``settle``).
    """
    span = image.block_span
    base = image.metadata_end
    if blocks is None:
        blocks = np.flatnonzero(image.bat != BAT_UNUSED).tolist()
    # Blocks over the metadata (check reports them) stay where they are.
    where = {b: int(image.bat[b]) * SECTOR_SIZE for b in blocks}
    base = max([base] + [s + span for s in where.values() if s < base])
    where = {b: s for b, s in where.items() if s >= base}
    batches = []
    first = _fill_holes(where, span, base)
    if first:
        batches.append(first)
    if full:
        # Appended blocks go after everything the table pointed at when
        # planning (moves into holes do not lower that mark).
        batches += _slide(where, span, base, MIN_LEAK, image.next_free)
    end = _round(max([base] + [s + span for s in where.values()]))
    return batches, end


def apply(image, batches: List[Batch], data_end: int) -> int:
    """Carry out ``batches`` in order, then cut the file after ``data_end``.

    Returns the number of block moves made.
    """
    moved = 0
    for batch in batches:
        image.relocate_blocks(batch)
        moved += len(batch)
    f = image.image_file
    if data_end + FOOTER_SIZE < f.size():
        # The footer first, in space nothing references; then cut after it.
        f.pwrite(data_end, image.footer.to_bytes())
        f.flush()
        f.truncate(data_end + FOOTER_SIZE)
        f.flush()
    image.reload()
    return moved


def settle(image) -> int:
    """Fill holes a whole block fits in from the end of the file, and truncate."""
    batches, end = plan(image, full=False)
    return apply(image, batches, end)

