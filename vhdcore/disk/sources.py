"""What a conversion reads: one interface over raw files, VHD chains and stdin.

A :class:`Source` presents a virtual disk as an ordered list of runs, each
either *data* (bytes that must be read, which may still turn out to be
zeros) or *zero* (known zeros that are never read: a hole in a sparse raw
file, an unallocated block of a dynamic disk or of a whole differencing
chain). :meth:`Source.pieces` walks those runs with one caller-owned
buffer, so the consumers (convert, digest, compare) never allocate per
block and never read what is known to be zero.

The input format comes from the footer at the end of the file (512 bytes,
or a legacy 511), or from the footer copy at offset 0 followed by a
dynamic header, so a damaged primary footer still opens. ``fmt="raw"``
never probes: a raw disk may legitimately end in bytes that look like a
footer (a disk that holds a VHD file, for instance).
"""

from __future__ import annotations

import os
import queue
import stat
import threading
from typing import Iterator, List, Optional, Sequence, Tuple

from ..errors import UnsupportedError, VHDError
from ..formats import probe as _probe
from ..formats.vhd.constants import (
    DYNAMIC_COOKIE,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    LEGACY_FOOTER_SIZE,
    SECTOR_SIZE,
)
from ..io.imagefile import open_image_file
from ..io.rawfile import StreamReader, data_runs, is_seekable_file

#: A run of the virtual disk: ``(offset, length, is_data)``.
Run = Tuple[int, int, bool]

FORMATS = ("raw", "vhd")
#: Other names accepted for an input format: qemu calls VHD "vpc".
FORMAT_ALIASES = {"vpc": "vhd"}
STDIO = "-"
#: Virtual bytes of VHD extents asked for at once (512 blocks of 2 MiB).
EXTENT_WINDOW = 1 << 30


class Source:
    """A readable virtual disk. Subclasses fill in the attributes and methods.

    Attributes:
        name: the path as given (``"-"`` for stdin).
        format: ``"raw"`` or ``"vhd"``.
        kind: ``"raw"``, ``"fixed"``, ``"dynamic"``, ``"differencing"`` or
            ``"stream"`` (raw data on a pipe).
        virtual_size: bytes of the virtual disk; ``None`` for a stream until
            it has been read to the end.
        seekable: whether :meth:`readinto` may be called at any offset (and
            the source read twice).
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

    def pieces(
        self, buffer, unit: int, start: int = 0
    ) -> Iterator[Tuple[int, int, Optional[memoryview]]]:
        """Walk the disk as ``(offset, length, view)``; ``view`` is ``None`` for zeros.

        Data comes in pieces that never cross a multiple of ``unit`` and are
        at most one buffer long. ``buffer`` is one writable buffer reused
        for every piece (a piece is then valid only until the next one), or
        a callable returning the buffer to fill next (see
        :class:`Prefetch`). A zero run comes whole, however long, and costs
        nothing.
        """
        next_buffer = _buffer_supplier(buffer)
        for offset, length, is_data in self.runs():
            end = offset + length
            if end <= start:
                continue
            offset = max(offset, start)
            if not is_data:
                yield offset, end - offset, None
                continue
            position = offset
            while position < end:
                view = next_buffer()
                count = min(end - position, unit - position % unit, len(view))
                piece = view[:count]
                self.readinto(position, piece)
                yield position, count, piece
                position += count

    def describe(self) -> str:
        return f"{self.name} ({self.kind})"

    def close(self) -> None:
        """Release the files."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _device_size(fd: int) -> Optional[int]:
    mode = os.fstat(fd).st_mode
    if stat.S_ISBLK(mode):
        return os.lseek(fd, 0, os.SEEK_END)
    return None


class RawFileSource(Source):
    """A raw image in a file (or block device); holes are never read."""

    format = "raw"
    kind = "raw"

    def __init__(self, path, display: Optional[str] = None):
        self.name = display or os.fspath(path)
        self.file = open_image_file(path)
        self.notes = []
        try:
            fd = getattr(self.file, "fd", None)
            device = _device_size(fd) if fd is not None else None
            self.virtual_size = device if device is not None else self.file.size()
            # Holes exist only in regular files; a device is all data.
            self._sparse = fd is not None and device is None
        except BaseException:
            self.file.close()
            raise
        self.files = [os.fspath(path)]

    def runs(self) -> Iterator[Run]:
        size = self.virtual_size
        if not self._sparse:
            if size:
                yield 0, size, True
            return
        position = 0
        for offset, length in data_runs(self.file.fd, 0, size):
            if offset > position:
                yield position, offset - position, False
            yield offset, length, True
            position = offset + length
        if position < size:
            yield position, size - position, False

    def readinto(self, offset: int, view) -> None:
        self.file.preadinto(offset, view, "raw data")

    def close(self) -> None:
        self.file.close()


