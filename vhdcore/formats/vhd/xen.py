"""Images for Xen / XCP-ng: the layout blktap's libvhd writes.

XenServer and XCP-ng grow a disk with blktap's ``vhd-util resize``, which
refuses any image whose creator is not ``tap`` ("not created by xen;
resize not supported"). ``--xen`` (``xen=True``) therefore writes what
blktap's own ``vhd-util create`` / ``snapshot`` write (blktap
``vhd/lib/libvhd.c``):

* footer (``vhd_initialize_footer``): creator application ``tap\\0``,
  version 1.3 (``VHD_CURRENT_VERSION``, the newest ``vhd-util check``
  accepts), host OS 0;
* 2 MiB blocks only: libvhd sizes its batmap, checksum and resize from
  ``VHD_BLOCK_SHIFT`` (21) whatever the header says;
* a batmap (``vhd_create_batmap``): header sector (cookie ``tdbatmap``)
  right after the sector-padded BAT, the map in the sectors after it
  (``max(1, ceil(ceil(entries / 8) / 512))`` of them), version 1.2, its
  checksum over the map; parent locators follow the map;
* each block placed as ``__vhd_io_allocate_block`` places it: at the end
  of the data, moved forward so that the block's *data* (after its bitmap
  sector) starts on a 4 KiB page;
* a batmap bit set for each block whose sector bitmap is full, blktap's
  fast path (it then reads the block without its bitmap). A set bit on a
  block whose bitmap is not full would hide a differencing disk's parent,
  so a bit is only ever set once the full bitmap is on disk.

The batmap is read by :mod:`vhdcore.formats.vhd.batmap`; this module writes it, and
:mod:`vhdcore.formats.vhd.xen_writer` is the conversion writer for this layout.
"""

from __future__ import annotations

from collections.abc import Iterable

from ...errors import LimitError
from ...sizes import format_size
from .batmap import BATMAP_VERSION_1_2, Batmap, find_batmap
from .constants import BAT_UNUSED, BATMAP_COOKIE, SECTOR_SIZE

__all__ = [
    "PAGE_SIZE",
    "TAP_CREATOR",
    "XEN_BLOCK_SIZE",
    "batmap_sectors",
    "blktap_map_blocks",
    "block_start",
    "check_block_size",
    "hidden_flag",
    "is_tap",
    "new_batmap",
    "store_full_bits",
]

#: (application, version, host OS) as ``vhd_initialize_footer`` writes them.
TAP_CREATOR: tuple[bytes, int, bytes] = (b"tap\0", 0x00010003, b"\0\0\0\0")
#: The only block size blktap handles (``VHD_BLOCK_SIZE``).
XEN_BLOCK_SIZE = 2 << 20
#: blktap puts each block's data on a page boundary.
PAGE_SIZE = 4096


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def is_tap(footer) -> bool:
    """Whether blktap takes the image for its own (``vhd_creator_tapdisk``)."""
    return bytes(footer.creator_app[:3]) == b"tap"


def hidden_flag(footer, copy=None) -> int:
    """blktap's hidden flag as ``vhd_hidden`` reads it.

    The footer's first reserved byte; but tap 0.1 and 1.1 dynamic images
    kept it only in the copy at offset 0 (``copy``), so it is read there.
    """
    legacy = is_tap(footer) and footer.creator_version in (0x00000001, 0x00010001)
    if legacy and footer.disk_type in (3, 4) and copy is not None:
        return copy.hidden
    return footer.hidden


def check_block_size(block_size: int, where: str = "") -> None:
    """Refuse any block size but 2 MiB for a Xen image, saying why.

    Raises:
        LimitError: ``block_size`` is not 2 MiB.
    """
    if block_size != XEN_BLOCK_SIZE:
        prefix = f"{where}: " if where else ""
        raise LimitError(
            f"{prefix}--xen needs 2 MiB blocks, not {format_size(block_size)}: blktap "
            f"assumes 2 MiB blocks whatever the header says (it reads only the first "
            f"128 MiB of a 512 KiB-block image)"
        )


