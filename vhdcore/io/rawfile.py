"""Raw disk images as files and streams: hole scanning, sparse and streaming writes.

A raw image is the virtual disk byte for byte. Two facts make converting
one fast:

* A sparse file's holes read as zeros without being stored. ``lseek``
  with ``SEEK_DATA``/``SEEK_HOLE`` lists the stored runs, so a converter
  never reads a hole (:func:`data_runs`). File systems without the calls
  (or that answer ``EINVAL``) are treated as fully stored: correct, just
  slower.
* Writing a raw or fixed-VHD output, a zero run need not be written at all:
  the file is created at its final length with ``ftruncate`` and the run
  stays a hole.

Streams (stdin, stdout, pipes) cannot seek, so :class:`StreamReader` reads
sequentially and :class:`StreamWriter` writes zero runs as real zeros from
one shared buffer.

Every image file is opened through :func:`vhdcore.io.imagefile.open_image_file`;
this module only adds ``lseek`` queries and write-behind hints on the same
descriptors (neither reads nor writes data).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import Iterator, Optional, Tuple

from ..errors import storage_error

#: One shared, read-only buffer of zeros for padding streams and hashing
#: zero runs; sliced through a memoryview, never copied.
ZEROS = bytes(4 << 20)
ZEROS_VIEW = memoryview(ZEROS)


def data_runs(fd: int, start: int, end: int) -> Iterator[Tuple[int, int]]:
    """``(offset, length)`` of the stored (non-hole) runs of ``[start, end)``.

    Uses ``SEEK_DATA``/``SEEK_HOLE``. Where the file system does not support
    them, the whole range is one run. A run may still hold zeros (written
    zeros, or an unwritten preallocated extent): callers check the data.
    """
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if start >= end:
        return
    if seek_data is None or seek_hole is None:
        yield start, end - start
        return
    position = start
    while position < end:
        try:
            data = os.lseek(fd, position, seek_data)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data at or after position
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                yield position, end - position
                return
            raise
        if data >= end:
            return
        try:
            hole = os.lseek(fd, data, seek_hole)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            hole = end
        hole = min(hole, end)
        yield data, hole - data
        position = hole


def is_seekable_file(fd: int) -> bool:
    """Whether ``fd`` is a regular file (so it can be read at any offset)."""
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


class StreamReader:
    """Sequential reads from a pipe or terminal (``fd`` 0 for stdin)."""

    def __init__(self, fd: int, name: str = "<stdin>"):
        self.fd = fd
        self.name = name
        self.position = 0
        self.eof = False

    def fill(self, view: memoryview) -> int:
        """Read until ``view`` is full or the stream ends; returns bytes read."""
        done = 0
        total = len(view)
        while done < total and not self.eof:
            try:
                got = os.readv(self.fd, [view[done:]])
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            except OSError as exc:
                raise storage_error(exc, self.name.strip("<>"),
                                    f"cannot read at byte {self.position + done}") from exc
            if got == 0:
                self.eof = True
                break
            done += got
        self.position += done
        return done


class StreamWriter:
    """Sequential writes to a pipe (``fd`` 1 for stdout).

    Offsets are accepted so writers can share code with the file case, but
    they must never go backwards; a gap is filled with zeros. When stdout
    is a regular file (``> disk.vhd``) a gap past the file's end is skipped
    with ``lseek`` instead, so it stays a hole as in a file written directly;
    a gap over existing bytes (``1<> disk.vhd``) still gets its zeros.
    """

    is_stream = True

    def __init__(self, fd: int, name: str = "<stdout>"):
        self.fd = fd
        self.path = name
        self.position = 0
        # Where the stream started in a regular file (None: a pipe, or
        # O_APPEND, where every write lands at the end whatever the offset).
        self.base = None
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode) and not (
                fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
            ):
                self.base = os.lseek(fd, 0, os.SEEK_CUR)
        except OSError:
            self.base = None

    def _write_all(self, view) -> None:
        view = memoryview(view).cast("B")
        done = 0
        while done < len(view):
            try:
                done += os.write(self.fd, view[done:])
            except BrokenPipeError:
                raise  # the reader went away: the CLI exits quietly
            except OSError as exc:
                raise storage_error(exc, self.path.strip("<>"),
                                    f"cannot write at byte {self.position + done}") from exc
        self.position += len(view)

    def pad_to(self, offset: int) -> None:
        """Write zeros up to ``offset``."""
        if offset < self.position:
            raise ValueError(f"stream offset {offset} is behind position {self.position}")
        if (
            self.base is not None
            and offset > self.position
            and self.base + self.position >= os.fstat(self.fd).st_size
        ):
            os.lseek(self.fd, self.base + offset, os.SEEK_SET)
            self.position = offset
            return
        while self.position < offset:
            self._write_all(ZEROS_VIEW[: min(len(ZEROS_VIEW), offset - self.position)])

    def pwrite(self, offset: int, data) -> None:
        self.pad_to(offset)
        self._write_all(data)

    def truncate(self, size: int) -> None:
        """Extend the stream to ``size`` bytes with zeros (it cannot shrink)."""
        self.pad_to(size)
        if self.base is not None and os.fstat(self.fd).st_size < self.base + size:
            os.ftruncate(self.fd, self.base + size)  # a skipped gap at the very end

    def flush(self) -> None:
        """Nothing to make durable: the reader owns the data now."""

    def close(self) -> None:
        """Leave stdout open: it belongs to the process."""


def fd_of(file) -> Optional[int]:
    """The descriptor behind a plain :class:`vhdcore.io.imagefile.ImageFile`, else ``None``.

    Fast paths that bypass the file object's methods (write-behind hints,
    ``fallocate``) are taken only for the plain class, so a
    fault-injection wrapper installed as ``fileio.FILE_FACTORY`` sees every
    operation through its own methods.
    """
    from .imagefile import ImageFile

    if type(file) is ImageFile and not file.closed:
        return file.fd
    return None


def _libc_function(name, argtypes):
    """A libc function through ctypes, or ``None`` where it does not exist."""
    import ctypes  # only when a writer first needs it: ctypes costs startup time

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = getattr(libc, name)
    except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
        return None
    function.argtypes = [getattr(ctypes, name) for name in argtypes]
    function.restype = ctypes.c_int
    return function


class Preallocator:
    """Reserve disk space for a write just before it happens (``fallocate``).

    On ext4 and XFS, buffered writes into space that is already allocated
    skip the delayed-allocation bookkeeping done per page. Only the range
    about to be written is ever reserved: ``fallocate`` rounds it out to
    the file-system blocks the write itself dirties, so the output never
    occupies more than its data (reserving ahead, in large steps, filled
    the holes of sparse dynamic output: issue 10). Reserved space reads as
    zeros, exactly like a hole, so reserving never changes what the output
    contains. ``keep_size`` reserves without growing the file (for raw
    output, created at its final length). Failures are ignored: the write
    that follows reports a real problem such as ``ENOSPC``.
    """

    _FALLOC_FL_KEEP_SIZE = 1
    _call = None
    _looked = False

    def __init__(self, file, keep_size: bool):
        self.fd = fd_of(file)
        self.mode = self._FALLOC_FL_KEEP_SIZE if keep_size else 0
        if not Preallocator._looked:
            Preallocator._looked = True
            Preallocator._call = _libc_function(
                "fallocate", ["c_int", "c_int", "c_int64", "c_int64"]
            )
        if Preallocator._call is None:
            self.fd = None

    def reserve(self, offset: int, length: int) -> None:
        """Reserve ``[offset, offset + length)``, the range the next write covers."""
        if self.fd is None or length <= 0:
            return
        if Preallocator._call(self.fd, self.mode, offset, length) != 0:
            import ctypes

            if ctypes.get_errno() in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                self.fd = None  # not on this file system: stop asking


class WriteBehind:
    """Start write-back of an output's finished ranges while work goes on.

    The converter fsyncs its output before renaming it into place. Left to
    the end, that fsync waits for every dirty page at once; asking the
    kernel to start writing each finished stretch early
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, Linux) overlaps the device
    writes with the conversion, so the final fsync finds little left to do.
    It is only a hint: where the call is missing nothing happens, and
    durability still comes from the fsync.
    """

    #: Bytes written between hints.
    STRIDE = 32 << 20
    _SYNC_FILE_RANGE_WRITE = 2
    _call = None
    _looked = False

    def __init__(self, file):
        self.fd = fd_of(file)
        self.pending_from = None
        self.pending_to = 0
        if self.fd is not None and not WriteBehind._looked:
            WriteBehind._looked = True
            WriteBehind._call = _libc_function(
                "sync_file_range", ["c_int", "c_int64", "c_int64", "c_uint"]
            )

    def wrote(self, offset: int, length: int) -> None:
        """Note a finished write of ``[offset, offset + length)``."""
        if self.fd is None or WriteBehind._call is None:
            return
        if self.pending_from is None or offset != self.pending_to:
            self.kick()
            self.pending_from = offset
        self.pending_to = offset + length
        if self.pending_to - self.pending_from >= self.STRIDE:
            self.kick()

    def kick(self) -> None:
        """Hint the pending range now."""
        if self.pending_from is not None and self.pending_to > self.pending_from:
            WriteBehind._call(
                self.fd,
                self.pending_from,
                self.pending_to - self.pending_from,
                self._SYNC_FILE_RANGE_WRITE,
            )
        self.pending_from = None
