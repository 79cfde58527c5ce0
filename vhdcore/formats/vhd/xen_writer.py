"""The conversion writer for ``--xen``: a dynamic VHD laid out as blktap lays it out.

Kept apart from :mod:`vhdcore.formats.vhd.xen` so that opening an image never imports
the conversion writers.
"""

from __future__ import annotations

from . import layout
from .constants import BAT_UNUSED, SECTOR_SIZE
from .writers import DynamicWriter
from .xen import (
    TAP_CREATOR,
    XEN_BLOCK_SIZE,
    batmap_sectors,
    block_start,
    check_block_size,
    new_batmap,
)

__all__ = ["XenDynamicWriter"]


class XenDynamicWriter(DynamicWriter):
    """A dynamic VHD laid out as blktap lays it out (see :mod:`vhdcore.formats.vhd.xen`).

    Every block this writer allocates is stored whole with an all-ones
    bitmap, so each gets its batmap bit.
    """

    bat_padding = b"\0"  # vhd_create_bat zeroes the table before the entries

    def __init__(self, out, block_size: int = XEN_BLOCK_SIZE, plan=None, *, uuid=None,
                 timestamp=None):
        check_block_size(block_size)
        super().__init__(out, block_size, plan, uuid=uuid, timestamp=timestamp,
                         creator=TAP_CREATOR)

    def _data_start(self) -> int:
        self.batmap_at = layout.table_end(self.capacity)
        return layout.metadata_end(self.capacity, batmap_sectors(self.capacity))

    def _allocate(self, block: int) -> int:
        position = block_start(self.next_free, len(self.bitmap))
        self.bat[block] = position // SECTOR_SIZE
        self.next_free = position + self.span
        self.blocks_allocated += 1
        return position

    def _write_metadata(self, virtual_size: int) -> None:
        super()._write_metadata(virtual_size)
        import numpy as np

        entries = self.table_entries
        table = np.frombuffer(self.bat, dtype=np.uint32)[:entries]
        full = np.flatnonzero(table != BAT_UNUSED)
        batmap = new_batmap(self.batmap_at, entries, full, virtual_size)
        self.out.pwrite(self.batmap_at, batmap.to_bytes())
        self.out.pwrite(batmap.batmap_offset, batmap.map)
