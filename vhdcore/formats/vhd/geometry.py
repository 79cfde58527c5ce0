"""Disk geometry (cylinders/heads/sectors) and which size is the real one.

The footer stores a CHS geometry beside ``current_size``. Old Microsoft
tools sized disks by CHS, so for some creators the CHS product, not
``current_size``, is what a guest sees. :func:`size_rule` names the rule
vhdcore follows (the one qemu adopted in 2025).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Tuple

from .constants import MAX_CHS_SECTORS, SECTOR_SIZE

__all__ = [
    "Geometry",
    "MAX_GEOMETRY",
    "chs_for_sectors",
    "chs_covering",
    "size_rule",
    "virtual_size",
    "CHS_CREATORS",
]

_PACKED = struct.Struct(">HBB")

# Creators whose disks are sized by CHS. qemu 7.2 also applied the CHS rule
# to every creator it did not know; newer qemu narrows it to these two.
CHS_CREATORS = frozenset({b"vpc ", b"qemu"})


@dataclass(frozen=True)
class Geometry:
    """A CHS triple as the footer stores it (16-bit, 8-bit, 8-bit)."""

    cylinders: int
    heads: int
    sectors: int

    def __post_init__(self) -> None:
        fits = 0 <= self.cylinders <= 0xFFFF and 0 <= self.heads <= 0xFF
        if not (fits and 0 <= self.sectors <= 0xFF):
            raise ValueError(
                f"geometry {self.cylinders}/{self.heads}/{self.sectors} does not fit 16/8/8 bits"
            )

    @property
    def total_sectors(self) -> int:
        return self.cylinders * self.heads * self.sectors

    @property
    def size(self) -> int:
        """Bytes addressed by this geometry."""
        return self.total_sectors * SECTOR_SIZE

    @property
    def is_max(self) -> bool:
        """65535/16/255: the value qemu's ``force_size`` writes, meaning "use current_size"."""
        return (self.cylinders, self.heads, self.sectors) == (65535, 16, 255)

    def to_int(self) -> int:
        """The packed 32-bit footer field."""
        return (self.cylinders << 16) | (self.heads << 8) | self.sectors

    @classmethod
    def from_int(cls, value: int) -> "Geometry":
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"packed geometry {value:#x} is not a 32-bit value")
        return cls(*_PACKED.unpack(value.to_bytes(4, "big")))

    def __str__(self) -> str:
        return f"{self.cylinders}/{self.heads}/{self.sectors}"


MAX_GEOMETRY = Geometry(65535, 16, 255)


def chs_for_sectors(total_sectors: int) -> Geometry:
    """The specification's geometry for a disk of ``total_sectors`` sectors.

    The result may address fewer sectors than asked (the algorithm rounds
    down), and is capped at 65535/16/255.

    Raises:
        ValueError: ``total_sectors`` is negative.
    """
    if total_sectors < 0:
        raise ValueError(f"total_sectors must not be negative, not {total_sectors}")
    total = min(total_sectors, MAX_CHS_SECTORS)
    if total >= 65535 * 16 * 63:
        sectors, heads = 255, 16
        cyl_heads = total // sectors
    else:
        sectors = 17
        cyl_heads = total // sectors
        heads = max(4, (cyl_heads + 1023) // 1024)
        if cyl_heads >= heads * 1024 or heads > 16:
            sectors, heads = 31, 16
            cyl_heads = total // sectors
        if cyl_heads >= heads * 1024:
            sectors, heads = 63, 16
            cyl_heads = total // sectors
    return Geometry(cyl_heads // heads, heads, sectors)


def chs_covering(total_sectors: int) -> Geometry:
    """The smallest specification geometry that covers ``total_sectors``.

    This is how qemu-img sizes a new ``vpc`` image: it grows the sector
    count until the CHS product reaches the request (1000 MiB becomes
    2032/16/63 = 1,048,707,072 bytes). Capped at the maximum geometry.

    Raises:
        ValueError: ``total_sectors`` is negative.
    """
    if total_sectors < 0:
        raise ValueError(f"total_sectors must not be negative, not {total_sectors}")
    if total_sectors >= MAX_CHS_SECTORS:
        return MAX_GEOMETRY
    # The CHS product is monotone in the request and never more than a
    # cylinder (at most 16*255 sectors) below it, so this loop is short.
    candidate = total_sectors
    while True:
        geometry = chs_for_sectors(candidate)
        if geometry.total_sectors >= total_sectors:
            return geometry
        candidate += 1


def size_rule(creator_app: bytes, geometry: Geometry) -> str:
    """Which footer number is the virtual size: ``"chs"`` or ``"current_size"``.

    ``"chs"`` for creators ``vpc `` and ``qemu`` (Virtual PC and qemu before
    ``force_size`` sized disks by geometry), unless the geometry is the
    maximum, which qemu writes to mean "trust current_size".
    """
    if bytes(creator_app) in CHS_CREATORS and not geometry.is_max:
        return "chs"
    return "current_size"


def virtual_size(footer) -> Tuple[int, str]:
    """``(size_in_bytes, rule)`` for a footer, following :func:`size_rule`."""
    rule = size_rule(footer.creator_app, footer.geometry)
    if rule == "chs":
        return footer.geometry.size, rule
    return footer.current_size, rule
