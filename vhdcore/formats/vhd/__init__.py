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


def open_image(path, mode="r", **options):
    """The :class:`~vhdcore.formats.vhd.image.VHD` object, in ``mode`` (``vhdcore.open``)."""
    from .image import VHD

    return VHD(path, mode, **options)


def describe(path, warn=None, **options) -> dict:
    """What ``vhdcore info`` reports of a VHD (:mod:`vhdcore.formats.vhd.info`)."""
    from .info import describe_path

    return describe_path(path, warn, **options)


def check_image(path, **options):
    """``vhdcore check`` for a VHD (:mod:`vhdcore.formats.vhd.check`)."""
    from .check import check

    return check(path, **options)


def writer(subformat: str, out, *, source=None, azure=False, block_size=None, **options):
    """A fixed or dynamic VHD sink (see :mod:`vhdcore.disk.writers`).

    A dynamic VHD on a stream needs its block table before the blocks, so
    the sink gets it from a first pass over ``source`` (which must then be
    seekable).
    """
    from ...disk.writers import plan_blocks
    from ...errors import ConversionError
    from .constants import DEFAULT_BLOCK_SIZE
    from .output import AZURE_MAX_SIZE
    from .writers import make_writer

    block_size = block_size or DEFAULT_BLOCK_SIZE
    plan = None
    if subformat == "dynamic" and getattr(out, "is_stream", False):
        if source is None or not source.seekable:
            raise ConversionError(
                "a dynamic VHD on stdout needs a first pass over the source to lay out its "
                "block table, and stdin is a pipe: write to a file, or use -O fixed or raw"
            )
        plan = plan_blocks(source, block_size, bytearray(min(max(block_size, 4 << 20), 8 << 20)))
    return make_writer(
        subformat,
        out,
        block_size=block_size,
        plan=plan,
        max_fixed_size=AZURE_MAX_SIZE if azure else MAX_FIXED_SIZE,
        **options,
    )


def check_options(subformat, options, dst, notes, **targets):
    """VHD's option rules (:func:`vhdcore.formats.vhd.output.check_options`)."""
    from .output import check_options as check

    return check(subformat, options, dst, notes, **targets)


def output_size(source_size, subformat, notes, **targets):
    """VHD's size rules (:func:`vhdcore.formats.vhd.output.output_size`)."""
    from .output import output_size as size

    return size(source_size, subformat, notes, **targets)


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
    check_options=check_options,
    output_size=output_size,
    targets=("azure", "xen"),
    open_image=open_image,
    describe=describe,
    check=check_image,
)
