"""The VHD writers conversion uses: fixed and dynamic output, file or stream.

* fixed: the raw layout (holes included), then the 512-byte footer.
* dynamic: footer copy, dynamic header and BAT where
  :mod:`vhdcore.formats.vhd.layout` puts them (the BAT padded to a sector
  with 0xFF, as qemu does), the blocks in virtual order right after it,
  the footer. A block is allocated only if it holds a non-zero byte.
  Inside an allocated block only the non-zero stretches are written
  (judged in :data:`~vhdcore.disk.zeros.SPARSE_GRANULARITY` chunks aligned
  to the disk, as ``qemu-img convert`` does), so on a file its zero
  stretches stay holes wherever they cover a whole file-system block: the
  output occupies the data plus metadata, never the whole of each block.
  Its sector bitmap is all ones. Why all ones rather than exactly the
  non-zero sectors: the block's data area reads as zeros wherever it is
  not written, so a precise bitmap would change no contents and save no
  space; qemu, Hyper-V and dissect ignore a dynamic disk's bitmap, qemu
  itself writes all ones, and all ones can never hide data from a reader
  that honours the bitmap (``vhd-util check -b`` flags "data where bitmap
  is clear", which an exact bitmap of a block later written by a guest can
  trip). It also spares a per-sector scan of every allocated block.

On a seekable file the dynamic writer learns the allocation as it goes and
writes the BAT last. On a pipe the BAT must come first, so the caller runs
a pre-pass (:func:`vhdcore.disk.writers.plan_blocks`) over a seekable
source and hands the writer the list of blocks to allocate; the second
pass then writes exactly the layout the file writer would have produced.
"""

from __future__ import annotations

import array
from typing import Iterable, Optional

from ...disk.writers import RawWriter, Writer
from ...disk.zeros import SPARSE_GRANULARITY, nonzero_runs
from ...errors import ConversionError, LimitError
from ...io.rawfile import Preallocator
from . import bat as batmod
from . import layout
from .constants import (
    BAT_UNUSED,
    DEFAULT_BLOCK_SIZE,
    DISK_DYNAMIC,
    DISK_FIXED,
    FOOTER_SIZE,
    MAX_DYNAMIC_SIZE,
    MAX_FIXED_SIZE,
    SECTOR_SIZE,
    UINT32_TYPECODE,
)
from .footer import Footer
from .header import DynamicHeader

#: Largest block table written (16 MiB, 4 Mi entries): the table is held in
#: memory, and 2 MiB blocks need only 1 Mi entries for the 2040 GiB maximum.
MAX_TABLE_ENTRIES = 4 << 20
#: Table room for a stream of unknown size (4 MiB: 2040 GiB in 2 MiB blocks).
MAX_STREAM_ENTRIES = 1 << 20


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


class FixedWriter(RawWriter):
    """A fixed VHD: the raw disk, then the footer."""

    format = "fixed"

    def __init__(
        self,
        out,
        granularity: int = SPARSE_GRANULARITY,
        *,
        max_size: int = MAX_FIXED_SIZE,
        uuid=None,
        timestamp=None,
        creator=None,
    ):
        super().__init__(out, granularity)
        self.max_size = max_size
        self.uuid = uuid
        self.timestamp = timestamp
        self.creator = creator

    def data_end(self, virtual_size):
        return virtual_size + FOOTER_SIZE

    def finish(self, virtual_size):
        self.behind.kick()
        footer = Footer.new(
            DISK_FIXED,
            virtual_size,
            uuid=self.uuid,
            timestamp=self.timestamp,
            max_fixed_size=self.max_size,
            **_creator_fields(self.creator),
        )
        self.out.truncate(virtual_size)
        self.out.pwrite(virtual_size, footer.to_bytes())
        return virtual_size + FOOTER_SIZE


