"""The VHD format (Microsoft Virtual PC / Hyper-V / Xen / Azure): its registry entry.

The modules of this package hold the structures (footer, header,
locators, bat, batmap, geometry), the image object (image, chain, create),
the writers conversion uses, and the maintenance operations that exist
only for VHD (check, repair, snapshot, commit, rebase, resize, compact).
This module imports none of them until asked, so detection stays cheap.
"""

from __future__ import annotations

from .. import Format
from .constants import (
    DYNAMIC_COOKIE,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    MAX_DYNAMIC_SIZE,
    MAX_FIXED_SIZE,
)
from .layout import read_primary_footer


def detect(file) -> bool:
    """Whether an open ImageFile is a VHD: a footer at the end (512 bytes, or a
    legacy 511), or a footer copy at offset 0 followed by a dynamic header, so a
    damaged primary footer still opens."""
    size = file.size()
    if read_primary_footer(file.pread, size)[0][:8] == FOOTER_COOKIE:
        return True
    if size >= 3 * FOOTER_SIZE:
        head = file.pread(0, FOOTER_SIZE + 8, "footer copy")
        if head[:8] == FOOTER_COOKIE and head[FOOTER_SIZE:] == DYNAMIC_COOKIE:
            return True
    return False


def open(path, **options):  # noqa: A001 - the registry's verb
    """Open a VHD (any type; a differencing disk with its chain) read-only, under a
    shared lock so no writer changes it while it is read."""
    from .image import open as open_image

    return open_image(path, "r", **{"consistent": True, **options})


def writer(subformat: str, out, **options):
    """A fixed or dynamic VHD sink (see :mod:`vhdcore.disk.writers`)."""
    from ...disk.writers import make_writer

    return make_writer(subformat, out, **options)


FORMAT = Format(
    name="vhd",
    description="VHD (Virtual PC, Hyper-V, Xen, Azure)",
    aliases=("vpc",),
    detect=detect,
    open=open,
    writer=writer,
    subformats=("fixed", "dynamic"),
    default_subformat="dynamic",
    extensions=(".vhd",),
    max_size={"fixed": MAX_FIXED_SIZE, "dynamic": MAX_DYNAMIC_SIZE},
    options={"dynamic": ("block_size",)},
)
