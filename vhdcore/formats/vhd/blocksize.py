"""Which block sizes a new dynamic or differencing image may have, and which to warn on.

The specification allows any power of two from 512 bytes, and vhdcore
reads them all; but images are written to be read by other tools too:

* Below 4 KiB, qemu reads other data than was written. Its ``vpc``
  driver sizes the sector bitmap as ``block_size / 4096`` bytes rounded
  up to a sector, which is 0 for 512 B, 1 KiB and 2 KiB blocks: it then
  takes each block's bitmap sector for the first data sector and every
  sector after it for its successor (measured with qemu-img 7.2: 512,
  1024 and 2048 read back wrong; 4096 and up read back right). Such
  sizes are refused for new images.
* Peers write 512 KiB (Hyper-V's differencing disks, blktap's older
  images) or 2 MiB blocks (qemu, Hyper-V, blktap's ``vhd-util``, which
  assumes 2 MiB in places; Hyper-V accepts up to 256 MiB). Any other size
  is valid but less travelled: creating one gets a note.

``check`` judges existing images by its own rules; this module only
guards what vhdcore itself creates (``create`` and ``convert``).
"""

from __future__ import annotations

from typing import Optional

from ...errors import ArgumentLimitError
from ...sizes import format_size
from .constants import MAX_BLOCK_SIZE

#: Smallest block size qemu reads back correctly (its bitmap is 0 bytes below it).
MIN_PORTABLE_BLOCK_SIZE = 4096
#: The sizes other tools write.
PEER_BLOCK_SIZES = (512 * 1024, 2 * 1024 * 1024)


def check_new_block_size(block_size: int, where: str = "") -> Optional[str]:
    """Refuse a block size a new image must not have; return a note for an unusual one.

    Args:
        block_size: bytes per block.
        where: prefix for the messages (the image's path and ": "), if any.

    Returns:
        ``None`` for 512 KiB and 2 MiB, else a one-line note saying why
        the size may not suit other tools.

    Raises:
        LimitError: not a power of two, above 256 MiB, or below 4 KiB
            (with the reason: qemu would read other data than written).
    """
    if block_size <= 0 or block_size & (block_size - 1) or block_size > MAX_BLOCK_SIZE:
        raise ArgumentLimitError(
            f"{where}block size {block_size} must be a power of two from "
            f"{format_size(MIN_PORTABLE_BLOCK_SIZE)} to {format_size(MAX_BLOCK_SIZE)}"
        )
    if block_size < MIN_PORTABLE_BLOCK_SIZE:
        raise ArgumentLimitError(
            f"{where}block size {block_size} is below {format_size(MIN_PORTABLE_BLOCK_SIZE)}, "
            f"which qemu misreads: it sizes a block's bitmap as block_size / 4096 bytes (0 "
            f"here) and reads the bitmap sector as data; use 4 KiB or more (other tools use "
            f"512 KiB or 2 MiB)"
        )
    if block_size in PEER_BLOCK_SIZES:
        return None
    return (
        f"block size {format_size(block_size)} is unusual: qemu, Hyper-V and blktap write "
        f"512 KiB or 2 MiB blocks (blktap assumes 2 MiB in places; Hyper-V accepts up to "
        f"256 MiB)"
    )


__all__ = ["MIN_PORTABLE_BLOCK_SIZE", "PEER_BLOCK_SIZES", "check_new_block_size"]