class DynamicWriter(Writer):
    """A dynamic VHD; zero blocks are not allocated.

    Args:
        out: the destination.
        block_size: bytes per block (power of two).
        plan: for a stream, the sorted indices of the blocks to allocate
            (from :func:`plan_blocks`); ``None`` on a seekable file.
        uuid, timestamp: footer identity (random and now by default).
        creator: ``(application, version, host OS)`` for the footer
            (default: vhdcore's, see :mod:`vhdcore.formats.vhd.footer`).
    """

    format = "dynamic"
    #: What fills the BAT's last sector after the entries (qemu: 0xFF).
    bat_padding = b"\xff"

    def __init__(
        self,
        out,
        block_size: int = DEFAULT_BLOCK_SIZE,
        plan: Optional[Iterable[int]] = None,
        *,
        uuid=None,
        timestamp=None,
        creator=None,
    ):
        super().__init__(out)
        self.creator = creator
        self.block_size = block_size
        self.unit = block_size
        self.bitmap = b"\xff" * batmod.bitmap_bytes_for(block_size)
        self.span = len(self.bitmap) + block_size
        self.plan = None if plan is None else list(plan)
        self.uuid = uuid
        self.timestamp = timestamp
        self.blocks_allocated = 0
        self._bitmaps_done = 0
        self.prealloc = Preallocator(out, keep_size=False)

    def begin(self, virtual_size):
        super().begin(virtual_size)
        if virtual_size is not None and virtual_size > MAX_DYNAMIC_SIZE:
            raise LimitError(
                f"a dynamic VHD may hold at most {MAX_DYNAMIC_SIZE} bytes (2040 GiB); "
                f"the source has {virtual_size}"
            )
        if virtual_size is None:
            # A stream: the size is unknown until its end, but the BAT must
            # sit before the first block. Give it room for the largest disk
            # (or MAX_STREAM_ENTRIES) and declare that many entries, so the
            # room is table, not a gap that checkers would call a leak.
            most = batmod.blocks_needed(MAX_DYNAMIC_SIZE, self.block_size)
            self.capacity = min(most, MAX_STREAM_ENTRIES)
        else:
            self.capacity = batmod.blocks_needed(
                _round_up(virtual_size, SECTOR_SIZE), self.block_size
            )
            if self.capacity > MAX_TABLE_ENTRIES:
                raise LimitError(
                    f"{self.capacity} blocks of {self.block_size} bytes need a "
                    f"{self.capacity * 4 >> 20} MiB block table; use a block size of at least "
                    f"{_round_up(virtual_size, MAX_TABLE_ENTRIES) // MAX_TABLE_ENTRIES} bytes"
                )
        self.table_entries = self.capacity
        self.data_start = self._data_start()
        self.bat = array.array(UINT32_TYPECODE, [BAT_UNUSED]) * self.capacity
        self.next_free = self.data_start
        if self.plan is not None:
            if virtual_size is None:
                raise ConversionError("a planned dynamic layout needs the virtual size")
            for block in self.plan:
                self._allocate(block)
            # The BAT and the headers lead the stream.
            self._write_metadata(virtual_size)

    def _data_start(self) -> int:
        """The first byte after the metadata (a subclass may add its own)."""
        return layout.metadata_end(self.capacity)

    def _allocate(self, block: int) -> int:
        position = self.next_free
        self.bat[block] = position // SECTOR_SIZE
        self.next_free = position + self.span
        self.blocks_allocated += 1
        return position

    def _bitmaps_up_to(self, block: int) -> None:
        """On a stream, emit the bitmaps of planned blocks up to ``block``."""
        while self._bitmaps_done < len(self.plan) and self.plan[self._bitmaps_done] <= block:
            planned = self.plan[self._bitmaps_done]
            self.out.pwrite(int(self.bat[planned]) * SECTOR_SIZE, self.bitmap)
            self._bitmaps_done += 1

    def data(self, offset, view):
        runs = nonzero_runs(view, SPARSE_GRANULARITY, offset)
        if not runs:
            return 0
        start = self._block_start(offset)
        stored = 0
        for first, end in runs:
            self.prealloc.reserve(start + first, end - first)
            self._put(start + first, view[first:end])
            stored += end - first
        self.bytes_written += stored
        return stored

    def _block_start(self, offset: int) -> int:
        """Where the data of disk ``offset`` goes (allocating its block if need be)."""
        block = offset // self.block_size
        entry = int(self.bat[block]) if block < self.capacity else BAT_UNUSED
        if self.plan is not None:
            if entry == BAT_UNUSED:
                raise ConversionError(
                    f"the source changed during the conversion: block {block} was all "
                    f"zeros in the first pass and holds data now"
                )
            self._bitmaps_up_to(block)
            start = entry * SECTOR_SIZE
        elif entry == BAT_UNUSED:
            if block >= self.capacity:
                raise LimitError(
                    f"the stream is larger than the {self.capacity * self.block_size} bytes a "
                    f"dynamic VHD with {self.block_size}-byte blocks can hold here; use a "
                    f"larger --block-size or a seekable source"
                )
            start = self._allocate(block)
            self._put(start, self.bitmap)
        else:
            start = entry * SECTOR_SIZE
        within = offset - block * self.block_size
        return start + len(self.bitmap) + within

    def _footer(self, virtual_size: int) -> Footer:
        return Footer.new(
            DISK_DYNAMIC,
            virtual_size,
            uuid=self.uuid,
            timestamp=self.timestamp,
            **_creator_fields(self.creator),
        )

    def _write_metadata(self, virtual_size: int) -> None:
        entries = self.table_entries
        footer = self._footer(virtual_size)
        header = DynamicHeader.new(entries, self.block_size, table_offset=layout.TABLE_OFFSET)
        table = layout.encode_table(self.bat, entries, self.bat_padding)
        for offset, data in layout.new_metadata(footer.to_bytes(), header.to_bytes(), table):
            self.out.pwrite(offset, data)
        self._footer_bytes = footer.to_bytes()

    def finish(self, virtual_size):
        self.behind.kick()
        if self.plan is not None:
            self._bitmaps_up_to(self.capacity)
            footer = self._footer_bytes
        else:
            needed = batmod.blocks_needed(_round_up(virtual_size, SECTOR_SIZE), self.block_size)
            if needed > self.capacity:  # a stream that ended inside the last block's room
                raise LimitError(
                    f"the stream ({virtual_size} bytes) is larger than a dynamic VHD with "
                    f"{self.block_size}-byte blocks can hold here"
                )
            self._write_metadata(virtual_size)
            footer = self._footer_bytes
        end = self.next_free
        self.out.truncate(end)
        self.out.pwrite(end, footer)
        return end + FOOTER_SIZE