def _member_fd(member) -> Optional[int]:
    """The descriptor of a chain member's file, for hole queries only."""
    fileno = getattr(member, "fileno", None)
    if callable(fileno):
        try:
            return fileno()
        except (OSError, ValueError, AttributeError):
            return None
    return None


def _file_runs(member, extent) -> List[Run]:
    """Split a stored extent at the holes of its file (a sparse fixed VHD, say)."""
    fd = _member_fd(member)
    if fd is None:
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


class VHDSource(Source):
    """A VHD image of any type; a differencing disk is read through its chain.

    The runs come from :meth:`vhdcore.formats.vhd.image.VHD.extents`: unallocated
    blocks (held by no member of the chain) are zero runs and never read.
    """

    format = "vhd"

    def __init__(self, path, display: Optional[str] = None, image=None, open_options=None):
        from ..formats.vhd import image as image_module

        self.owned = image is None
        if image is None:
            # A shared lock: refused while a writer holds the image, and no
            # writer can start until we are done, so we never copy a torn state.
            options = {"consistent": True, **(open_options or {})}
            image = image_module.open(path, "r", **options)
        self.image = image
        self.name = display or os.fspath(self.image.path)
        self.kind = self.image.type
        self.virtual_size = self.image.virtual_size
        self.files = [member.path for member in self.image.chain]
        self.notes = list(getattr(self.image, "notes", []))

    def runs(self) -> Iterator[Run]:
        from .extent import ZERO

        members = self.image.chain
        pending = None

        def emit(offset, length, is_data):
            # Merge with the previous run of the same kind; readinto
            # resolves the members and file offsets again.
            nonlocal pending
            if pending is not None and pending[2] == is_data and pending[0] + pending[1] == offset:
                pending = (pending[0], pending[1] + length, is_data)
                return None
            done, pending = pending, (offset, length, is_data)
            return done

        for extent in self._extents():
            if extent.state == ZERO:
                pieces = [(extent.offset, extent.length, False)]
            else:
                pieces = _file_runs(members[extent.depth], extent)
            for offset, length, is_data in pieces:
                done = emit(offset, length, is_data)
                if done is not None:
                    yield done
        if pending is not None:
            yield pending

    def _extents(self):
        """The image's extents, asked for a window at a time.

        A fragmented 2040 GiB disk has a million extents; asking for them in
        windows keeps memory flat whatever the image's size.
        """
        size = self.virtual_size
        position = 0
        while position < size:
            length = min(EXTENT_WINDOW, size - position)
            yield from self.image.extents(position, length)
            position += length

    def readinto(self, offset: int, view) -> None:
        self.image.readinto(offset, view)

    def describe(self) -> str:
        depth = len(self.files)
        chain = f", chain of {depth}" if depth > 1 else ""
        return f"{self.name} (vhd {self.kind}{chain})"

    def close(self) -> None:
        if self.owned:
            self.image.close()


def _buffer_supplier(buffer):
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

    def readinto(self, offset: int, view) -> None:
        raise UnsupportedError(f"{self.name}: a stream cannot be read at an offset")

    def pieces(self, buffer, unit: int, start: int = 0):
        if start:
            raise UnsupportedError(f"{self.name}: a stream can only be read from the start")
        next_buffer = _buffer_supplier(buffer)
        position = 0
        while True:
            view = next_buffer()
            count = min(unit - position % unit, len(view))
            piece = view[:count]
            got = self.reader.fill(piece)
            if self.detect and position == 0:
                foreign = _probe.foreign_error("stdin", piece[: min(got, _probe.HEAD_SIZE)],
                                              raw_hint=True)
                if foreign is not None:
                    raise foreign
            if got:
                yield position, got, piece[:got]
                position += got
            if got < count:
                break
        self.virtual_size = position

    def describe(self) -> str:
        return "stdin (raw stream)"


