"""Output writers for conversion: raw, fixed VHD, dynamic VHD (file or stream).

A writer receives the virtual disk's data in order, as pieces (which it
checks for zeros through the kernels), and lays out its format; runs known
to be zero are simply never handed to it. The same writer serves a seekable file and a pipe: ``out``
is either a :class:`vhdcore.io.imagefile.ImageFile` or a
:class:`vhdcore.io.rawfile.StreamWriter`, which turns a skipped gap into
real zeros from a shared buffer. A writer never reads the output back, so
both produce identical bytes.

Layouts:

* raw: the disk, ``virtual_size`` bytes. On a file, all-zero stretches of
  :data:`SPARSE_GRANULARITY` bytes (aligned) are left as holes, the way
  ``qemu-img convert -S 4k`` does.
* fixed: the raw layout (holes included), then the 512-byte footer.
* dynamic: footer copy at 0, dynamic header at 512, BAT at 1536 (padded
  to a sector with 0xFF, as qemu does), the blocks in virtual order right
  after it, the footer. A block is allocated only if it holds a non-zero
  byte. Inside an allocated block only the non-zero stretches are written
  (judged in :data:`SPARSE_GRANULARITY` chunks aligned to the disk, as
  ``qemu-img convert`` does), so on a file its zero stretches stay holes
  wherever they cover a whole file-system block: the output occupies the
  data plus metadata, never the whole of each block. Its sector bitmap is
  all ones. Why all ones rather than exactly the non-zero sectors: the
  block's data area reads as zeros wherever it is not written, so a
  precise bitmap would change no contents and save no space; qemu, Hyper-V
  and dissect ignore a dynamic disk's bitmap, qemu itself writes all ones,
  and all ones can never hide data from a reader that honours the bitmap
  (``vhd-util check -b`` flags "data where bitmap is clear", which an
  exact bitmap of a block later written by a guest can trip). It also
  spares a per-sector scan of every allocated block.

On a seekable file the dynamic writer learns the allocation as it goes and
writes the BAT last. On a pipe the BAT must come first, so the caller runs
a pre-pass (:func:`plan_blocks`) over a seekable source and hands the
writer the list of blocks to allocate; the second pass then writes exactly
the layout the file writer would have produced.
"""

from __future__ import annotations

import array
import os
from typing import Iterable, List, Optional

