"""The two contracts every format meets: a readable ``VirtualDisk`` and a ``Sink``.

The engine (conversion, digest, compare, map) is written against these
and never names a format, so a new format joins by implementing them and
registering in :mod:`vhdcore.formats`; nothing else changes. They are
``typing.Protocol``s: a format's class does not inherit from them, and
``isinstance(obj, VirtualDisk)`` checks only that the names exist.
"""

from __future__ import annotations

from typing import List, Optional, Protocol, Sequence, runtime_checkable

from .extent import Extent


@runtime_checkable
class VirtualDisk(Protocol):
    """A virtual disk opened for reading, in any format.

    Attributes:
        format: the registry name of the format (``"raw"``, ``"vhd"``, ...).
        virtual_size: bytes the guest sees.
        logical_sector_size: the guest's sector (512 or 4096); nothing in
            the engine may assume 512.
        files: every file the disk is read from, the disk's own first, then
            its backing files (a differencing chain), so a caller can lock
            them and refuse to write over one of them.
    """

    format: str
    virtual_size: int
    logical_sector_size: int
    files: Sequence[str]

    def extents(self, offset: int = 0, length: Optional[int] = None) -> List[Extent]:
        """The allocation of ``[offset, offset + length)``, in order, with no gaps.

        Each :class:`~vhdcore.disk.extent.Extent` is ``data`` (stored in this
        file), ``parent`` (stored in the backing file at ``depth``),
        ``zero`` (stored nowhere: reads as zeros, is never read) or
        ``encoded`` (stored at ``depth`` but not byte for byte, so only
        :meth:`readinto` may read it). For ``data`` and ``parent``,
        ``file_offset`` is where the run lies in ``files[depth]``.
        """

    def readinto(self, offset: int, buffer) -> int:
        """Fill ``buffer`` with the virtual bytes at ``offset``; returns its length.

        Safe to call from several threads at once on distinct buffers
        (positional reads, no shared cursor), so a source may keep several
        reads in flight.
        """

    def member_file(self, depth: int):
        """The :class:`~vhdcore.io.imagefile.ImageFile` of ``files[depth]``, or ``None``.

        Used for hole queries and file-to-file copies of ``data`` and
        ``parent`` runs; ``None`` turns both off (the bytes are then read).
        """

    def close(self) -> None:
        """Release every file."""


@runtime_checkable
class Sink(Protocol):
    """Where a conversion writes: one format's layout, built in virtual order.

    The conversion calls :meth:`begin`, then :meth:`data` or :meth:`copy`
    for each stored piece in increasing offset order (pieces never cross a
    multiple of ``unit``; runs known to be zero are never handed over), and
    :meth:`finish`. A sink never reads its output back, so the same sink
    serves a file and a stream. :class:`vhdcore.disk.writers.Writer` is the base
    every sink shares.

    Attributes:
        format: the subformat written (``"raw"``, ``"fixed"``, ``"dynamic"``).
        unit: pieces must not cross a multiple of this.
        can_copy: whether :meth:`copy` may be used instead of :meth:`data`.
        bytes_written: disk bytes stored as data so far (zeros left out).
    """

    format: str
    unit: int
    can_copy: bool
    bytes_written: int

    def begin(self, virtual_size: Optional[int]) -> None:
        """Start; ``virtual_size`` is ``None`` while a stream's length is unknown."""

    def data(self, offset: int, view) -> int:
        """Store a piece (zeros in it may be left out); returns the bytes stored."""

    def copy(self, offset: int, length: int, source, file_offset: int) -> int:
        """Store a piece known to hold data, copied file to file from ``source``
        (an :class:`~vhdcore.io.imagefile.ImageFile`: a chain member's
        :meth:`VirtualDisk.member_file`)."""

    def finish(self, virtual_size: int) -> int:
        """Write the trailing structures; returns the output's length in bytes."""


class ReadOnlyDisk:
    """What a read-only image object adds to its ``readinto`` and ``extents``: the
    file-like methods ``vhdcore.open`` promises for every format (``read``,
    ``write`` refused, ``flush``, an ``io.RawIOBase`` view, ``with``)."""

    mode = "r"

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the virtual disk from ``offset`` (checked before
        anything is allocated)."""
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            from ..errors import OutOfRangeError

            raise OutOfRangeError(
                f"{self.path}: read of {length} bytes at {offset} is outside the disk "
                f"({self.virtual_size} bytes)"
            )
        buffer = bytearray(length)
        if length:
            self.readinto(offset, buffer)
        return bytes(buffer)

    def write(self, offset: int, data) -> int:
        from ..errors import ReadOnlyError

        raise ReadOnlyError(f"{self.path}: {self.format} images open read-only here")

    def flush(self) -> None:
        """Nothing to make durable: the image is never written."""

    def rawio(self):
        """An ``io.RawIOBase`` view (read-only) of the virtual disk."""
        from .rawio import DiskRawIO

        return DiskRawIO(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


__all__ = ["ReadOnlyDisk", "Sink", "VirtualDisk"]
