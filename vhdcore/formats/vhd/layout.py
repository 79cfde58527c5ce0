"""Where a VHD's structures lie in its file: the one place that says so.

A dynamic or differencing disk is laid out as: the footer copy at 0, the
dynamic header at :data:`HEADER_OFFSET`, the block allocation table at
:data:`TABLE_OFFSET` (as vhdcore, qemu and Hyper-V write it; readers take
the header's ``table_offset``), then blocks, then the footer. A fixed disk
is the data followed by the footer. The footer is the last 512 bytes, or
the last 511 in images from before Virtual PC 2004.
"""

from __future__ import annotations

from typing import Callable, Tuple

from .constants import FOOTER_COOKIE, FOOTER_SIZE, LEGACY_FOOTER_SIZE, SECTOR_SIZE

#: The dynamic header follows the footer copy.
HEADER_OFFSET = FOOTER_SIZE
#: The table follows the dynamic header (512 + 1024).
TABLE_OFFSET = 1536


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


__all__ = ["HEADER_OFFSET", "TABLE_OFFSET", "footer_offset_for", "read_primary_footer"]