from .._backend import kernels
from ..errors import ConversionError, LimitError
from ..formats.vhd import bat as batmod
from ..formats.vhd.constants import (
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
from ..formats.vhd.footer import Footer
from ..formats.vhd.header import DynamicHeader
from ..io.rawfile import Preallocator, WriteBehind

#: Smallest aligned all-zero stretch left unwritten (a hole, on a file) in
#: every output, and inside the allocated blocks of dynamic output.
SPARSE_GRANULARITY = 4096
#: Where the BAT of a dynamic output starts (after footer copy and header).
TABLE_OFFSET = 1536
#: Largest block table written (16 MiB, 4 Mi entries): the table is held in
#: memory, and 2 MiB blocks need only 1 Mi entries for the 2040 GiB maximum.
MAX_TABLE_ENTRIES = 4 << 20
#: Table room for a stream of unknown size (4 MiB: 2040 GiB in 2 MiB blocks).
MAX_STREAM_ENTRIES = 1 << 20


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def nonzero_runs(view, granularity: int, offset: int = 0):
    """``(start, end)`` byte ranges of ``view`` that hold non-zero data.

    The buffer is judged in ``granularity`` chunks aligned to the *disk*
    (``offset`` is the view's position on it), by the kernels; a chunk with
    any non-zero byte is data, whole. Returns ``[]`` for all zeros.
    """
    if kernels.is_zero(view):
        return []
    length = len(view)
    head = min((-offset) % granularity, length)
    if length - head <= granularity and not head:
        return [(0, length)]
    runs = []
    if head and not kernels.is_zero(view[:head]):
        runs.append((0, head))
    if head < length:
        # One flag byte per chunk (1 = all zero); bytearray.find walks them
        # in C from one edge of a data run to the next.
        count = -(-(length - head) // granularity)
        flags = bytearray(count)
        kernels.zero_chunks(view[head:], granularity, out=flags)
        first = flags.find(0)
        while first >= 0:
            last = flags.find(1, first)
            if last < 0:
                last = count
            runs.append((head + first * granularity, min(head + last * granularity, length)))
            first = flags.find(0, last)
    if len(runs) > 1 and runs[0] == (0, head) and runs[1][0] == head:
        runs[0:2] = [(0, runs[1][1])]
    return runs


class Writer:
    """Base of the output writers.

    Attributes:
        out: the destination (ImageFile or StreamWriter).
        unit: data pieces handed to :meth:`data` must not cross a multiple
            of this (the dynamic block size; raw and fixed take any).
        bytes_written: disk bytes stored as data: the non-zero stretches
            written (what occupies the file system is the caller's to
            measure, see :class:`vhdcore.ops.convert.ConversionResult`).
    """

    format = "raw"
    unit = 4 << 20

    def __init__(self, out):
        self.out = out
        self.bytes_written = 0
        self.behind = WriteBehind(None)
        self.virtual_size: Optional[int] = None

    def write_behind(self) -> None:
        """Start write-back of finished ranges early (when the output will be fsynced)."""
        self.behind = WriteBehind(self.out)

    def begin(self, virtual_size: Optional[int]) -> None:
        """Start; ``virtual_size`` is ``None`` when the source is a stream."""
        self.virtual_size = virtual_size

    def _put(self, offset: int, data) -> None:
        self.out.pwrite(offset, data)
        self.behind.wrote(offset, len(data))

    def data(self, offset: int, view) -> int:
        """Store a piece of the disk; returns the bytes stored as data."""
        raise NotImplementedError

    #: Whether the conversion may hand pieces over as file ranges
    #: (:meth:`copy`). No writer asks for it today: every piece is read, so
    #: zero stretches inside it stay holes on disk.
    can_copy = False

    def copy(self, offset: int, length: int, fd: int, file_offset: int) -> int:
        """Store ``length`` bytes of ``fd`` from ``file_offset`` as the disk's bytes at ``offset``.

        Read in pieces and stored through :meth:`data`, so holes and the
        byte count follow the same rule; returns the bytes stored as data.
        """
        stored = done = 0
        while done < length:
            piece = os.pread(fd, min(length - done, 4 << 20), file_offset + done)
            if not piece:
                raise ConversionError(
                    f"the source ended early: {length - done} bytes missing at file offset "
                    f"{file_offset + done} (was it truncated during the conversion?)"
                )
            stored += self.data(offset + done, memoryview(piece))
            done += len(piece)
        return stored

    def finish(self, virtual_size: int) -> int:
        """Write the trailing structures; returns the output's length in bytes."""
        raise NotImplementedError


class RawWriter(Writer):
    """The virtual disk byte for byte; zero stretches stay holes."""

    format = "raw"

    def __init__(self, out, granularity: int = SPARSE_GRANULARITY):
        super().__init__(out)
        self.granularity = granularity
        self.prealloc = Preallocator(out, keep_size=True)

    def begin(self, virtual_size):
        super().begin(virtual_size)
        if virtual_size is not None and not getattr(self.out, "is_stream", False):
            # Final length first: the file is all hole until data lands.
            self.out.truncate(self.data_end(virtual_size))

    def data_end(self, virtual_size: int) -> int:
        return virtual_size

    def data(self, offset, view):
        stored = 0
        for start, end in nonzero_runs(view, self.granularity, offset):
            self.prealloc.reserve(offset + start, end - start)
            self._put(offset + start, view[start:end])
            stored += end - start
        self.bytes_written += stored
        return stored

    def finish(self, virtual_size):
        self.behind.kick()
        self.out.truncate(virtual_size)
        return virtual_size


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
        return _round_up(TABLE_OFFSET + batmod.bat_bytes(self.capacity), SECTOR_SIZE)

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
        header = DynamicHeader.new(entries, self.block_size, table_offset=TABLE_OFFSET)
        table = bytearray(self.bat_padding * batmod.bat_bytes(entries))
        table[: entries * 4] = kernels.bat_encode(self.bat[:entries])
        self.out.pwrite(0, footer.to_bytes())
        self.out.pwrite(FOOTER_SIZE, header.to_bytes())
        self.out.pwrite(TABLE_OFFSET, table)
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


def plan_blocks(source, block_size: int, buffer, probe: int = 4096, progress=None) -> List[int]:
    """Pre-pass for a streamed dynamic VHD: the blocks of ``source`` that hold data.

    Reads only data runs, and of each block only as much as it takes to
    find a non-zero byte: the first ``probe`` bytes settle a block of real
    data; only a block that starts with zeros is read further.

    Raises:
        ConversionError: the source cannot be read twice (a pipe).
    """
    if not source.seekable:
        raise ConversionError(
            "a dynamic VHD on a stream needs its block table first, which takes a "
            "first pass over a seekable source; the source is a pipe"
        )
    view = memoryview(buffer).cast("B")
    allocated: List[int] = []
    last = -1
    for offset, length, is_data in source.runs():
        if not is_data:
            continue
        position, end = offset, offset + length
        while position < end:
            block = position // block_size
            block_end = min(end, (block + 1) * block_size)
            if block == last:
                position = block_end
                continue
            first = min(probe, block_end - position)
            source.readinto(position, view[:first])
            found = not kernels.is_zero(view[:first])
            cursor = position + first
            while not found and cursor < block_end:
                count = min(len(view), block_end - cursor)
                source.readinto(cursor, view[:count])
                found = not kernels.is_zero(view[:count])
                cursor += count
            if found:
                allocated.append(block)
                last = block
            position = block_end
            if progress is not None:
                progress.update(position)
    return allocated


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
            from ..formats.vhd.xen import TAP_CREATOR as creator
        return FixedWriter(out, max_size=max_fixed_size, uuid=uuid, timestamp=timestamp,
                           creator=creator)
    if kind == "dynamic":
        if xen:
            from ..formats.vhd.xen_writer import XenDynamicWriter

            return XenDynamicWriter(out, block_size, plan, uuid=uuid, timestamp=timestamp)
        return DynamicWriter(out, block_size, plan, uuid=uuid, timestamp=timestamp)
    raise ValueError(f"unknown output format {kind!r}")


__all__ = [
    "SPARSE_GRANULARITY",
    "DynamicWriter",
    "FixedWriter",
    "RawWriter",
    "Writer",
    "make_writer",
    "nonzero_runs",
    "plan_blocks",
]
