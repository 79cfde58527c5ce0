"""The raw format: the disk byte for byte in a file or block device.

Holes of a sparse file are ``zero`` extents (never read); everything else
is ``data``. Raw has no magic, so it is what a file is when no other
format recognises it, and ``-f raw`` never probes (a raw disk may well end
in bytes that look like another format's footer).
"""

from __future__ import annotations

import os
import stat
from typing import List, Optional

from ..disk.extent import DATA, ZERO, Extent, append_extent
from ..disk.virtual import ReadOnlyDisk
from ..errors import OutOfRangeError
from ..io.imagefile import open_image_file
from ..io.rawfile import data_runs
from . import Format

SECTOR_SIZE = 512


class RawDisk(ReadOnlyDisk):
    """A raw image opened for reading: a :class:`~vhdcore.disk.virtual.VirtualDisk`."""

    format = "raw"
    logical_sector_size = SECTOR_SIZE

    def __init__(self, path, **options):
        # Chain options (allow_parent_dirs, ...) mean nothing to raw.
        self.path = os.fspath(path)
        self.files = [self.path]
        self._file = open_image_file(self.path)
        try:
            fd = getattr(self._file, "fd", None)
            device = None
            if fd is not None and stat.S_ISBLK(os.fstat(fd).st_mode):
                device = os.lseek(fd, 0, os.SEEK_END)
            self.virtual_size = device if device is not None else self._file.size()
            # Holes exist only in regular files; a device is all data.
            self._sparse = fd is not None and device is None
        except BaseException:
            self._file.close()
            raise

    def extents(self, offset: int = 0, length: Optional[int] = None) -> List[Extent]:
        if length is None:
            length = self.virtual_size - offset
        end = offset + length
        if offset < 0 or length < 0 or end > self.virtual_size:
            raise OutOfRangeError(
                f"{self.path}: range {offset}+{length} is outside the disk "
                f"({self.virtual_size} bytes)"
            )
        out: List[Extent] = []
        if not self._sparse:
            append_extent(out, Extent(offset, length, DATA, 0, offset))
            return out
        position = offset
        for start, count in data_runs(self._file.fd, offset, end):
            if start > position:
                append_extent(out, Extent(position, start - position, ZERO, -1, -1))
            append_extent(out, Extent(start, count, DATA, 0, start))
            position = start + count
        if position < end:
            append_extent(out, Extent(position, end - position, ZERO, -1, -1))
        return out

    def readinto(self, offset: int, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if offset < 0 or offset + len(view) > self.virtual_size:
            raise OutOfRangeError(
                f"{self.path}: read of {len(view)} bytes at {offset} is outside the disk "
                f"({self.virtual_size} bytes)"
            )
        self._file.preadinto(offset, view, "raw data")
        return len(view)

    def member_file(self, depth: int):
        return self._file if depth == 0 else None

    def close(self) -> None:
        self._file.close()



def open(path, **options) -> RawDisk:  # noqa: A001 - the registry's verb
    """Open ``path`` as a raw disk, read-only."""
    return RawDisk(path, **options)


def writer(subformat: str, out, **options):
    """The raw sink: the disk byte for byte, aligned zero stretches left as holes."""
    from ..disk.writers import RawWriter

    return RawWriter(out)


def describe(path, warn=None, **options) -> dict:
    """What ``vhdcore info -f raw`` reports: the file as a raw disk."""
    from ..disk.sources import open_source
    from .vhd.info import describe_raw

    with open_source(path, "raw") as source:
        return describe_raw(source)


FORMAT = Format(
    name="raw",
    description="raw disk image (byte for byte)",
    open=open,
    writer=writer,
    subformats=("raw",),
    default_subformat="raw",
    random_access=False,
    describe=describe,
)
