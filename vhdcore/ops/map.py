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
        files = source.files
        return [
            {
                "offset": extent.offset,
                "length": extent.length,
                "state": extent.state,
                "depth": extent.depth if extent.depth >= 0 else None,
                "file_offset": extent.file_offset
                if extent.file_offset >= 0 and extent.state != ENCODED
                else None,
                "file": (source.name if extent.depth == 0 else files[extent.depth])
                if extent.depth >= 0
                else None,
            }
            for extent in disk.extents()
        ]
    finally:
        if owned:
            source.close()


__all__ = ["allocation_map"]
