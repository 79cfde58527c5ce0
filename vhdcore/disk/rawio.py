"""A file-like view of a virtual disk, for code that expects a file."""

from __future__ import annotations

import io
import os


class DiskRawIO(io.RawIOBase):
    """``io.RawIOBase`` over an open image of any format (a VHD, a qcow2, ...).

    Reads stop at the end of the virtual disk; writes past it are refused
    by the image. Closing the view leaves the image open.
    """

    def __init__(self, image):
        super().__init__()
        self._image = image
        self._position = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return self._image.mode == "r+"

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            position = offset
        elif whence == os.SEEK_CUR:
            position = self._position + offset
        elif whence == os.SEEK_END:
            position = self._image.virtual_size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all the rest if negative), allocating only what remains.

        ``io.RawIOBase.read`` allocates ``size`` bytes before reading, so
        ``read(10**12)`` near the end of a small disk would fail with
        ``MemoryError``; this clamps to the end of the disk first.
        """
        self._checkClosed()
        remaining = max(0, self._image.virtual_size - self._position)
        count = remaining if size is None or size < 0 else min(size, remaining)
        data = self._image.read(self._position, count)
        self._position += count
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._image.virtual_size - self._position))
        if count:
            self._image.readinto(self._position, view[:count])
            self._position += count
        return count

    def write(self, data) -> int:
        self._checkClosed()
        count = self._image.write(self._position, data)
        self._position += count
        return count

    def flush(self) -> None:
        if not self.closed and self._image.mode == "r+":
            self._image.flush()


#: The name this view had when VHD was the only format.
VHDRawIO = DiskRawIO

__all__ = ["DiskRawIO", "VHDRawIO"]
