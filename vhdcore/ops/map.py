"""The allocation map of a disk of any format, like ``qemu-img map``."""

from __future__ import annotations

from typing import List, Optional

from ..disk.extent import ENCODED
from ..disk.sources import as_source
from ..errors import UnsupportedError


def allocation_map(image, fmt: Optional[str] = None, open_options=None) -> List[dict]:
    """The allocation map of an image, from its format's extents.

    Returns:
        One dict per run, in order: ``offset``, ``length``, ``state``
        (``"data"``, ``"parent"``, ``"zero"``, or ``"encoded"`` for data
        stored compressed), ``depth`` (0 this image, 1 its parent, ...;
        ``None`` for zero), ``file_offset`` (``None`` for zero, and for
        encoded data, whose file bytes are not the disk's) and ``file`` (the
        file holding the run, ``None`` for zero): a zero run is stored
        nowhere, so where it is does not apply. For a raw file, holes are
        ``zero`` and stored runs ``data``.
    """
    source, owned = as_source(image, fmt, open_options)
    try:
        disk = getattr(source, "disk", None)
        if disk is None:
            raise UnsupportedError(f"{source.name}: a pipe has no allocation map")
        names = _member_names(disk, source.name, source.files)
        return [
            {
                "offset": extent.offset,
                "length": extent.length,
                "state": extent.state,
                "depth": extent.depth if extent.depth >= 0 else None,
                "file_offset": extent.file_offset
                if extent.file_offset >= 0 and extent.state != ENCODED
                else None,
                "file": names(extent.depth) if extent.depth >= 0 else None,
            }
            for extent in disk.extents()
        ]
    finally:
        if owned:
            source.close()


def _member_names(disk, name, files):
    """``depth -> file name`` of the file holding runs at that depth.

    ``files[depth]`` is that file for most formats, but not for one whose
    image keeps its data elsewhere (a qcow2 external data file is listed
    after the image, and holds depth 0's runs): the member file says.
    """
    cache = {}

    def named(depth: int) -> str:
        if depth not in cache:
            member = disk.member_file(depth)
            found = getattr(member, "name", None)
            if depth == 0 and (found is None or found == files[0]):
                found = name
            cache[depth] = found if found is not None else files[depth]
        return cache[depth]

    return named


__all__ = ["allocation_map"]
