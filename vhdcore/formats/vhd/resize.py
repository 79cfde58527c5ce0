"""Growing and shrinking images, and rewriting dynamic-disk metadata in place.

Fixed disks are data followed by the footer, so a resize moves the footer:
growing writes the new footer at the new end first (the file now ends in
a valid footer of the new size, whose ``original_size`` still names the
old end as a mark of unfinished work), then zeroes the old footer's
sector, which has become data, then rewrites the footer without the mark.
A crash in between leaves the new size with the old footer's 512 bytes
showing at the old end; resizing again to the same size finds the mark
and zeroes them. Shrinking writes the new footer inside the removed range
and then truncates the file after it.

Dynamic and differencing disks keep their data in blocks, so the virtual
size is the footer's ``current_size`` and the BAT must have an entry for
every block. When the table has to grow past the sectors reserved for it,
the space after it is usually the first data block (or parent locators,
or blktap's batmap). :func:`rewrite_metadata` makes room the way vhd-util
does, but without a journal, by ordering writes so that every
intermediate state is a valid image:

1. move every block that lies in the way to the end of the file (copy,
   barrier, BAT entry, barrier: :meth:`VHD.relocate_blocks`);
2. write locator payloads that must move to space nothing references;
3. write the header with the new locator offsets (old table size);
4. fill the new table entries with "unallocated" and write the new batmap;
5. write the header with the new table size;
6. (the caller) write the footers: the primary at the end of the file, then
   the copy at offset 0.

A crash between any two steps leaves an image that opens and reads as
before, with leaked space at worst; rerunning the resize finishes it.

A dynamic disk's table never shrinks: entries past the virtual size are
released (set unallocated) so a later grow cannot resurrect old data.
After a shrink the last blocks move into the space the released ones
leave and the file is cut after them (:func:`vhdcore.formats.vhd.repack.settle`).
A grow that moves blocks out of the table's way leaves the rest of their
space (less than a block) as table room before the first block, as
blktap's resize does: the next grow or rebase uses it without moving data,
``check`` does not call it a leak, and ``compact`` gives it back.

Geometry follows the new size (the specification's CHS). When the creator
is one whose size peers read from CHS (``vpc ``, ``qemu``) and CHS cannot
express the new size exactly, the creator becomes ``win `` (as
:func:`vhdcore.create` writes), so every peer reads ``current_size``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import List, Optional

import numpy as np

from ..._backend import kernels
from ...disk.extent import ZERO
from ...errors import ArgumentLimitError, VHDError
from . import bat as batmod
from . import repack
from .chain import locator_payloads
from .constants import (
    BAT_UNUSED,
    DISK_FIXED,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    MAX_DYNAMIC_SIZE,
    MAX_FIXED_SIZE,
    SECTOR_SIZE,
)
from .footer import (
    DEFAULT_CREATOR_APP,
    DEFAULT_CREATOR_OS,
    DEFAULT_CREATOR_VERSION,
    Footer,
    vhd_timestamp,
)
from .geometry import chs_for_sectors, size_rule
from .header import ParentLocator, encode_parent_name
from .image import open as open_image

__all__ = ["resize", "rewrite_metadata", "ResizeResult"]

_ZEROS = bytes(1 << 20)


def _round(value: int) -> int:
    return -(-value // SECTOR_SIZE) * SECTOR_SIZE


# ----------------------------------------------------------------------
# metadata relayout (shared with rebase)


def _free_intervals(start, end, taken):
    """Pieces of ``[start, end)`` not covered by any ``(lo, hi)`` in ``taken``."""
    free = []
    position = start
    for lo, hi in sorted(taken):
        if hi <= position:
            continue
        if lo >= end:
            break
        if lo > position:
            free.append((position, lo))
        position = max(position, hi)
    if position < end:
        free.append((position, end))
    return free


def _first_fit(intervals, sizes):
    """Offsets placing each size in ``intervals`` (first fit), or None if one does not fit."""
    intervals = [list(pair) for pair in intervals]
    placed = []
    for size in sizes:
        for pair in intervals:
            lo = _round(pair[0])
            if pair[1] - lo >= size:
                placed.append(lo)
                pair[0] = lo + size
                break
        else:
            return None
    return placed


def rewrite_metadata(
    image,
    *,
    max_table_entries: Optional[int] = None,
    locators=None,
    parent_uuid=None,
    parent_timestamp: Optional[int] = None,
    parent_name: Optional[str] = None,
) -> dict:
    """Grow the BAT and/or replace the parent fields of an open dynamic image.

    The crash-safe sequence is in the module docstring. Locator payloads
    always go to space the current header does not reference (a free gap
    after the tables, or room made by moving the first blocks to the end),
    so that until the header is rewritten the old locators stay intact.

    Args:
        image: a dynamic or differencing :class:`~vhdcore.formats.vhd.image.VHD` open ``"r+"``.
        max_table_entries: the BAT size wanted (only ever grows).
        locators: ``[(code, payload)]`` replacing every locator, or None
            to keep them (they move only if the grown table needs their space).
        parent_uuid, parent_timestamp, parent_name: new parent fields.

    Returns:
        ``{"blocks_moved", "table_entries", "locators_at", "locator_placement"}``
        where placement is ``"unchanged"``, ``"gap"`` (free space after
        the tables) or ``"appended"`` (room made by moving blocks).
    """
    f = image.image_file
    header = image.header
    table = header.table_offset
    old_entries = header.max_table_entries
    new_entries = max(old_entries, max_table_entries or 0)
    old_bat_end = table + batmod.bat_bytes(old_entries)
    new_bat_end = table + batmod.bat_bytes(new_entries)
    grow = new_bat_end > old_bat_end
    differencing = image.type == "differencing"
    # Entries past the virtual size are ignored by readers but must not keep
    # pointing at space this relayout may hand out.
    _release_stale_entries(image, len(image.bat), old_entries)
    batmap = image.batmap
    new_batmap = None

    # The tables region of the new layout: BAT, then (when the BAT grows)
    # the batmap header and map right after it, where blktap looks for them.
    tables_end = old_bat_end
    taken = []
    if batmap is not None:
        taken += batmap.extents
        tables_end = max(tables_end, batmap.end)
    if grow:
        tables_end = max(tables_end, new_bat_end)
        if batmap is not None:
            map_bytes = _round(-(-new_entries // 8))
            new_map = bytearray(map_bytes)
            if batmap.map_trusted:
                keep = old_entries // 8
                new_map[:keep] = batmap.map[:keep]
                if old_entries % 8:
                    mask = (0xFF00 >> (old_entries % 8)) & 0xFF
                    new_map[keep] = batmap.map[keep] & mask
            new_batmap = dataclasses.replace(
                batmap, batmap_offset=new_bat_end + SECTOR_SIZE,
                batmap_size=map_bytes // SECTOR_SIZE, header_offset=new_bat_end,
            ).with_map(bytes(new_map))
            # A stale "full" bit must not survive the move (blktap refuses it).
            new_batmap = new_batmap.without(new_batmap.stale_blocks(image.bat))
            tables_end = max(tables_end, new_bat_end + SECTOR_SIZE + map_bytes)

    # Which locator payloads need a (new) place?
    used = header.used_locators if differencing else []
    for _index, loc in used:
        taken.append((loc.data_offset, loc.data_end))
    slots = list(header.locators)
    to_place = []  # (slot, code, payload, space)
    if locators is not None:
        slots = [ParentLocator.unused()] * len(slots)
        for slot, (code, payload) in enumerate(locators):
            to_place.append((slot, code, bytes(payload), _round(max(len(payload), 1))))
    elif grow and used:
        payloads = locator_payloads(image)
        for index, loc in used:
            if loc.data_offset < tables_end and loc.data_end > old_bat_end:
                data = payloads.get(index, b"")
                to_place.append((index, loc.code, data, _round(max(loc.space_bytes, len(data), 1))))

    live = np.flatnonzero(image.bat != BAT_UNUSED)
    starts = {int(b): int(image.bat[b]) * SECTOR_SIZE for b in live}
    moving = [b for b, s in starts.items() if s < tables_end]
    staying = [s for b, s in starts.items() if s >= tables_end]
    limit = min(staying) if staying else image.next_free
    sizes = [space for *_rest, space in to_place]
    placement = "unchanged"
    offsets = []
    footer_at = None
    if to_place:
        offsets = _first_fit(_free_intervals(tables_end, limit, taken), sizes)
        placement = "gap"
        if offsets is None:
            placement = "appended"
            start = _round(max([tables_end] + [hi for _lo, hi in taken]))
            offsets = []
            for size in sizes:
                offsets.append(start)
                start += size
            moving = [b for b, s in starts.items() if s < start]
            tables_end = max(tables_end, start)
    if not moving and tables_end > f.size() - FOOTER_SIZE:
        # No block lies in the way but the new metadata reaches the footer
        # (an image without blocks): the footer moves out of the way first.
        # (Moved blocks take it along by themselves.)
        footer_at = tables_end

    # 1. blocks out of the way (copy, barrier, BAT, barrier)
    moving.sort(key=lambda b: starts[b])
    if moving:
        image.relocate_blocks([(b, None) for b in moving], after=tables_end)
    # 2. payloads in unreferenced space (the footer first if they reach it)
    if footer_at is not None:
        f.pwrite(footer_at, image.footer.to_bytes())
        f.flush()
    for (slot, code, data, space), offset in zip(to_place, offsets):
        f.pwrite(offset, data + bytes(space - len(data)))
        slots[slot] = ParentLocator(code, space, len(data), 0, offset)
    # 3. header with the new locators and parent fields, old table size
    changes = {}
    if to_place:
        changes["locators"] = tuple(slots)
    if parent_uuid is not None:
        changes["parent_uuid"] = parent_uuid
    if parent_timestamp is not None:
        changes["parent_timestamp"] = parent_timestamp
    if parent_name is not None:
        changes["parent_name_raw"] = encode_parent_name(parent_name)
    if changes:
        f.flush()
        image.store_header(dataclasses.replace(header, **changes).with_checksum())
        f.flush()
    # 4. the new table entries (and batmap), then 5. the header that uses them
    if new_entries > old_entries:
        first = table + old_entries * 4
        position = first
        while position < new_bat_end:
            chunk = min(new_bat_end - position, len(_ZEROS))
            f.pwrite(position, b"\xff" * chunk)
            position += chunk
        if new_batmap is not None:
            f.pwrite(new_bat_end, new_batmap.to_bytes() + new_batmap.map)
        f.flush()
        image.store_header(
            dataclasses.replace(image.header, max_table_entries=new_entries).with_checksum()
        )
        f.flush()
    image.reload()
    at = [loc.data_offset for _i, loc in image.header.used_locators] if differencing else []
    return {
        "blocks_moved": len(moving),
        "table_entries": [old_entries, new_entries],
        "locator_placement": placement,
        "locators_at": at,
    }


# ----------------------------------------------------------------------
# resize


@dataclasses.dataclass
class ResizeResult:
    """What :func:`resize` did."""

    image: str
    type: str
    old_size: int
    new_size: int
    blocks_moved: int = 0
    blocks_released: int = 0
    table_entries: Optional[List[int]] = None
    creator: str = ""
    notes: List[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _new_footer(footer, size, notes):
    geometry = chs_for_sectors(size // SECTOR_SIZE)
    # libvhdi (vhdiinfo 20210425) reports original_size as the media size,
    # so both fields follow the resize; the specification calls the
    # original size informational.
    # A strictly newer timestamp marks the primary footer (written first) as
    # the one to trust if a crash leaves the copy at offset 0 behind.
    changes = {
        "current_size": size, "original_size": size, "geometry": geometry,
        "timestamp": max(vhd_timestamp(time.time()), footer.timestamp + 1),
    }
    if size_rule(footer.creator_app, geometry) == "chs" and geometry.size != size:
        # CHS cannot say this size and this creator makes peers read CHS.
        changes.update(creator_app=DEFAULT_CREATOR_APP, creator_version=DEFAULT_CREATOR_VERSION,
                       creator_os=DEFAULT_CREATOR_OS)
        notes.append(
            f"creator changed from {footer.creator_app.decode('latin-1')!r} to "
            f"{DEFAULT_CREATOR_APP.decode('latin-1')!r}: CHS {geometry} gives {geometry.size} "
            f"bytes, so peers must read the current size"
        )
    return dataclasses.replace(footer, **changes).with_checksum()


def _removed_range_is_empty(image, start, end) -> Optional[int]:
    """The first offset in ``[start, end)`` that reads non-zero, or None."""
    if end <= start:
        return None
    for extent in image.extents(start, end - start):
        if extent.state == ZERO:
            continue
        position = extent.offset
        while position < extent.end:
            length = min(4 << 20, extent.end - position)
            data = image.read(position, length)
            found = kernels.find_nonzero(data)
            if 0 <= found < length:
                return position + found
            position += length
    return None


def _clear_tail(image, block, start_in_block):
    """Zero the data and clear the bitmap bits of ``block`` from ``start_in_block`` on.

    Keeps bytes past the virtual size zero and unowned, so growing the
    disk later shows zeros (or the parent) there, never old data.
    """
    entry = int(image.bat[block])
    if entry == BAT_UNUSED or start_in_block >= image.block_size:
        return
    f = image.image_file
    data_start = image.block_data_offset(block)
    position = start_in_block
    while position < image.block_size:
        chunk = min(len(_ZEROS), image.block_size - position)
        f.pwrite(data_start + position, memoryview(_ZEROS)[:chunk])
        position += chunk
    bitmap = bytearray(image.bitmap(block))
    first = -(-start_in_block // SECTOR_SIZE)
    count = image.block_size // SECTOR_SIZE - first
    if count > 0 and kernels.bitmap_count(bitmap, first, count):
        kernels.bitmap_fill(bitmap, first, count, False)
        image.store_bitmap(block, bitmap)


def _release_stale_entries(image, first, last) -> None:
    """Set on-disk BAT entries ``[first, last)`` (past the old size) unallocated."""
    if last <= first:
        return
    image.clear_batmap_bits(range(first, last))
    f = image.image_file
    table = image.header.table_offset
    raw = f.pread(table + first * 4, (last - first) * 4, "block allocation table")
    if raw != b"\xff" * len(raw):
        f.pwrite(table + first * 4, b"\xff" * len(raw))
        f.flush()


def resize(path, size: int, *, force: bool = False, **open_options) -> ResizeResult:
    """Change the virtual size of a fixed, dynamic or differencing image.

    Args:
        path: the image, resized in place.
        size: the new virtual size in bytes (rounded up to a sector).
        force: shrink even when the removed range holds non-zero data.
        **open_options: chain options for :func:`vhdcore.open`
            (``allow_parent_dirs``, ``allow_symlinks``, ``max_chain_depth``).

    Returns:
        A :class:`ResizeResult`.

    Raises:
        LimitError: the size is out of range for the type.
        VHDError: shrinking would drop data and ``force`` is false.
    """
    began = time.monotonic()
    notes = []
    rounded = _round(size)
    if rounded != size:
        notes.append(f"size {size} rounded up to {rounded} bytes (a whole sector)")
    with open_image(path, "r+", **open_options) as image:
        result = ResizeResult(os.fspath(path), image.type, image.virtual_size, rounded,
                              notes=notes)
        limit = MAX_FIXED_SIZE if image.type == "fixed" else MAX_DYNAMIC_SIZE
        if rounded > limit or rounded <= 0:
            raise ArgumentLimitError(
                f"{path}: size {rounded} bytes is outside 1..{limit} bytes for a {image.type} VHD"
            )
        old = image.virtual_size
        if rounded < old and not force:
            found = _removed_range_is_empty(image, rounded, old)
            if found is not None:
                raise VHDError(
                    f"{path}: shrinking to {rounded} bytes would drop data: offset {found} "
                    f"is not zero (use --force to shrink anyway)"
                )
        footer = _new_footer(image.footer, rounded, notes)
        if image.footer.disk_type == DISK_FIXED:
            _resize_fixed(image, footer, rounded)
        else:
            _resize_dynamic(image, footer, rounded, result)
        image.flush()
        result.creator = image.footer.creator_app.decode("latin-1")
    result.seconds = round(time.monotonic() - began, 3)
    return result


def _resize_fixed(image, footer, size) -> None:
    f = image.image_file
    old_end = image.footer_offset
    if size > old_end:
        # The new footer first, so the file ends in a valid footer of the new
        # size; its original_size still names the old end, which marks the
        # grow as unfinished. Then the old footer's sector (now data) is
        # zeroed, then the footer written for good. A rerun after a crash
        # in between finds the mark and finishes (see _finish_fixed_grow).
        marked = dataclasses.replace(footer, original_size=old_end).with_checksum()
        f.pwrite(size, marked.to_bytes())
        f.flush()
        f.pwrite(old_end, bytes(FOOTER_SIZE))
        f.flush()
        f.pwrite(size, footer.to_bytes())
    elif size == old_end:
        _finish_fixed_grow(image, footer)
    else:
        # Shrinking: the new footer inside the removed range, then cut the rest.
        f.pwrite(size, footer.to_bytes())
        f.flush()
        f.truncate(size + FOOTER_SIZE)
    f.flush()
    image.reload()


def _finish_fixed_grow(image, footer) -> None:
    """Zero an old footer left inside the data by an interrupted grow; settle the footer."""
    f = image.image_file
    stale_at = image.footer.original_size
    if 0 <= stale_at < image.footer_offset and stale_at % SECTOR_SIZE == 0:
        old = Footer.from_bytes(f.pread(stale_at, FOOTER_SIZE, "old footer"))
        if (
            old.cookie == FOOTER_COOKIE
            and old.checksum == old.computed_checksum
            and old.uuid == image.footer.uuid
            and old.current_size == stale_at
        ):
            f.pwrite(stale_at, bytes(FOOTER_SIZE))
            f.flush()
    if footer.to_bytes() != image.footer.to_bytes():
        f.pwrite(image.footer_offset, footer.to_bytes())


def _resize_dynamic(image, footer, size, result) -> None:
    f = image.image_file
    block_size = image.block_size
    old_current = image.footer.current_size
    old_blocks = len(image.bat)
    new_blocks = batmod.blocks_needed(size, block_size)
    entries = image.header.max_table_entries
    if size < old_current:
        # Release what lies past the new end, then shrink the footers: a
        # crash in between leaves the old size reading zeros there.
        gone = [int(b) for b in np.flatnonzero(image.bat[new_blocks:] != BAT_UNUSED) + new_blocks]
        image.release_blocks(gone)
        # Hints left on blocks already unallocated past the new end go too.
        image.clear_batmap_bits(range(new_blocks, entries))
        result.blocks_released = len(gone)
        if size % block_size:
            _clear_tail(image, size // block_size, size % block_size)
        _release_stale_entries(image, old_blocks, entries)
        f.flush()
        image.store_footer(footer)
        f.flush()
        # The released blocks' space: the last blocks move into it and the
        # file is cut after them (a crash before leaves leaked space only).
        result.blocks_moved = repack.settle(image)
    else:
        # Make sure the range being added holds nothing: the tail of the old
        # last block, and table entries past the old size.
        if old_current % block_size and old_blocks:
            _clear_tail(image, old_blocks - 1, old_current % block_size)
        done = rewrite_metadata(image, max_table_entries=new_blocks)
        result.blocks_moved = done["blocks_moved"]
        f.flush()
        image.store_footer(footer)
    result.table_entries = [entries, max(entries, new_blocks)]
    f.flush()
    image.reload()
