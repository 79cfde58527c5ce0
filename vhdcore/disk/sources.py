"""What a conversion reads: one interface over a disk of any format, and stdin.

A :class:`Source` presents a virtual disk as an ordered list of runs, each
either *data* (bytes that must be read, which may still turn out to be
zeros) or *zero* (known zeros that are never read: a hole in a sparse raw
file, an unallocated block of a dynamic disk or of a whole differencing
chain). :meth:`Source.pieces` walks those runs with one caller-owned
buffer, so the consumers (convert, digest, compare) never allocate per
block and never read what is known to be zero.

Every format's disk is read through one class, :class:`DiskSource`, over
the :class:`~vhdcore.disk.virtual.VirtualDisk` its registry entry opens.
The input format comes from the registry (:mod:`vhdcore.formats`): each
format's ``detect`` looks for its magic, and a file none recognises is
raw unless it carries the magic of a format vhdcore does not read.
``fmt="raw"`` never probes: a raw disk may legitimately end in bytes that
look like a footer (a disk that holds a VHD file, for instance).
"""

from __future__ import annotations

import os
from typing import Iterator, List, Optional, Sequence, Tuple

from .. import formats as registry
from ..errors import UnsupportedError, VHDError
from ..formats import probe as _probe
from ..io.imagefile import open_image_file
from ..io.rawfile import StreamReader, data_runs, is_seekable_file
from .extent import ENCODED, ZERO

#: A run of the virtual disk: ``(offset, length, is_data)``.
Run = Tuple[int, int, bool]

STDIO = "-"
#: Virtual bytes of extents asked for at once (512 blocks of 2 MiB).
EXTENT_WINDOW = 1 << 30


