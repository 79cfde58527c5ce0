"""The single file-I/O layer under every image operation.

Everything that touches an image file goes through :class:`ImageFile`:
positional reads that refuse short reads, positional writes that finish
short writes, fsync, truncate and locking. Keeping it in one small class
gives two things: the format code never sees a partial read as zeros (a
short read of metadata is corruption, not padding), and the fault-injection
tests can replace :data:`FILE_FACTORY` to "crash" after the N-th write or
flush, or to return ``ENOSPC``/``EIO``, without touching the engine.

It is also where an ``OSError`` gets a name: ``pwrite`` on a full disk
raises one with no file name at all, and a conversion's temporary file is
not the file the user asked for. Every failure here becomes a
:class:`~vhdcore.errors.StorageError` naming :attr:`ImageFile.name` (the
user's file) and what was being done.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from ..errors import CorruptImageError, LockedError, StorageError, storage_error


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
        name: the file to name in errors, when ``path`` is not the user's
            (a temporary file that will become ``name``).

    Raises:
        StorageError: the file cannot be opened (a directory, a read-only
            file system, ...), named by ``name``. A missing file stays a
            plain ``FileNotFoundError`` (it names the file already).
    """

    def __init__(self, path, writable: bool = False, create: bool = False, lock: bool = True,
                 name=None):
        self.path = os.fspath(path)
        self.name = self.path if name is None else os.fspath(name)
        flags = os.O_RDWR if writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        flags |= getattr(os, "O_CLOEXEC", 0)
        self.writable = writable
        self.fd = -1
        try:
            self.fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            if self.name == self.path and isinstance(exc, (FileNotFoundError, FileExistsError)):
                raise
            if exc.errno == errno.EISDIR:
                raise self._directory() from None
            action = "cannot create" if create else (
                "cannot open for writing" if writable else "cannot open")
            raise self._error(exc, action) from exc
        if stat.S_ISDIR(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            self.fd = -1
            raise self._directory()
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

    def _directory(self) -> StorageError:
        return StorageError(f"{self.name}: is a directory, not a disk image",
                            errno.EISDIR, self.name, os.strerror(errno.EISDIR))

    def _error(self, exc: OSError, action: str) -> OSError:
        """``exc`` as a :class:`StorageError` naming this file and ``action``."""
        return storage_error(exc, self.name, action)

    # -- reading -----------------------------------------------------------

    def size(self) -> int:
        """Current size of the file in bytes."""
        return os.fstat(self.fd).st_size

    def pread(self, offset: int, length: int, what: str = "data") -> bytes:
        """Exactly ``length`` bytes at ``offset``.

        Raises:
            CorruptImageError: the file ends first (``what`` names the structure).
            StorageError: the read failed (``EIO``, ...).
        """
        try:
            data = os.pread(self.fd, length, offset)
            while len(data) < length:
                more = os.pread(self.fd, length - len(data), offset + len(data))
                if not more:
                    raise CorruptImageError(
                        f"{self.path}: {what} at 0x{offset:x} needs {length} bytes, "
                        f"file ends after {len(data)}"
                    )
                data += more
        except OSError as exc:
            raise self._error(exc, f"cannot read the {what} at 0x{offset:x}") from exc
        return data

    def preadinto(self, offset: int, buffer, what: str = "data") -> int:
        """Fill ``buffer`` (writable, any buffer) from ``offset``; returns its length.

        Raises:
            CorruptImageError: the file ends before the buffer is full.
            StorageError: the read failed.
        """
        try:
            # One system call in the usual case; the checks come after.
            done = os.preadv(self.fd, (buffer,), offset)
        except OSError as exc:
            raise self._error(exc, f"cannot read the {what} at 0x{offset:x}") from exc
        view = buffer if type(buffer) is memoryview else memoryview(buffer)
        total = view.nbytes
        if done == total:
            return total
        view = view.cast("B")
        try:
            while done < total:
                got = os.preadv(self.fd, [view[done:]], offset + done)
                if got == 0:
                    raise CorruptImageError(
                        f"{self.path}: {what} at 0x{offset:x} needs {total} bytes, "
                        f"file ends after {done}"
                    )
                done += got
        except OSError as exc:
            raise self._error(exc, f"cannot read the {what} at 0x{offset + done:x}") from exc
        return total

    # -- writing -----------------------------------------------------------

    def pwrite(self, offset: int, data) -> None:
        """Write all of ``data`` at ``offset``, finishing short writes.

        Raises:
            StorageError: the write failed (``ENOSPC``, ``EIO``, ...); part
                of ``data`` may have landed.
        """
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                written = os.pwrite(self.fd, view[done:], offset + done)
                if written <= 0:  # pragma: no cover - the OS raises instead
                    raise OSError(errno.EIO, "write made no progress")
                done += written
        except OSError as exc:
            raise self._error(
                exc, f"cannot write {len(view) - done} bytes at 0x{offset + done:x}"
            ) from exc

    def flush(self) -> None:
        """Make every completed write durable (fsync)."""
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise self._error(exc, "cannot flush its writes to disk (fsync)") from exc

    def truncate(self, size: int) -> None:
        """Set the file's length to ``size`` bytes."""
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise self._error(exc, f"cannot set its size to {size} bytes") from exc

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


def open_image_file(path, writable: bool = False, create: bool = False, lock: bool = True,
                    name=None):
    """Open ``path`` through :data:`FILE_FACTORY` (see :class:`ImageFile`)."""
    if name is None:
        return FILE_FACTORY(path, writable=writable, create=create, lock=lock)
    return FILE_FACTORY(path, writable=writable, create=create, lock=lock, name=name)
