"""The single file-I/O layer under every image operation.

Everything that touches an image file goes through :class:`ImageFile`:
positional reads that refuse short reads, positional writes that finish
short writes, fsync, truncate and locking. Keeping it in one small class
gives two things: the format code never sees a partial read as zeros (a
short read of metadata is corruption, not padding), and the fault-injection
tests can replace :data:`FILE_FACTORY` to "crash" after the N-th write or
flush, or to return ``ENOSPC``/``EIO``, without touching the engine.
"""

from __future__ import annotations

import errno
import fcntl
import os

from .errors import CorruptImageError, LockedError


class ImageFile:
    """An open image file addressed by absolute offsets.

    Args:
        path: the file to open.
        writable: open for reading and writing (``O_RDWR``) rather than
            read-only.
        create: create the file, failing if it exists (``O_EXCL``).
        lock: for writable handles, take an exclusive ``flock`` so a second
            writer gets :class:`LockedError` instead of corrupting the image.
            Read-only handles take no lock and are never blocked, unless
            ``lock="shared"``: then they take a shared lock, which fails
            while a writer holds the image and keeps writers out meanwhile
            (what a conversion wants of its source, as qemu-img does).
    """

    def __init__(self, path, writable: bool = False, create: bool = False, lock: bool = True):
        self.path = os.fspath(path)
        flags = os.O_RDWR if writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        flags |= getattr(os, "O_CLOEXEC", 0)
        self.writable = writable
        self.fd = os.open(self.path, flags, 0o644)
        if writable and lock:
            self._lock(fcntl.LOCK_EX, "image is open for writing by another handle or process "
                                      "(or being read by a conversion, or the parent of an image "
                                      "open for writing)")
        elif lock == "shared":
            self._lock(fcntl.LOCK_SH, "image is open for writing by another handle or process")

    def _lock(self, kind: int, busy: str) -> None:
        try:
            fcntl.flock(self.fd, kind | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = -1
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockedError(f"{self.path}: {busy}") from None
            raise

    # -- reading -----------------------------------------------------------

    def size(self) -> int:
        """Current size of the file in bytes."""
        return os.fstat(self.fd).st_size

    def pread(self, offset: int, length: int, what: str = "data") -> bytes:
        """Exactly ``length`` bytes at ``offset``.

        Raises:
            CorruptImageError: the file ends first (``what`` names the structure).
        """
        data = os.pread(self.fd, length, offset)
        while len(data) < length:
            more = os.pread(self.fd, length - len(data), offset + len(data))
            if not more:
                raise CorruptImageError(
                    f"{self.path}: {what} at 0x{offset:x} needs {length} bytes, "
                    f"file ends after {len(data)}"
                )
            data += more
        return data

    def preadinto(self, offset: int, buffer, what: str = "data") -> int:
        """Fill ``buffer`` (writable, any buffer) from ``offset``; returns its length.

        Raises:
            CorruptImageError: the file ends before the buffer is full.
        """
        view = memoryview(buffer).cast("B")
        done = 0
        total = len(view)
        while done < total:
            got = os.preadv(self.fd, [view[done:]], offset + done)
            if got == 0:
                raise CorruptImageError(
                    f"{self.path}: {what} at 0x{offset:x} needs {total} bytes, "
                    f"file ends after {done}"
                )
            done += got
        return total

    # -- writing -----------------------------------------------------------

    def pwrite(self, offset: int, data) -> None:
        """Write all of ``data`` at ``offset``, finishing short writes."""
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            written = os.pwrite(self.fd, view[done:], offset + done)
            if written <= 0:  # pragma: no cover - the OS raises instead
                raise OSError(errno.EIO, "write made no progress", self.path)
            done += written

    def flush(self) -> None:
        """Make every completed write durable (fsync)."""
        os.fsync(self.fd)

    def truncate(self, size: int) -> None:
        """Set the file's length to ``size`` bytes."""
        os.ftruncate(self.fd, size)

    # -- lifetime ----------------------------------------------------------

    def close(self) -> None:
        """Close the descriptor (releasing the lock); safe to call twice."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


#: The constructor every module uses to open image files. Fault-injection
#: tests swap it for a subclass that fails on cue; nothing else should.
FILE_FACTORY = ImageFile


def open_image_file(path, writable: bool = False, create: bool = False, lock: bool = True):
    """Open ``path`` through :data:`FILE_FACTORY` (see :class:`ImageFile`)."""
    return FILE_FACTORY(path, writable=writable, create=create, lock=lock)