def _creator_fields(creator) -> dict:
    """``Footer.new`` keywords for a ``(application, version, host OS)`` triple."""
    if creator is None:
        return {}
    app, version, host = creator
    return {"creator_app": app, "creator_version": version, "creator_os": host}


def make_writer(
    kind: str,
    out,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    plan=None,
    max_fixed_size: int = MAX_FIXED_SIZE,
    uuid=None,
    timestamp=None,
    xen: bool = False,
) -> Writer:
    """The writer for output format ``kind`` (``raw``, ``fixed`` or ``dynamic``).

    ``xen`` lays VHD output out as blktap does (:mod:`vhdcore.formats.vhd.xen`).
    """
    if kind == "raw":
        return RawWriter(out)
    if kind == "fixed":
        creator = None
        if xen:
            from .xen import TAP_CREATOR as creator
        return FixedWriter(out, max_size=max_fixed_size, uuid=uuid, timestamp=timestamp,
                           creator=creator)
    if kind == "dynamic":
        if xen:
            from .xen_writer import XenDynamicWriter

            return XenDynamicWriter(out, block_size, plan, uuid=uuid, timestamp=timestamp)
        return DynamicWriter(out, block_size, plan, uuid=uuid, timestamp=timestamp)
    raise ValueError(f"unknown output format {kind!r}")


__all__ = [
    "MAX_STREAM_ENTRIES",
    "MAX_TABLE_ENTRIES",
    "DynamicWriter",
    "FixedWriter",
    "make_writer",
]