def batmap_sectors(entries: int) -> int:
    """Sectors of map for ``entries`` BAT entries (``secs_round_up_no_zero``)."""
    map_bytes = -(-entries // 8)
    return max(1, -(-map_bytes // SECTOR_SIZE))


def blktap_map_blocks(current_size: int) -> int:
    """How many blocks blktap's map covers for a disk of ``current_size`` bytes.

    blktap reads and checksums only ``max(1, ceil((size >> 24) / 512))``
    sectors of the map (``vhd_read_batmap_map``), which can be one sector
    short of the map it wrote; a bit beyond them would change our checksum
    but not blktap's, so none is ever set there.
    """
    return max(1, -(-(current_size >> 24) // SECTOR_SIZE)) * SECTOR_SIZE * 8


def block_start(position: int, bitmap_bytes: int) -> int:
    """Where blktap puts a block whose space may start at ``position``.

    The first sector at or after ``position`` from which the bitmap's
    sectors end on a page boundary, so the data is page-aligned.
    """
    data = _round_up(_round_up(position, SECTOR_SIZE) + bitmap_bytes, PAGE_SIZE)
    return data - bitmap_bytes


def new_batmap(header_offset: int, entries: int, full: Iterable[int] = (),
               current_size: int = 0) -> Batmap:
    """A version 1.2 batmap at ``header_offset`` with the bits of ``full`` set.

    Args:
        header_offset: where the header sector goes (right after the BAT).
        entries: the BAT's entries (the map holds one bit each).
        full: blocks whose sector bitmap is full.
        current_size: the disk's size; bits blktap does not read are left clear.
    """
    import numpy as np

    sectors = batmap_sectors(entries)
    limit = min(entries, blktap_map_blocks(current_size))
    blocks = np.asarray(list(full) if not hasattr(full, "__array__") else full, dtype=np.int64)
    bits = np.zeros(sectors * SECTOR_SIZE * 8, dtype=np.uint8)
    bits[blocks[(blocks >= 0) & (blocks < limit)]] = 1
    empty = Batmap(BATMAP_COOKIE, header_offset + SECTOR_SIZE, sectors, BATMAP_VERSION_1_2,
                   0, 0, header_offset=header_offset)
    return empty.with_map(np.packbits(bits).tobytes())


def store_full_bits(file, footer, header, table, blocks, is_full) -> Batmap | None:
    """Set the batmap bits of ``blocks`` in the image file, blktap's way.

    The batmap is read afresh (another step may have moved or changed it)
    and changed only when its checksum holds; a block is marked only if it
    is still allocated and ``is_full(block)`` says its bitmap on disk is
    full. Map first, then the header that carries its checksum, as
    ``vhd_write_batmap`` does. The caller makes the bitmaps durable first.

    Returns:
        The batmap now on disk (None when the image has none).
    """
    batmap = find_batmap(footer, header, lambda o, n: file.pread(o, n, "batmap"), file.size())
    if batmap is None or not batmap.map_trusted or batmap.batmap_version > BATMAP_VERSION_1_2:
        return batmap
    limit = min(len(table), batmap.batmap_size * SECTOR_SIZE * 8,
                blktap_map_blocks(footer.current_size))
    bits = bytearray(batmap.map)
    changed = False
    for block in sorted(blocks):
        if block >= limit or table[block] == BAT_UNUSED:
            continue
        mask = 0x80 >> (block & 7)
        if not bits[block >> 3] & mask and is_full(block):
            bits[block >> 3] |= mask
            changed = True
    if not changed:
        return batmap
    batmap = batmap.with_map(bytes(bits))
    file.pwrite(batmap.batmap_offset, batmap.map)
    file.pwrite(batmap.header_offset, batmap.to_bytes())
    return batmap