class Prefetch:
    """Read a source ahead on a background thread, into a small ring of buffers.

    The reader thread walks :meth:`Source.pieces` (and feeds an optional
    hasher) while the consumer checks and writes the previous pieces, so
    reads, hashing and writes overlap; they all spend their time in system
    calls, kernels and OpenSSL, which release the GIL. Measured on a
    conversion writing 1 GiB, read-ahead took a third off the time.

    Iterating yields ``(offset, length, view)`` in order (``view`` is
    ``None`` for zero runs). A piece's buffer goes back to the ring when the
    consumer asks for the next one, so a piece stays valid while it is
    processed. Errors in the reader are raised in the consumer; closing (or
    leaving the ``with`` block) stops the reader.

    Args:
        source: the :class:`Source`.
        unit: passed to :meth:`Source.pieces`.
        buffer_size: bytes per buffer.
        count: buffers in the ring (memory = ``count * buffer_size``).
        hasher: a :class:`vhdcore.ops.digest.Hasher` fed on the reader thread,
            in order (zero runs from the shared zero buffer).
    """

    _END = object()

    def __init__(
        self,
        source: Source,
        unit: int,
        buffer_size: int,
        count: int = 4,
        hasher=None,
    ):
        self.source = source
        self.unit = unit
        self.hasher = hasher
        self.free = queue.Queue()
        for _ in range(count):
            self.free.put(memoryview(bytearray(buffer_size)))
        # Bounded, so a disk of a million holes cannot queue a million runs.
        self.ready = queue.Queue(maxsize=1024)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read, name="vhdcore-prefetch", daemon=True)
        self.thread.start()

    def _next_buffer(self):
        while True:
            try:
                self._current = self.free.get(timeout=0.05)
                return self._current
            except queue.Empty:
                if self.stopping.is_set():
                    raise _Stopped from None

    def _put(self, item) -> None:
        while True:
            try:
                self.ready.put(item, timeout=0.05)
                return
            except queue.Full:
                if self.stopping.is_set():
                    raise _Stopped from None

    def _read(self):
        hasher = self.hasher
        try:
            pieces = self.source.pieces(self._next_buffer, self.unit)
            for offset, length, view in pieces:
                if self.stopping.is_set():
                    return
                if view is None:
                    if hasher is not None:
                        # Hashing a long zero run takes a while (0.5 s/GiB):
                        # in steps, so a stop request is noticed.
                        left = length
                        while left:
                            step = min(left, 1 << 28)
                            hasher.zeros(step)
                            left -= step
                            if self.stopping.is_set():
                                return
                    self._put((offset, length, None, None))
                else:
                    if hasher is not None:
                        hasher.update(view)
                    self._put((offset, length, view, self._current))
            self._put(self._END)
        except _Stopped:
            return
        except BaseException as exc:  # handed to the consumer, raised there
            try:
                self._put(exc)
            except _Stopped:
                return

    def __iter__(self):
        held = None
        try:
            while True:
                item = self.ready.get()
                if held is not None:
                    self.free.put(held)
                    held = None
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                held = item[3]
                yield item[:3]
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reader thread and wait for it."""
        self.stopping.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            # The reader notices within one buffer wait (50 ms) or one piece;
            # one blocked on a silent pipe is a daemon and dies with the process.
            self.thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _Stopped(Exception):
    """The consumer went away; the reader thread ends quietly."""


def _clipped_runs(source: Source, end: int) -> Iterator[Run]:
    for offset, length, is_data in source.runs():
        if offset >= end:
            return
        yield offset, min(length, end - offset), is_data


def _merged_runs(first: Source, second: Source, end: int):
    """``(start, stop, first_is_data, second_is_data)`` over ``[0, end)``."""
    runs_a = _clipped_runs(first, end)
    runs_b = _clipped_runs(second, end)
    a = next(runs_a, None)
    b = next(runs_b, None)
    position = 0
    while position < end and a is not None and b is not None:
        stop = min(a[0] + a[1], b[0] + b[1], end)
        if stop > position:
            yield position, stop, a[2], b[2]
        position = stop
        if position >= a[0] + a[1]:
            a = next(runs_a, None)
        if position >= b[0] + b[1]:
            b = next(runs_b, None)


def _first_nonzero(source: Source, start: int, end: int, buffer) -> Optional[int]:
    """Offset of the first non-zero byte of ``source`` in ``[start, end)``, or ``None``."""
    from .._backend import kernels

    view = memoryview(buffer)
    for offset, length, piece in source.pieces(view, len(view), start):
        if offset >= end:
            break
        if piece is None:
            continue
        piece = piece[: max(0, min(length, end - offset))]
        found = kernels.find_nonzero(piece)
        if found >= 0:
            return offset + found
    return None


def _first_difference(first: Source, second: Source, end: int, progress=None) -> Optional[int]:
    from .._backend import kernels

    chunk = 4 << 20
    buf_a, buf_b = bytearray(chunk), bytearray(chunk)
    view_a, view_b = memoryview(buf_a), memoryview(buf_b)
    for start, stop, a_data, b_data in _merged_runs(first, second, end):
        position = start
        while position < stop and (a_data or b_data):
            count = min(chunk, stop - position)
            if a_data:
                first.readinto(position, view_a[:count])
            if b_data:
                second.readinto(position, view_b[:count])
            if a_data and b_data:
                # Whole bytearrays compare with memcmp; memoryviews do not.
                same = buf_a == buf_b if count == chunk else buf_a[:count] == buf_b[:count]
                if not same:
                    import numpy as np

                    diff = np.frombuffer(view_a[:count], np.uint8) != np.frombuffer(
                        view_b[:count], np.uint8
                    )
                    return position + int(np.flatnonzero(diff)[0])
            else:
                found = kernels.find_nonzero(view_a[:count] if a_data else view_b[:count])
                if found >= 0:
                    return position + found
            position += count
            if progress is not None:
                progress.update(position)
        if progress is not None:
            progress.update(stop)
    return None


def compare_images(
    first,
    second,
    first_format: Optional[str] = None,
    second_format: Optional[str] = None,
    progress=None,
    open_options=None,
) -> dict:
    """Compare the virtual contents of two images of any formats.

    Runs that are zero in both are not read; a run stored in one and zero
    in the other is only scanned for a non-zero byte. When the sizes
    differ the images count as identical if the larger one's extra part
    is all zeros (``qemu-img compare``'s default); ``size_a`` and
    ``size_b`` in the report show the difference.

    Returns:
        ``{"a", "b", "format_a", "type_a", "format_b", "type_b", "size_a",
        "size_b", "identical", "first_difference"}``: format ``"raw"`` or
        ``"vhd"``, type ``"raw"``, ``"fixed"``, ``"dynamic"`` or
        ``"differencing"``; first_difference an offset or ``None``.

    Raises:
        VHDError: an image cannot be read (or is a pipe).
    """
    source_a, owned_a = as_source(first, first_format, open_options)
    try:
        source_b, owned_b = as_source(second, second_format, open_options)
        try:
            for source in (source_a, source_b):
                if not source.seekable:
                    raise UnsupportedError(f"{source.name}: compare needs a file, not a pipe")
            size_a, size_b = source_a.virtual_size, source_b.virtual_size
            common = min(size_a, size_b)
            if progress is not None:
                progress.total = max(size_a, size_b)
            found = _first_difference(source_a, source_b, common, progress)
            if found is None and size_a != size_b:
                larger = source_a if size_a > size_b else source_b
                found = _first_nonzero(larger, common, max(size_a, size_b), bytearray(4 << 20))
            if progress is not None:
                progress.finish()
            return {
                "a": source_a.name,
                "b": source_b.name,
                "format_a": source_a.format,
                "type_a": source_a.kind,
                "format_b": source_b.format,
                "type_b": source_b.kind,
                "size_a": size_a,
                "size_b": size_b,
                "identical": found is None,
                "first_difference": found,
            }
        finally:
            if owned_b:
                source_b.close()
    finally:
        if owned_a:
            source_a.close()


def allocation_map(image, fmt: Optional[str] = None, open_options=None) -> List[dict]:
    """The allocation map of an image, like ``qemu-img map``.

    Returns:
        One dict per run, in order: ``offset``, ``length``, ``state``
        (``"data"``, ``"parent"`` or ``"zero"``), ``depth`` (0 this image,
        1 its parent, ...; ``None`` for zero), ``file_offset`` (``None`` for
        zero) and ``file`` (the file holding the run, ``None`` for zero): a
        zero run is stored nowhere, so where it is does not apply. For a raw
        file, holes are ``zero`` and stored runs ``data``.
    """
    source, owned = as_source(image, fmt, open_options)
    try:
        if isinstance(source, VHDSource):
            members = source.image.chain
            return [
                {
                    "offset": extent.offset,
                    "length": extent.length,
                    "state": extent.state,
                    "depth": extent.depth if extent.depth >= 0 else None,
                    "file_offset": extent.file_offset if extent.file_offset >= 0 else None,
                    "file": members[extent.depth].path if extent.depth >= 0 else None,
                }
                for extent in source.image.extents()
            ]
        if not source.seekable:
            raise UnsupportedError(f"{source.name}: a pipe has no allocation map")
        return [
            {
                "offset": offset,
                "length": length,
                "state": "data" if is_data else "zero",
                "depth": 0 if is_data else None,
                "file_offset": offset if is_data else None,
                "file": source.name if is_data else None,
            }
            for offset, length, is_data in source.runs()
        ]
    finally:
        if owned:
            source.close()


def detect_format(file, name=None) -> str:
    """``"vhd"`` when the file ends in a VHD footer (or starts with a dynamic copy), else ``"raw"``.

    Args:
        file: an open :class:`vhdcore.io.imagefile.ImageFile`.
        name: the file as the user gave it, for the error below.

    Raises:
        ForeignFormatError: no VHD footer, and the file starts with the
            magic of another format (qcow2, VHDX, VMDK, VDI, QED): reading
            it as raw would silently copy its metadata as disk data.
    """
    size = file.size()
    if size >= FOOTER_SIZE and file.pread(size - FOOTER_SIZE, 8, "footer") == FOOTER_COOKIE:
        return "vhd"
    if (
        size % SECTOR_SIZE == LEGACY_FOOTER_SIZE
        and file.pread(size - LEGACY_FOOTER_SIZE, 8, "footer") == FOOTER_COOKIE
    ):
        return "vhd"
    # A dynamic disk whose primary footer is damaged still has its copy at
    # offset 0 and the header right after it.
    if size >= 3 * FOOTER_SIZE:
        head = file.pread(0, FOOTER_SIZE + 8, "footer copy")
        if head[:8] == FOOTER_COOKIE and head[FOOTER_SIZE:] == DYNAMIC_COOKIE:
            return "vhd"
    foreign = _probe.foreign_error(
        name or file.path, file.pread(0, min(size, _probe.HEAD_SIZE), "start"), raw_hint=True
    )
    if foreign is not None:
        raise foreign
    return "raw"


def open_source(path, fmt: Optional[str] = None, open_options=None) -> Source:
    """Open ``path`` (``"-"`` for stdin) for reading as a raw or VHD disk.

    Args:
        path: a file, a block device, a VHD (any type), or ``"-"``.
        fmt: ``"raw"``, ``"vhd"`` (or qemu's name ``"vpc"``) or ``None`` to
            detect it from the footer. ``"raw"`` never looks at the footer
            nor for another format's magic.
        open_options: keyword arguments for :func:`vhdcore.open` of a VHD
            (the chain policy: ``allow_parent_dirs``, ``allow_symlinks``,
            ``max_chain_depth``).

    Raises:
        VHDError: the file is not a usable image of the format, or a VHD is
            asked of a pipe (VHD needs random access).
        ForeignFormatError: the file is another format's image.
        OSError: the file cannot be opened.
    """
    fmt = FORMAT_ALIASES.get(fmt, fmt)
    if fmt is not None and fmt not in FORMATS:
        raise UnsupportedError(f"unknown input format {fmt!r}: use raw or vhd (or vpc)")
    display = None
    if path == STDIO:
        if not is_seekable_file(0):
            if fmt == "vhd":
                raise UnsupportedError(
                    "stdin is a pipe: a VHD needs random access; save it to a file first"
                )
            return StreamSource(0, detect=fmt is None)
        # A regular file on stdin (< file) is read like a named file.
        path, display = "/dev/stdin", STDIO
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UnsupportedError(f"{path}: is a directory, not a disk image")
    if fmt is None:
        with open_image_file(path) as file:
            fmt = detect_format(file, display or path)
    if fmt == "vhd":
        return VHDSource(path, display, open_options=open_options)
    return RawFileSource(path, display)


def as_source(obj, fmt: Optional[str] = None, open_options=None) -> Tuple[Source, bool]:
    """A :class:`Source` for a path, an open :class:`vhdcore.formats.vhd.image.VHD` or a Source.

    Returns:
        ``(source, owned)``: ``owned`` says the caller must close it.
    """
    if isinstance(obj, Source):
        return obj, False
    if hasattr(obj, "extents") and hasattr(obj, "readinto") and hasattr(obj, "chain"):
        return VHDSource(obj.path, image=obj), False
    if not isinstance(obj, (str, bytes, os.PathLike)):
        raise TypeError(f"expected a path, a VHD or a Source, not {type(obj).__name__}")
    return open_source(obj, fmt, open_options), True


__all__ = [
    "Prefetch",
    "RawFileSource",
    "Source",
    "StreamSource",
    "VHDError",
    "VHDSource",
    "allocation_map",
    "as_source",
    "compare_images",
    "detect_format",
    "open_source",
]
