"""The qcow2 format (KVM, OpenStack): its registry entry.

The modules of this package hold the header, the L1/L2 tables, the
snapshot table and the image object; this module imports none of them
until asked, so detection stays cheap.
"""

from __future__ import annotations

from .. import Format
from .constants import MAGIC, MAX_VIRTUAL_SIZE


def detect(file) -> bool:
    """Whether an open ImageFile starts with the qcow2 magic.

    qcow version 1 shares the magic and is left to the probe, which names
    it; any other version is qcow2's, refused by name when opened.
    """
    if file.size() < 8:
        return False
    head = file.pread(0, 8, "qcow2 magic")
    return head[:4] == MAGIC and head[4:8] != b"\0\0\0\1"


def open(path, **options):  # noqa: A001 - the registry's verb
    """Open a qcow2 image read-only, with its backing chain and external data file."""
    from .image import open as open_image

    return open_image(path, **options)


def describe(path, warn=None, **options) -> dict:
    """What ``vhdcore info`` reports of a qcow2 (:mod:`vhdcore.formats.qcow2.info`)."""
    from .image import open as open_image
    from .info import describe as describe_disk

    with open_image(path, **options) as disk:
        return describe_disk(disk)


def check(path, parents=False, deep=False, **options):
    """``vhdcore check`` for a qcow2 (:mod:`vhdcore.formats.qcow2.check`): refcounts
    against uses. ``parents`` and ``deep`` are VHD's; the backing chain is
    not walked (as ``qemu-img check`` checks one image)."""
    from .check import check as check_image

    return check_image(path)


FORMAT = Format(
    name="qcow2",
    description="qcow2 (QEMU, KVM, OpenStack), read-only",
    detect=detect,
    open=open,
    writer=None,
    extensions=(".qcow2",),
    describe=describe,
    check=check,
    max_size={"qcow2": MAX_VIRTUAL_SIZE},
)
