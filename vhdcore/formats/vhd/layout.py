"""Where a VHD's structures lie in its file: the one place that says so.

A dynamic or differencing disk is laid out as: the footer copy at 0, the
dynamic header at :data:`HEADER_OFFSET`, the block allocation table at
:data:`TABLE_OFFSET` (as vhdcore, qemu and Hyper-V write it; readers take
the header's ``table_offset``), then blocks, then the footer. A fixed disk
is the data followed by the footer. The footer is the last 512 bytes, or
the last 511 in images from before Virtual PC 2004.
"""

from __future__ import annotations

from typing import Callable, List, Tuple

from .constants import FOOTER_COOKIE, FOOTER_SIZE, LEGACY_FOOTER_SIZE, SECTOR_SIZE

#: The dynamic header follows the footer copy.
HEADER_OFFSET = FOOTER_SIZE
#: The table follows the dynamic header (512 + 1024).
TABLE_OFFSET = 1536


def table_end(entries: int) -> int:
    """The first byte after a new disk's table of ``entries`` entries (padded to a sector)."""
    from .bat import bat_bytes  # bat imports this module

    return TABLE_OFFSET + bat_bytes(entries)


def metadata_end(entries: int, batmap_sectors: int = 0) -> int:
    """The first byte after a new disk's fixed metadata: the table and, for blktap's
    layout (``batmap_sectors`` > 0), the batmap's header sector and map after it.
    Locators and blocks go from here."""
    end = table_end(entries)
    return end + (1 + batmap_sectors) * SECTOR_SIZE if batmap_sectors else end


def encode_table(entries_array, entries: int, padding: bytes = b"\xff") -> bytes:
    """The on-disk table: ``entries`` big-endian entries, the last sector padded.

    ``entries_array`` is the decoded table (uint32), or ``None`` for a new
    disk's (every entry unused). qemu pads with ``0xFF`` (unused entries),
    blktap with zeros.
    """
    from ..._backend import kernels
    from .constants import BAT_UNUSED

    table = bytearray(padding * (table_end(entries) - TABLE_OFFSET))
    if entries_array is None:
        table[: entries * 4] = BAT_UNUSED.to_bytes(4, "big") * entries
    else:
        table[: entries * 4] = kernels.bat_encode(entries_array[:entries])
    return bytes(table)


def new_metadata(footer: bytes, header: bytes, table: bytes) -> List[Tuple[int, bytes]]:
    """``[(offset, bytes)]`` of a new dynamic disk's leading structures: the footer
    copy, the dynamic header and the table, where :data:`HEADER_OFFSET` and
    :data:`TABLE_OFFSET` put them."""
    return [(0, footer), (HEADER_OFFSET, header), (TABLE_OFFSET, table)]


def footer_offset_for(file_size: int) -> int:
    """Where the primary footer starts in a file of ``file_size`` bytes.

    A file whose size is 511 mod 512 carries a legacy 511-byte footer.
    """
    if file_size % SECTOR_SIZE == LEGACY_FOOTER_SIZE:
        return file_size - LEGACY_FOOTER_SIZE
    return file_size - FOOTER_SIZE


def read_primary_footer(read: Callable[[int, int, str], bytes],
                        file_size: int) -> Tuple[bytes, int, bool]:
    """The primary footer's bytes, its offset, and whether they are a legacy 511.

    The last 512 bytes, unless they do not start with the cookie and the
    file is 511 mod 512 long: then the last 511. Nothing is validated.

    Args:
        read: ``read(offset, length, what) -> bytes`` (an ImageFile's
            ``pread``, or check's counting reader).
        file_size: the file's length.
    """
    offset = file_size - FOOTER_SIZE
    raw = read(offset, FOOTER_SIZE, "footer") if offset >= 0 else b""
    if raw[:8] != FOOTER_COOKIE and file_size % SECTOR_SIZE == LEGACY_FOOTER_SIZE:
        offset = file_size - LEGACY_FOOTER_SIZE
        return read(offset, LEGACY_FOOTER_SIZE, "footer"), offset, True
    return raw, offset, False


__all__ = [
    "HEADER_OFFSET",
    "TABLE_OFFSET",
    "encode_table",
    "footer_offset_for",
    "metadata_end",
    "new_metadata",
    "read_primary_footer",
    "table_end",
]
