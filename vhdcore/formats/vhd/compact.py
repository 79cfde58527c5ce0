"""Compact: release blocks that hold only zeros and close the holes they leave.

Which blocks go:

* dynamic disk: a block whose data area reads all zeros (the bitmap does
  not matter: readers ignore it on dynamic disks);
* differencing disk: a block whose bitmap is empty, or whose held sectors
  are all zeros *and* read as zeros in the parent chain too. A zero
  sector that hides non-zero parent data is content and stays (the
  dosbox-x #4545 trap).

In place (the default), crash-safely and without a temporary copy:

1. set the BAT entries of the dropped blocks unallocated (barrier); their
   space is now leaked, the contents unchanged;
2. pack the blocks that stay (:func:`vhdcore.formats.vhd.repack.plan`): the blocks
   nearest the end of the file move into the lowest holes they fit, and
   holes smaller than a block (left by a crash, or the table room a grow or
   rebase leaves) are closed by sliding the later blocks down (copy,
   barrier, BAT entries, barrier: :meth:`VHD.relocate_blocks`);
3. write the footer right after the last block (barrier) and truncate.

A crash at any point leaves an image that reads the same, possibly with
leaked space; compacting again reclaims it.

With ``output``, the compacted image is written to a new file instead
(:func:`vhdcore.io.atomic.new_file`: a temporary name beside it, fsynced, then
linked into place) and the source
is only read. The copy keeps the source's identity (UUID, parent fields
and locators), so it can replace the source; its ``W2ru`` locator is
relative to the *source's* directory.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, List, Optional

import numpy as np

from ..._backend import kernels
from ...disk.extent import ZERO
from ...errors import UnsupportedError
from ...io import atomic
from ...io.sparse import write_sparse
from . import repack
from .constants import BAT_UNUSED, FOOTER_SIZE, SECTOR_SIZE
from .create import OVERWRITE_ADVICE, refuse_overwrite
from .image import open as open_image

__all__ = ["compact", "CompactResult"]


@dataclasses.dataclass
class CompactResult:
    """What :func:`compact` did (or, with ``dry_run``, would do)."""

    image: str
    output: Optional[str]
    type: str
    dry_run: bool
    blocks_before: int = 0
    blocks_dropped: int = 0
    blocks_moved: int = 0
    file_size_before: int = 0
    file_size_after: int = 0
    bytes_reclaimed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _read_zero(member, file_offset, length) -> bool:
    position = 0
    while position < length:
        chunk = min(4 << 20, length - position)
        data = member.image_file.pread(file_offset + position, chunk, "block data")
        if not kernels.is_zero(data):
            return False
        position += chunk
    return True


def _parent_reads_zero(image, offset, length) -> bool:
    members = image.chain
    for extent in image.parent_extents(offset, length):
        if extent.state != ZERO and not _read_zero(
            members[extent.depth], extent.file_offset, extent.length
        ):
            return False
    return True


def _droppable(image, block, buffer) -> bool:
    """Whether releasing ``block`` leaves the image reading the same."""
    block_size = image.block_size
    start = block * block_size
    length = min(block_size, image.footer.current_size - start)
    data_start = image.block_data_offset(block)
    view = memoryview(buffer)[:length]
    if image.parent is None:
        image.image_file.preadinto(data_start, view, f"data of block {block}")
        return kernels.is_zero(view)
    sectors = -(-length // SECTOR_SIZE)
    bitmap = image.bitmap(block)
    held = [(bit, count) for bit, count, is_set in kernels.bitmap_runs(bitmap, 0, sectors)
            if is_set]
    if not held:
        return True
    image.image_file.preadinto(data_start, view, f"data of block {block}")
    for bit, count in held:
        lo = bit * SECTOR_SIZE
        hi = min((bit + count) * SECTOR_SIZE, length)
        if not kernels.is_zero(view[lo:hi]):
            return False
    for bit, count in held:
        lo = start + bit * SECTOR_SIZE
        hi = min(start + (bit + count) * SECTOR_SIZE, start + length)
        if not _parent_reads_zero(image, lo, hi - lo):
            return False
    return True


def _scan(image, progress) -> List[int]:
    live = np.flatnonzero(image.bat != BAT_UNUSED).tolist()
    buffer = bytearray(image.block_size)
    drops = []
    for done, block in enumerate(live, 1):
        if _droppable(image, block, buffer):
            drops.append(block)
        if progress is not None:
            progress(done * image.block_size, len(live) * image.block_size)
    return drops


def _clear_stale_bits(image, drops) -> None:
    """Clear blktap's "full" bits of the blocks dropped and of unallocated ones.

    Before any BAT entry changes: a hint dropped early is harmless, one on
    an unallocated block makes blktap refuse the image.
    """
    batmap = getattr(image, "batmap", None)
    if batmap is None or not batmap.map_trusted:
        return
    table = image.bat.copy()
    table[drops] = BAT_UNUSED
    image.clear_batmap_bits(batmap.stale_blocks(table))


def compact(
    path,
    *,
    output=None,
    dry_run: bool = False,
    overwrite: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
    **open_options,
) -> CompactResult:
    """Release all-zero blocks of a dynamic or differencing image and close the holes.

    Args:
        path: the image.
        output: write the compacted image to this new file instead of
            changing ``path``.
        dry_run: only scan, and report what would be reclaimed in place.
        overwrite: let ``output`` replace an existing file.
        progress: optional ``progress(done, total)`` callback over the
            bytes of allocated blocks scanned.
        **open_options: chain options for :func:`vhdcore.open`
            (``allow_parent_dirs``, ``allow_symlinks``, ``max_chain_depth``).

    Returns:
        A :class:`CompactResult`; ``bytes_reclaimed`` is the file size
        before minus after (for ``output``, minus the output's size).

    Raises:
        UnsupportedError: a fixed image (it has no blocks to release).
        FileExistsError: ``output`` exists and ``overwrite`` is false.
    """
    began = time.monotonic()
    mode = "r" if (dry_run or output is not None) else "r+"
    with open_image(path, mode, **open_options) as image:
        if image.bat is None:
            raise UnsupportedError(
                f"{path}: a fixed image has no blocks to release; convert it to a dynamic "
                f"image to make it sparse"
            )
        result = CompactResult(os.fspath(path), None if output is None else os.fspath(output),
                               image.type, dry_run, blocks_before=image.allocated_blocks,
                               file_size_before=image.file_size)
        drops = _scan(image, progress)
        result.blocks_dropped = len(drops)
        dropped = set(drops)
        keep = [int(b) for b in np.flatnonzero(image.bat != BAT_UNUSED) if int(b) not in dropped]
        if output is not None and not dry_run:
            result.file_size_after = _write_compacted(image, keep, output, overwrite)
            result.blocks_moved = len(keep)
        else:
            batches, new_end = repack.plan(image, keep, full=True)
            result.blocks_moved = len({block for batch in batches for block, _to in batch})
            result.file_size_after = min(image.file_size, new_end + FOOTER_SIZE)
            if not dry_run:
                _clear_stale_bits(image, drops)
                image.release_blocks(drops)
                repack.apply(image, batches, new_end)
                result.file_size_after = image.file_size
    result.bytes_reclaimed = result.file_size_before - result.file_size_after
    result.seconds = round(time.monotonic() - began, 3)
    return result


def _write_compacted(image, keep, output, overwrite) -> int:
    """Write the image with only the ``keep`` blocks, packed, to ``output``; returns its size."""
    output = os.fspath(output)
    if not overwrite and os.path.lexists(output):
        raise FileExistsError(17, OVERWRITE_ADVICE, output)
    span = image.block_span
    header = image.header
    base = image.metadata_end
    meta = bytearray(image.image_file.pread(0, base, "metadata"))
    table = np.full(header.max_table_entries, BAT_UNUSED, dtype=np.uint32)
    position = base
    placed = []
    for block in keep:
        table[block] = position // SECTOR_SIZE
        placed.append((block, position))
        position += span
    raw_table = kernels.bat_encode(table)
    meta[header.table_offset : header.table_offset + len(raw_table)] = raw_table
    batmap = image.batmap
    if batmap is not None and batmap.map_trusted and batmap.end <= base:
        # The dropped blocks' bits, and any stale ones, do not survive the copy.
        updated = batmap.without(batmap.stale_blocks(table))
        meta[updated.header_offset : updated.header_offset + SECTOR_SIZE] = updated.to_bytes()
        meta[updated.batmap_offset : updated.batmap_offset + len(updated.map)] = updated.map
    with atomic.new_file(output, replace=overwrite, exists=refuse_overwrite(output)) as out:
        out.pwrite(0, meta)
        buffer = bytearray(min(span, 4 << 20))
        view = memoryview(buffer)
        for block, target in placed:
            source = int(image.bat[block]) * SECTOR_SIZE
            done = 0
            while done < span:
                chunk = min(len(view), span - done)
                image.image_file.preadinto(source + done, view[:chunk], "block data")
                # A new file: its zero stretches stay holes.
                write_sparse(out, target + done, view[:chunk], 0)
                done += chunk
        out.pwrite(position, image.footer.to_bytes())
    return position + FOOTER_SIZE