class Source:
    """A readable virtual disk. Subclasses fill in the attributes and methods.

    Attributes:
        name: the path as given (``"-"`` for stdin).
        format: the registry name of the disk's format (``"raw"``, ``"vhd"``).
        kind: the format's own type of disk (a VHD's ``"fixed"``,
            ``"dynamic"``, ``"differencing"``), the format name when it has
            none, or ``"stream"`` (raw data on a pipe).
        virtual_size: bytes of the virtual disk; ``None`` for a stream until
            it has been read to the end.
        seekable: whether :meth:`readinto` may be called at any offset (and
            the source read twice, or by several threads at once).
        files: every file read (the whole chain for a differencing disk), so
            a caller can refuse to write over one of them.
    """

    name = ""
    format = "raw"
    kind = "raw"
    virtual_size: Optional[int] = None
    seekable = True
    files: Sequence[str] = ()
    notes: Sequence[str] = ()

    def runs(self) -> Iterator[Run]:
        """The ordered data/zero runs covering the whole disk."""
        raise NotImplementedError

    def readinto(self, offset: int, view) -> None:
        """Fill ``view`` with the virtual bytes at ``offset`` (inside a data run)."""
        raise NotImplementedError

    def plan(self, unit: int, size: int, start: int = 0) -> Iterator[Run]:
        """The pieces :meth:`pieces` reads, without reading them.

        Data runs are cut so no piece crosses a multiple of ``unit`` or is
        longer than ``size``; zero runs come whole. A reader that keeps
        several reads in flight (:class:`~vhdcore.disk.prefetch.Prefetch`)
        hands these pieces to its threads.
        """
        for offset, length, is_data in self.runs():
            end = offset + length
            if end <= start:
                continue
            offset = max(offset, start)
            if not is_data:
                yield offset, end - offset, False
                continue
            position = offset
            while position < end:
                count = min(end - position, unit - position % unit, size)
                yield position, count, True
                position += count

    def pieces(
        self, buffer, unit: int, start: int = 0
    ) -> Iterator[Tuple[int, int, Optional[memoryview]]]:
        """Walk the disk as ``(offset, length, view)``; ``view`` is ``None`` for zeros.

        Data comes in pieces that never cross a multiple of ``unit`` and are
        at most one buffer long. ``buffer`` is one writable buffer reused
        for every piece (a piece is then valid only until the next one), or
        a callable returning the buffer to fill next (see
        :class:`~vhdcore.disk.prefetch.Prefetch`). A zero run comes whole,
        however long, and costs nothing.
        """
        next_buffer = buffer_supplier(buffer)
        view = next_buffer()
        for offset, length, is_data in self.plan(unit, len(view), start):
            if not is_data:
                yield offset, length, None
                continue
            piece = view[:length]
            self.readinto(offset, piece)
            yield offset, length, piece
            view = next_buffer()

    def close(self) -> None:
        """Release the files."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _file_runs(file, extent) -> List[Run]:
    """Split a stored extent at the holes of its file (a sparse fixed VHD, say)."""
    fd = getattr(file, "fd", None)
    if fd is None or fd < 0:
        return [(extent.offset, extent.length, True)]
    shift = extent.offset - extent.file_offset
    out: List[Run] = []
    position = extent.file_offset
    end = extent.file_offset + extent.length
    for offset, length in data_runs(fd, position, end):
        if offset > position:
            out.append((position + shift, offset - position, False))
        out.append((offset + shift, length, True))
        position = offset + length
    if position < end:
        out.append((position + shift, end - position, False))
    return out


class DiskSource(Source):
    """Any :class:`~vhdcore.disk.virtual.VirtualDisk` as a source, whatever its format.

    The runs come from the disk's extents: ``zero`` extents (holes of a raw
    file, unallocated blocks of a whole chain) are zero runs and never read,
    and stored extents are split again at the holes of the file that holds
    them. ``encoded`` extents (compressed clusters) are data, read through
    the disk.

    Args:
        disk: the open disk.
        display: the name to report (``"-"`` for a file on stdin).
        owned: close the disk with the source.
    """

    def __init__(self, disk, display: Optional[str] = None, owned: bool = True):
        self.disk = disk
        self.owned = owned
        self.format = disk.format
        self.kind = getattr(disk, "type", disk.format)
        self.name = display or os.fspath(getattr(disk, "path", disk.files[0]))
        self.virtual_size = disk.virtual_size
        self.files = list(disk.files)
        self.notes = list(getattr(disk, "notes", []))

    @property
    def image(self):
        """The disk (the name this attribute had when only VHDs were sources)."""
        return self.disk

    def runs(self) -> Iterator[Run]:
        disk = self.disk
        pending = None
        for extent in self._extents():
            if extent.state == ZERO:
                pieces = [(extent.offset, extent.length, False)]
            elif extent.state == ENCODED:
                pieces = [(extent.offset, extent.length, True)]
            else:
                pieces = _file_runs(disk.member_file(extent.depth), extent)
            for offset, length, is_data in pieces:
                # Merge with the previous run of the same kind; readinto
                # resolves the members and file offsets again.
                if pending is not None and pending[2] == is_data and sum(pending[:2]) == offset:
                    pending = (pending[0], pending[1] + length, is_data)
                    continue
                if pending is not None:
                    yield pending
                pending = (offset, length, is_data)
        if pending is not None:
            yield pending

    def _extents(self):
        """The disk's extents, asked for a window at a time.

        A fragmented 2040 GiB disk has a million extents; asking for them in
        windows keeps memory flat whatever the disk's size.
        """
        size = self.virtual_size
        position = 0
        while position < size:
            length = min(EXTENT_WINDOW, size - position)
            yield from self.disk.extents(position, length)
            position += length

    def readinto(self, offset: int, view) -> None:
        self.disk.readinto(offset, view)

    def close(self) -> None:
        if self.owned:
            self.disk.close()


#: The names the sources had when each format had its own class; both are
#: the one class now.
RawFileSource = VHDSource = DiskSource


def buffer_supplier(buffer):
    """A callable returning the buffer to fill next: ``buffer`` itself, or the callable given."""
    if callable(buffer):
        return buffer
    view = memoryview(buffer).cast("B")
    return lambda: view


class StreamSource(Source):
    """Raw data on a pipe (stdin): read once, in order, length unknown until EOF."""

    format = "raw"
    kind = "stream"
    seekable = False

    def __init__(self, fd: int = 0, name: str = STDIO, detect: bool = False):
        self.reader = StreamReader(fd, "<stdin>" if name == STDIO else name)
        self.name = name
        # Refuse another format's image by its magic (in the first piece),
        # as a named file is refused, unless raw was asked for.
        self.detect = detect
        self.virtual_size = None
        self.files = []
        self.notes = []

    def runs(self) -> Iterator[Run]:
        raise UnsupportedError(f"{self.name}: a stream has no allocation map until it is read")

    def plan(self, unit: int, size: int, start: int = 0) -> Iterator[Run]:
        raise UnsupportedError(f"{self.name}: a stream has no allocation map until it is read")

    def readinto(self, offset: int, view) -> None:
        raise UnsupportedError(f"{self.name}: a stream cannot be read at an offset")

    def pieces(self, buffer, unit: int, start: int = 0):
        if start:
            raise UnsupportedError(f"{self.name}: a stream can only be read from the start")
        next_buffer = buffer_supplier(buffer)
        position = 0
        while True:
            view = next_buffer()
            count = min(unit - position % unit, len(view))
            piece = view[:count]
            got = self.reader.fill(piece)
            if self.detect and position == 0:
                foreign = _probe.foreign_error("stdin", piece[: min(got, _probe.HEAD_SIZE)],
                                               raw_hint=True, stream=True)
                if foreign is not None:
                    raise foreign
            if got:
                yield position, got, piece[:got]
                position += got
            if got < count:
                break
        self.virtual_size = position


def detect_format(file, name=None) -> str:
    """The registry name of the format whose magic an open file carries; ``"raw"`` if none.

    Args:
        file: an open :class:`vhdcore.io.imagefile.ImageFile`.
        name: the file as the user gave it, for the error below.

    Raises:
        ForeignFormatError: no format we read recognises the file, and it
            starts with the magic of one we do not (VDI, QED, ...): reading
            it as raw would silently copy its metadata as disk data.
    """
    fmt = registry.detect(file)
    if fmt.detect is not None:
        return fmt.name
    size = file.size()
    foreign = _probe.foreign_error(
        name or file.path, file.pread(0, min(size, _probe.HEAD_SIZE), "start"), raw_hint=True
    )
    if foreign is not None:
        raise foreign
    return fmt.name


def open_source(path, fmt: Optional[str] = None, open_options=None) -> Source:
    """Open ``path`` (``"-"`` for stdin) for reading, in any registered format.

    Args:
        path: a file, a block device, an image of any format (a chain with
            its backing files), or ``"-"``.
        fmt: a registry name or alias (``"raw"``, ``"vhd"``, qemu's
            ``"vpc"``, ...) or ``None`` to detect it by magic. ``"raw"``
            never looks for another format's magic.
        open_options: keyword arguments for the format's ``open`` (the
            chain policy: ``allow_parent_dirs``, ``allow_symlinks``,
            ``max_chain_depth``).

    Raises:
        UnsupportedError: an unknown format name, or a format that needs
            random access asked of a pipe.
        VHDError: the file is not a usable image of the format.
        ForeignFormatError: the file is an image of a format vhdcore does not read.
        OSError: the file cannot be opened.
    """
    chosen = registry.get(fmt) if fmt is not None else None
    display = None
    if path == STDIO:
        if not is_seekable_file(0):
            if chosen is not None and chosen.random_access:
                raise UnsupportedError(
                    f"stdin is a pipe: a {chosen.name} image needs random access; "
                    f"save it to a file first"
                )
            return StreamSource(0, detect=chosen is None)
        # A regular file on stdin (< file) is read like a named file.
        path, display = "/dev/stdin", STDIO
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UnsupportedError(f"{path}: is a directory, not a disk image")
    if chosen is None:
        with open_image_file(path) as file:
            chosen = registry.get(detect_format(file, display or path))
    return DiskSource(chosen.open(path, **(open_options or {})), display)


def as_source(obj, fmt: Optional[str] = None, open_options=None) -> Tuple[Source, bool]:
    """A :class:`Source` for a path, an open disk of any format, or a Source.

    Returns:
        ``(source, owned)``: ``owned`` says the caller must close it.
    """
    if isinstance(obj, Source):
        return obj, False
    if hasattr(obj, "extents") and hasattr(obj, "readinto") and hasattr(obj, "files"):
        return DiskSource(obj, owned=False), False
    if not isinstance(obj, (str, bytes, os.PathLike)):
        raise TypeError(f"expected a path, an open disk or a Source, not {type(obj).__name__}")
    return open_source(obj, fmt, open_options), True


__all__ = [
    "DiskSource",
    "RawFileSource",
    "Source",
    "StreamSource",
    "VHDError",
    "VHDSource",
    "as_source",
    "buffer_supplier",
    "detect_format",
    "open_source",
]
