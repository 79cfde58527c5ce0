"""Output writers for conversion: the contract, and raw output.

A writer receives the virtual disk's data in order, as pieces (which it
checks for zeros through :mod:`vhdcore.disk.zeros`), and lays out its
format; runs known to be zero are simply never handed to it. The same
writer serves a seekable file and a pipe: ``out`` is either a
:class:`vhdcore.io.imagefile.ImageFile` or a
:class:`vhdcore.io.rawfile.StreamWriter`, which turns a skipped gap into
real zeros from a shared buffer. A writer never reads the output back, so
both produce identical bytes.

Raw output is the disk, ``virtual_size`` bytes; on a file, all-zero
stretches of :data:`~vhdcore.disk.zeros.SPARSE_GRANULARITY` bytes (aligned)
are left as holes, the way ``qemu-img convert -S 4k`` does. Each format's
own writers live with the format (VHD's in
:mod:`vhdcore.formats.vhd.writers`) and build on :class:`Writer`.

A format whose table must lead a stream (the BAT of a dynamic VHD) cannot
learn the allocation as it goes on a pipe; :func:`plan_blocks` is the
pre-pass over a seekable source that finds the blocks holding data.
"""

from __future__ import annotations

from typing import List, Optional

from .._backend import kernels
from ..errors import ConversionError
from ..io.rawfile import Preallocator, WriteBehind
from .zeros import DATA_PROBE, SPARSE_GRANULARITY, nonzero_runs


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

    def copy(self, offset: int, length: int, source, file_offset: int) -> int:
        """Store ``length`` bytes of ``source`` (an ImageFile) from ``file_offset`` as
        the disk's bytes at ``offset``.

        Read in pieces and stored through :meth:`data`, so holes and the
        byte count follow the same rule; returns the bytes stored as data.

        Raises:
            CorruptImageError: the source ends first (truncated meanwhile).
        """
        buffer = memoryview(bytearray(min(length, 4 << 20)))
        stored = done = 0
        while done < length:
            piece = buffer[: min(length - done, len(buffer))]
            source.preadinto(file_offset + done, piece, "data being copied")
            stored += self.data(offset + done, piece)
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


def plan_blocks(source, block_size: int, buffer, probe: int = DATA_PROBE,
                progress=None) -> List[int]:
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


__all__ = [
    "SPARSE_GRANULARITY",
    "RawWriter",
    "Writer",
    "nonzero_runs",
    "plan_blocks",
]
