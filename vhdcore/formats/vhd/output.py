"""What a VHD output needs besides its writer: option checks and the output size.

Conversion asks the registry entry for these (``check_options`` and
``output_size``), so the rules of VHD output (a whole sector, a whole MiB
for Azure, a whole 2 MiB block for Xen, the 2040 GiB limit of dynamic
disks, the block-size policy) live with the format, not in the engine.
"""

from __future__ import annotations

import os
from typing import List, Optional

from ...errors import ConversionError, LimitError, UnsupportedError
from ...sizes import format_size
from .blocksize import check_new_block_size
from .constants import DEFAULT_BLOCK_SIZE, MAX_DYNAMIC_SIZE, MAX_FIXED_SIZE, SECTOR_SIZE

MIB = 1 << 20
#: Azure's largest fixed disk (managed disks and page-blob uploads): 32 TiB.
AZURE_MAX_SIZE = 32 << 40
#: Azure's smallest managed disk upload (20 MiB); smaller images get a note.
AZURE_MIN_SIZE = 20 << 20
#: qemu (and Hyper-V OS disks) refuse any VHD larger than this.
QEMU_MAX_SIZE = MAX_DYNAMIC_SIZE


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def subformat_for_target(subformat: Optional[str], azure: bool, xen: bool) -> Optional[str]:
    """The VHD subformat ``--azure`` / ``--xen`` imply, or refuse a contradiction.

    ``subformat`` is what ``-O`` asked (``None``: nothing asked).
    """
    if azure and xen:
        raise UnsupportedError("--azure and --xen ask for different creators; choose one")
    if subformat is None:
        return "fixed" if azure else "dynamic" if xen else None
    if azure and subformat != "fixed":
        raise UnsupportedError(f"--azure writes a fixed VHD, not {subformat}")
    return subformat


def check_options(subformat: str, options: dict, dst, notes: List[str], *,
                  azure: bool = False, xen: bool = False) -> dict:
    """The writer options for ``subformat``, checked; notes for what is unusual."""
    options = dict(options)
    if subformat == "dynamic":
        block_size = options.get("block_size") or DEFAULT_BLOCK_SIZE
        options["block_size"] = block_size
        if xen:
            from .xen import check_block_size

            check_block_size(block_size, os.fspath(dst))
        note = check_new_block_size(block_size)
        if note is not None:
            notes.append(note)
    return options


def output_size(source_size: int, subformat: str, notes: List[str], *, azure: bool = False,
                xen: bool = False, **_options) -> int:
    """The output's virtual size, with the notes and limits that go with it."""
    if source_size == 0 and not azure:
        raise ConversionError("the source is empty (0 bytes): there is no disk to put in a VHD")
    if azure:
        if source_size > AZURE_MAX_SIZE:
            raise LimitError(
                f"the source is {format_size(source_size)} ({source_size} bytes); Azure's "
                f"largest fixed disk is {format_size(AZURE_MAX_SIZE)} ({AZURE_MAX_SIZE} bytes)"
            )
        size = _round_up(max(source_size, 1), MIB)
        if size != source_size:
            notes.append(
                f"virtual size rounded up from {source_size} to {size} bytes "
                f"({format_size(size)}), a whole MiB as Azure requires"
            )
        if size < AZURE_MIN_SIZE:
            notes.append(f"Azure managed disks are at least {format_size(AZURE_MIN_SIZE)}")
    elif xen:
        from .xen import XEN_BLOCK_SIZE

        size = _round_up(source_size, XEN_BLOCK_SIZE)
        if size != source_size:
            notes.append(
                f"virtual size rounded up from {source_size} to {size} bytes "
                f"({format_size(size)}), a whole 2 MiB block as blktap makes them"
            )
    else:
        size = _round_up(source_size, SECTOR_SIZE)
        if size != source_size:
            notes.append(f"virtual size padded from {source_size} to {size} bytes (a whole sector)")
    if subformat == "dynamic" and size > MAX_DYNAMIC_SIZE:
        raise LimitError(
            f"a dynamic VHD may hold at most {MAX_DYNAMIC_SIZE} bytes (2040 GiB); the source "
            f"has {size}: convert to fixed or raw instead"
        )
    limit = AZURE_MAX_SIZE if azure else MAX_FIXED_SIZE
    if subformat == "fixed" and size > limit:
        raise LimitError(f"a fixed VHD is limited to {limit} bytes here; the source has {size}")
    if subformat == "fixed" and size > QEMU_MAX_SIZE:
        notes.append(
            "fixed VHD larger than 2040 GiB: Azure accepts it, but qemu-img and "
            "Hyper-V OS disks will not open it"
        )
    return size
