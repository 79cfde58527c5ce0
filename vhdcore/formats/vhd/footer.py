"""The 512-byte hard disk footer: decode, encode, validate.

Every VHD ends with a footer; dynamic and differencing disks keep a copy
at offset 0. :class:`Footer` is a faithful, frozen image of the bytes:
``from_bytes`` never judges, ``validate`` lists every rule the footer
breaks, and ``to_bytes`` always writes a correct checksum.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import time
import uuid as uuid_module
from dataclasses import dataclass
from typing import List, Optional, Union

from ..._backend import kernels
from ...errors import (
    ChecksumError,
    CorruptImageError,
    FormatError,
    LimitError,
    UnsupportedError,
)
from ...problems import Problem
from ...problems import where as _where
from .constants import (
    DISK_DIFFERENCING,
    DISK_DYNAMIC,
    DISK_FIXED,
    DISK_TYPE_NAMES,
    DYNAMIC_HEADER_SIZE,
    FEATURE_RESERVED,
    FEATURE_TEMPORARY,
    FIXED_DATA_OFFSET,
    FOOTER_CHECKSUM_OFFSET,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    FORMAT_VERSION,
    LEGACY_FOOTER_SIZE,
    MAX_DYNAMIC_SIZE,
    MAX_FIXED_SIZE,
    SECTOR_SIZE,
    VHD_EPOCH,
)
from .geometry import Geometry, chs_for_sectors, size_rule
from .geometry import virtual_size as geometry_virtual_size
from .layout import footer_offset_for

__all__ = [
    "Footer",
    "FOOTER_STRUCT",
    "vhd_timestamp",
    "unix_time",
    "footer_offset_for",
    "DEFAULT_CREATOR_APP",
    "DEFAULT_CREATOR_VERSION",
    "DEFAULT_CREATOR_OS",
]

FOOTER_STRUCT = struct.Struct(">8sIIQI4sI4sQQIII16sB427s")
assert FOOTER_STRUCT.size == FOOTER_SIZE

# Field offsets, for messages and Problem.offset.
_OFF = {
    "cookie": 0,
    "features": 8,
    "format_version": 12,
    "data_offset": 16,
    "timestamp": 24,
    "creator_app": 28,
    "creator_version": 32,
    "creator_os": 36,
    "original_size": 40,
    "current_size": 48,
    "geometry": 56,
    "disk_type": 60,
    "checksum": 64,
    "uuid": 68,
    "saved_state": 84,
    "hidden": 85,
    "reserved": 86,
}

# What vhdcore writes: Hyper-V's creator, so every peer (qemu old and new,
# libvhdi, vhd-util, Hyper-V) takes current_size as the virtual size.
DEFAULT_CREATOR_APP = b"win "
DEFAULT_CREATOR_VERSION = 0x000A0000
DEFAULT_CREATOR_OS = b"Wi2k"

# vhd-util tolerates clocks this far ahead (its -t flag turns the check off).
FUTURE_TIMESTAMP_SLACK = 30 * 60

# Disk types the specification reserves (0 none, 1 and 5..6 deprecated).
_RESERVED_DISK_TYPES = {0: "none", 1: "reserved (deprecated)", 5: "reserved", 6: "reserved"}

_KNOWN_FEATURES = FEATURE_RESERVED | FEATURE_TEMPORARY

PathLike = Union[str, "os.PathLike[str]"]


def vhd_timestamp(unix_seconds: float) -> int:
    """Seconds since 2000-01-01T00:00:00Z, clamped to the 32-bit field."""
    return min(max(int(unix_seconds) - VHD_EPOCH, 0), 0xFFFFFFFF)


def unix_time(timestamp: int) -> int:
    """Unix time of a VHD timestamp."""
    return int(timestamp) + VHD_EPOCH


@dataclass(frozen=True)
class Footer:
    """The footer's fields, exactly as stored.

    ``geometry`` is a :class:`Geometry`, ``uuid`` a :class:`uuid.UUID`;
    ``reserved`` is the 427 trailing bytes, whose first byte is blktap's
    ``hidden`` flag.
    """

    cookie: bytes
    features: int
    format_version: int
    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_os: bytes
    original_size: int
    current_size: int
    geometry: Geometry
    disk_type: int
    checksum: int
    uuid: uuid_module.UUID
    saved_state: int
    reserved: bytes = dataclasses.field(repr=False)

    # -- decode / encode -------------------------------------------------

    @classmethod
    def from_bytes(cls, data) -> "Footer":
        """Parse 512 bytes (or a legacy 511-byte footer). No validation.

        Raises:
            FormatError: ``data`` is not 511 or 512 bytes long.
        """
        raw = bytes(data)
        if len(raw) == LEGACY_FOOTER_SIZE:
            # The legacy footer lacks the last reserved byte.
            raw += b"\0"
        if len(raw) != FOOTER_SIZE:
            raise FormatError(f"footer must be 512 (or 511) bytes long, not {len(raw)}")
        (
            cookie,
            features,
            format_version,
            data_offset,
            timestamp,
            creator_app,
            creator_version,
            creator_os,
            original_size,
            current_size,
            geometry,
            disk_type,
            checksum,
            uuid_bytes,
            saved_state,
            reserved,
        ) = FOOTER_STRUCT.unpack(raw)
        return cls(
            cookie=cookie,
            features=features,
            format_version=format_version,
            data_offset=data_offset,
            timestamp=timestamp,
            creator_app=creator_app,
            creator_version=creator_version,
            creator_os=creator_os,
            original_size=original_size,
            current_size=current_size,
            geometry=Geometry.from_int(geometry),
            disk_type=disk_type,
            checksum=checksum,
            uuid=uuid_module.UUID(bytes=uuid_bytes),
            saved_state=saved_state,
            reserved=reserved,
        )

    def _pack(self, checksum: int) -> bytes:
        return FOOTER_STRUCT.pack(
            self.cookie,
            self.features,
            self.format_version,
            self.data_offset,
            self.timestamp,
            self.creator_app,
            self.creator_version,
            self.creator_os,
            self.original_size,
            self.current_size,
            self.geometry.to_int(),
            self.disk_type,
            checksum,
            self.uuid.bytes,
            self.saved_state,
            self.reserved,
        )

    def to_bytes(self) -> bytes:
        """The 512 on-disk bytes, with the checksum recomputed."""
        return self._pack(self.computed_checksum)

    @property
    def computed_checksum(self) -> int:
        """The checksum the stored fields call for."""
        return kernels.vhd_checksum(self._pack(0), FOOTER_CHECKSUM_OFFSET)

    def with_checksum(self) -> "Footer":
        """A copy whose ``checksum`` field holds the correct value."""
        return dataclasses.replace(self, checksum=self.computed_checksum)

    # -- derived values --------------------------------------------------

    @property
    def hidden(self) -> int:
        """blktap's hidden flag (reserved byte 0)."""
        return self.reserved[0]

    @property
    def type_name(self) -> str:
        return DISK_TYPE_NAMES.get(self.disk_type, f"unknown ({self.disk_type})")

    @property
    def virtual_size(self) -> int:
        """The guest-visible size in bytes, by :func:`geometry.virtual_size`."""
        return geometry_virtual_size(self)[0]

    @property
    def size_rule(self) -> str:
        """Which field that size comes from: ``"chs"`` or ``"current_size"``."""
        return geometry_virtual_size(self)[1]

    # -- creation ----------------------------------------------------------

    @classmethod
    def new(
        cls,
        disk_type: int,
        size: int,
        *,
        uuid: Optional[uuid_module.UUID] = None,
        timestamp: Optional[int] = None,
        creator_app: bytes = DEFAULT_CREATOR_APP,
        creator_version: int = DEFAULT_CREATOR_VERSION,
        creator_os: bytes = DEFAULT_CREATOR_OS,
        data_offset: Optional[int] = None,
        max_fixed_size: int = MAX_FIXED_SIZE,
    ) -> "Footer":
        """A footer for a new image of ``size`` bytes (rounded up to a sector).

        Args:
            disk_type: ``DISK_FIXED``, ``DISK_DYNAMIC`` or ``DISK_DIFFERENCING``.
            size: the virtual size asked for; stored as both original and
                current size after rounding up to 512.
            uuid: the image's identity; a random one by default.
            timestamp: VHD timestamp; now by default.
            data_offset: defaults to all ones for fixed disks and 512 (the
                header right after the footer copy) otherwise.
            max_fixed_size: policy bound for fixed disks.

        Raises:
            ValueError: a negative size or an unknown disk type.
            LimitError: the size exceeds 2040 GiB for a dynamic or
                differencing disk, or ``max_fixed_size`` for a fixed one.
        """
        if disk_type not in (DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING):
            raise ValueError(f"disk type must be 2, 3 or 4, not {disk_type}")
        if size < 0:
            raise ValueError(f"size must not be negative, not {size}")
        size = -(-size // SECTOR_SIZE) * SECTOR_SIZE
        limit = max_fixed_size if disk_type == DISK_FIXED else MAX_DYNAMIC_SIZE
        if size > limit:
            raise LimitError(
                f"a {DISK_TYPE_NAMES[disk_type]} VHD may hold at most {limit} bytes; "
                f"{size} bytes requested"
            )
        if data_offset is None:
            data_offset = FIXED_DATA_OFFSET if disk_type == DISK_FIXED else SECTOR_SIZE
        footer = cls(
            cookie=FOOTER_COOKIE,
            features=FEATURE_RESERVED,
            format_version=FORMAT_VERSION,
            data_offset=data_offset,
            timestamp=vhd_timestamp(time.time()) if timestamp is None else timestamp,
            creator_app=creator_app,
            creator_version=creator_version,
            creator_os=creator_os,
            original_size=size,
            current_size=size,
            geometry=chs_for_sectors(size // SECTOR_SIZE),
            disk_type=disk_type,
            checksum=0,
            uuid=uuid_module.uuid4() if uuid is None else uuid,
            saved_state=0,
            reserved=bytes(427),
        )
        return footer.with_checksum()

    # -- validation --------------------------------------------------------

    def validate(
        self,
        path: PathLike = "",
        offset: int = 0,
        file_size: Optional[int] = None,
        now: Optional[float] = None,
    ) -> List[Problem]:
        """Every rule this footer breaks, as :class:`Problem` records.

        Args:
            path: the image, for messages.
            offset: where this footer sits in the file (EOF-512 for the
                primary, 0 for the copy).
            file_size: the file's size; enables the placement rules.
            now: Unix time to judge the timestamp by (default: now).

        Returns:
            Problems in field order. A wrong cookie is reported alone,
            since the rest of the bytes are then not a footer at all.
        """
        where = _where(path)
        problems: List[Problem] = []

        def add(code, message, field, severity="error", error=CorruptImageError):
            at = offset + _OFF[field]
            problems.append(
                Problem(code, f"{where}: footer {message}", severity, at, error)
            )

        if self.cookie != FOOTER_COOKIE:
            add(
                "footer.cookie",
                f"cookie at {offset:#x} is {self.cookie!r}, expected {FOOTER_COOKIE!r}",
                "cookie",
                error=FormatError,
            )
            return problems

        stored, computed = self.checksum, self.computed_checksum
        if stored != computed:
            legacy = dataclasses.replace(self, reserved=b"\0" + self.reserved[1:])
            if self.hidden and legacy.computed_checksum == stored:
                # Early blktap set "hidden" without updating the checksum.
                add(
                    "footer.checksum_hidden",
                    f"checksum at {offset:#x} covers hidden=0 while hidden={self.hidden} "
                    f"(early blktap): stored {stored:#010x}, computed {computed:#010x}",
                    "checksum",
                    severity="warning",
                )
            else:
                problems.append(
                    Problem(
                        "footer.checksum",
                        f"{where}: footer checksum mismatch at {offset:#x}: "
                        f"stored {stored:#010x}, computed {computed:#010x}",
                        "error",
                        offset,
                        ChecksumError,
                    )
                )

        if not self.features & FEATURE_RESERVED:
            add(
                "footer.features_reserved",
                f"features at {offset + 8:#x} is {self.features:#010x}: "
                f"reserved bit 0x2 (always set) is clear",
                "features",
                severity="warning",
            )
        if self.features & ~_KNOWN_FEATURES:
            add(
                "footer.features_unknown",
                f"features at {offset + 8:#x} is {self.features:#010x}: "
                f"unknown bits {self.features & ~_KNOWN_FEATURES:#010x}",
                "features",
                error=UnsupportedError,
            )

        if self.format_version != FORMAT_VERSION:
            major = self.format_version >> 16
            add(
                "footer.version",
                f"format version at {offset + 12:#x} is {self.format_version:#010x}, "
                f"expected {FORMAT_VERSION:#010x}",
                "format_version",
                severity="error" if major != 1 else "warning",
                error=UnsupportedError,
            )

        disk_type_known = self.disk_type in (DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING)
        if not disk_type_known:
            if self.disk_type in _RESERVED_DISK_TYPES:
                add(
                    "footer.disk_type",
                    f"disk type at {offset + 60:#x} is {self.disk_type} "
                    f"({_RESERVED_DISK_TYPES[self.disk_type]}); vhdcore reads 2, 3 and 4",
                    "disk_type",
                    error=UnsupportedError,
                )
            else:
                add(
                    "footer.disk_type",
                    f"disk type at {offset + 60:#x} is {self.disk_type}, not 2, 3 or 4",
                    "disk_type",
                    error=FormatError,
                )

        self._check_data_offset(add, offset, file_size)
        self._check_sizes(add, offset, file_size)

        current = time.time() if now is None else now
        if unix_time(self.timestamp) > current + FUTURE_TIMESTAMP_SLACK:
            add(
                "footer.timestamp",
                f"timestamp at {offset + 24:#x} is {self.timestamp} "
                f"({unix_time(self.timestamp) - int(current)} s in the future)",
                "timestamp",
                severity="warning",
            )

        if self.saved_state not in (0, 1):
            add(
                "footer.saved_state",
                f"saved state at {offset + 84:#x} is {self.saved_state}, not 0 or 1",
                "saved_state",
                severity="warning",
            )
        if self.hidden not in (0, 1):
            add(
                "footer.hidden",
                f"hidden flag at {offset + 85:#x} is {self.hidden}, not 0 or 1",
                "hidden",
                severity="warning",
            )
        nonzero = next((i for i, b in enumerate(self.reserved[1:]) if b), None)
        if nonzero is not None:
            add(
                "footer.reserved",
                f"reserved bytes are not zero (first at {offset + 86 + nonzero:#x})",
                "reserved",
                severity="warning",
            )
        if self.uuid.int == 0:
            add(
                "footer.uuid",
                f"unique id at {offset + 68:#x} is all zero",
                "uuid",
                severity="warning",
            )
        return problems

    def _check_data_offset(self, add, offset, file_size) -> None:
        at = offset + _OFF["data_offset"]
        if self.disk_type == DISK_FIXED:
            if self.data_offset != FIXED_DATA_OFFSET:
                # Unused for fixed disks, so data are not at risk.
                add(
                    "footer.data_offset",
                    f"data offset at {at:#x} is {self.data_offset:#x}; "
                    f"a fixed disk stores {FIXED_DATA_OFFSET:#x}",
                    "data_offset",
                    severity="warning",
                )
            return
        if self.disk_type not in (DISK_DYNAMIC, DISK_DIFFERENCING):
            return
        value = self.data_offset
        if value < SECTOR_SIZE or value % SECTOR_SIZE:
            add(
                "footer.data_offset",
                f"data offset at {at:#x} is {value:#x}; the dynamic header must start "
                f"at a sector boundary at or after 0x200",
                "data_offset",
            )
        elif file_size is not None:
            footer_start = footer_offset_for(file_size)
            if value + DYNAMIC_HEADER_SIZE > footer_start:
                add(
                    "footer.data_offset",
                    f"data offset at {at:#x} is {value:#x}; a 1024-byte header there "
                    f"runs past the footer at {footer_start:#x} (file size {file_size})",
                    "data_offset",
                )

    def _check_sizes(self, add, offset, file_size) -> None:
        at = offset + _OFF["current_size"]
        size = self.current_size
        if size % SECTOR_SIZE:
            add(
                "footer.current_size",
                f"current size at {at:#x} is {size}, not a multiple of 512",
                "current_size",
            )
        if self.disk_type in (DISK_DYNAMIC, DISK_DIFFERENCING) and size > MAX_DYNAMIC_SIZE:
            add(
                "footer.size_limit",
                f"current size at {at:#x} is {size} bytes; a {self.type_name} VHD may hold "
                f"at most {MAX_DYNAMIC_SIZE} bytes (2040 GiB)",
                "current_size",
                error=LimitError,
            )
        if self.disk_type == DISK_FIXED:
            if size > MAX_FIXED_SIZE:
                add(
                    "footer.size_limit",
                    f"current size at {at:#x} is {size} bytes, beyond vhdcore's limit of "
                    f"{MAX_FIXED_SIZE} bytes for fixed disks",
                    "current_size",
                    error=LimitError,
                )
            elif size > MAX_DYNAMIC_SIZE:
                add(
                    "footer.size_compat",
                    f"current size at {at:#x} is {size} bytes; qemu and Hyper-V open no VHD "
                    f"above {MAX_DYNAMIC_SIZE} bytes (2040 GiB), Azure accepts it",
                    "current_size",
                    severity="warning",
                )
            if file_size is not None:
                legacy = file_size % SECTOR_SIZE == LEGACY_FOOTER_SIZE
                expected = size + (LEGACY_FOOTER_SIZE if legacy else FOOTER_SIZE)
                if file_size != expected:
                    add(
                        "footer.file_size",
                        f"of a fixed disk says current size {size}, so the file should be "
                        f"{expected} bytes, but it is {file_size}",
                        "current_size",
                    )
        elif file_size is not None and file_size % SECTOR_SIZE not in (0, LEGACY_FOOTER_SIZE):
            add(
                "footer.file_size",
                f"file size {file_size} is neither 0 nor 511 modulo 512",
                "cookie",
            )

        at = offset + _OFF["geometry"]
        geometry = self.geometry
        if size % SECTOR_SIZE == 0:
            limit = chs_for_sectors(size // SECTOR_SIZE)
            if geometry.total_sectors > limit.total_sectors:
                hint = " (qemu force_size writes this)" if geometry.is_max else ""
                add(
                    "footer.geometry",
                    f"geometry at {at:#x} is {geometry} ({geometry.size} bytes), above "
                    f"{limit} derived from the current size {size}{hint}; vhd-util rejects it",
                    "geometry",
                    severity="warning",
                )
        if size_rule(self.creator_app, geometry) == "chs" and geometry.size != size:
            add(
                "footer.chs_size",
                f"geometry at {at:#x} gives {geometry.size} bytes while the current size is "
                f"{size}; creator {self.creator_app!r} is sized by geometry, so the disk "
                f"shows {geometry.size} bytes",
                "geometry",
                severity="warning",
            )
