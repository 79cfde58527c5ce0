"""The 1024-byte dynamic disk header and its parent locator entries.

Dynamic and differencing disks carry this header at the footer's data
offset (512 in practice). It places the BAT, sets the block size and, for
differencing disks, names the parent: its UUID, timestamp, UTF-16BE name
and up to eight platform-specific locators whose payloads live elsewhere
in the file (see :mod:`vhdcore.formats.vhd.locators`).
"""

from __future__ import annotations

import dataclasses
import os
import struct
import uuid as uuid_module
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

from ..._backend import kernels
from ...errors import ChecksumError, CorruptImageError, FormatError, LimitError, UnsupportedError
from ...problems import Problem
from ...problems import where as _where
from .bat import bat_bytes, bitmap_bytes_for, blocks_needed
from .constants import (
    DISK_DIFFERENCING,
    DYNAMIC_COOKIE,
    DYNAMIC_HEADER_SIZE,
    HEADER_CHECKSUM_OFFSET,
    HEADER_VERSION,
    KNOWN_PLATFORMS,
    LOCATOR_COUNT,
    LOCATOR_ENTRY_SIZE,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    PLATFORM_NONE,
    SECTOR_SIZE,
)
from .layout import TABLE_OFFSET, footer_offset_for

__all__ = [
    "ParentLocator",
    "DynamicHeader",
    "HEADER_STRUCT",
    "LOCATOR_STRUCT",
    "PARENT_NAME_BYTES",
    "encode_parent_name",
    "decode_parent_name",
]

HEADER_STRUCT = struct.Struct(">8sQQIIII16sII512s192s256s")
LOCATOR_STRUCT = struct.Struct(">4sIIIQ")
assert HEADER_STRUCT.size == DYNAMIC_HEADER_SIZE
assert LOCATOR_STRUCT.size == LOCATOR_ENTRY_SIZE

PARENT_NAME_BYTES = 512
_ALL_ONES_64 = 0xFFFFFFFFFFFFFFFF
_ALL_ONES_32 = 0xFFFFFFFF
_LOCATORS_AT = 576

_OFF = {
    "cookie": 0,
    "data_offset": 8,
    "table_offset": 16,
    "header_version": 24,
    "max_table_entries": 28,
    "block_size": 32,
    "checksum": 36,
    "parent_uuid": 40,
    "parent_timestamp": 56,
    "reserved1": 60,
    "parent_name_raw": 64,
    "locators": _LOCATORS_AT,
    "reserved2": 768,
}

PathLike = Union[str, "os.PathLike[str]"]


def encode_parent_name(name: str) -> bytes:
    """UTF-16BE, truncated to 256 code units without splitting a pair, NUL-padded.

    Raises:
        ValueError: ``name`` contains lone surrogates or NUL.
    """
    if "\0" in name:
        raise ValueError("parent name must not contain NUL")
    data = name.encode("utf-16-be")  # strict: lone surrogates raise
    if len(data) > PARENT_NAME_BYTES:
        data = data[:PARENT_NAME_BYTES]
        # A high surrogate as the last unit would leave half a character.
        if 0xD800 <= int.from_bytes(data[-2:], "big") <= 0xDBFF:
            data = data[:-2]
    return data.ljust(PARENT_NAME_BYTES, b"\0")


def decode_parent_name(raw: bytes) -> str:
    """The name up to the first NUL unit; undecodable units become U+FFFD."""
    raw = bytes(raw)
    end = len(raw) - len(raw) % 2
    for position in range(0, end, 2):
        if raw[position] == 0 and raw[position + 1] == 0:
            end = position
            break
    return raw[:end].decode("utf-16-be", errors="replace")


@dataclass(frozen=True)
class ParentLocator:
    """One 24-byte parent locator entry.

    ``data_space`` is in sectors per the specification but blktap stores
    bytes; like blktap, a value below 512 is read as sectors.
    """

    code: bytes
    data_space: int
    data_length: int
    reserved: int
    data_offset: int

    @classmethod
    def unused(cls) -> "ParentLocator":
        return cls(PLATFORM_NONE, 0, 0, 0, 0)

    @classmethod
    def from_bytes(cls, data) -> "ParentLocator":
        """Parse 24 bytes. Raises FormatError for any other length."""
        raw = bytes(data)
        if len(raw) != LOCATOR_ENTRY_SIZE:
            raise FormatError(f"parent locator entry must be 24 bytes long, not {len(raw)}")
        return cls(*LOCATOR_STRUCT.unpack(raw))

    def to_bytes(self) -> bytes:
        return LOCATOR_STRUCT.pack(
            self.code, self.data_space, self.data_length, self.reserved, self.data_offset
        )

    @property
    def is_unused(self) -> bool:
        return self.code == PLATFORM_NONE

    @property
    def is_all_zero(self) -> bool:
        return self.to_bytes() == bytes(LOCATOR_ENTRY_SIZE)

    @property
    def space_bytes(self) -> int:
        """Reserved bytes for the payload (values below 512 count sectors)."""
        if self.data_space < SECTOR_SIZE:
            return self.data_space * SECTOR_SIZE
        return self.data_space

    @property
    def data_end(self) -> int:
        """First byte after the reserved payload space."""
        return self.data_offset + self.space_bytes

    @property
    def code_name(self) -> str:
        return self.code.decode("latin-1")


@dataclass(frozen=True)
class DynamicHeader:
    """The dynamic header's fields, exactly as stored."""

    cookie: bytes
    data_offset: int
    table_offset: int
    header_version: int
    max_table_entries: int
    block_size: int
    checksum: int
    parent_uuid: uuid_module.UUID
    parent_timestamp: int
    reserved1: int
    parent_name_raw: bytes = dataclasses.field(repr=False)
    locators: Tuple[ParentLocator, ...] = dataclasses.field(repr=False)
    reserved2: bytes = dataclasses.field(repr=False)

    # -- decode / encode -------------------------------------------------

    @classmethod
    def from_bytes(cls, data) -> "DynamicHeader":
        """Parse 1024 bytes. No validation.

        Raises:
            FormatError: ``data`` is not 1024 bytes long.
        """
        raw = bytes(data)
        if len(raw) != DYNAMIC_HEADER_SIZE:
            raise FormatError(f"dynamic header must be 1024 bytes long, not {len(raw)}")
        (
            cookie,
            data_offset,
            table_offset,
            header_version,
            max_table_entries,
            block_size,
            checksum,
            parent_uuid,
            parent_timestamp,
            reserved1,
            parent_name_raw,
            locator_bytes,
            reserved2,
        ) = HEADER_STRUCT.unpack(raw)
        locators = tuple(
            ParentLocator.from_bytes(locator_bytes[i : i + LOCATOR_ENTRY_SIZE])
            for i in range(0, LOCATOR_COUNT * LOCATOR_ENTRY_SIZE, LOCATOR_ENTRY_SIZE)
        )
        return cls(
            cookie=cookie,
            data_offset=data_offset,
            table_offset=table_offset,
            header_version=header_version,
            max_table_entries=max_table_entries,
            block_size=block_size,
            checksum=checksum,
            parent_uuid=uuid_module.UUID(bytes=parent_uuid),
            parent_timestamp=parent_timestamp,
            reserved1=reserved1,
            parent_name_raw=parent_name_raw,
            locators=locators,
            reserved2=reserved2,
        )

    def _pack(self, checksum: int) -> bytes:
        if len(self.locators) != LOCATOR_COUNT:
            raise ValueError(f"a header holds exactly 8 locators, not {len(self.locators)}")
        return HEADER_STRUCT.pack(
            self.cookie,
            self.data_offset,
            self.table_offset,
            self.header_version,
            self.max_table_entries,
            self.block_size,
            checksum,
            self.parent_uuid.bytes,
            self.parent_timestamp,
            self.reserved1,
            self.parent_name_raw,
            b"".join(locator.to_bytes() for locator in self.locators),
            self.reserved2,
        )

    def to_bytes(self) -> bytes:
        """The 1024 on-disk bytes, with the checksum recomputed."""
        return self._pack(self.computed_checksum)

    @property
    def computed_checksum(self) -> int:
        return kernels.vhd_checksum(self._pack(0), HEADER_CHECKSUM_OFFSET)

    def with_checksum(self) -> "DynamicHeader":
        return dataclasses.replace(self, checksum=self.computed_checksum)

    # -- derived values --------------------------------------------------

    @property
    def parent_name(self) -> str:
        return decode_parent_name(self.parent_name_raw)

    @property
    def bitmap_bytes(self) -> int:
        """Sector bitmap bytes per block (padded to 512)."""
        return bitmap_bytes_for(self.block_size)

    @property
    def sectors_per_block(self) -> int:
        return self.block_size // SECTOR_SIZE

    @property
    def table_bytes(self) -> int:
        """On-disk size of the BAT, padded to a sector."""
        return bat_bytes(self.max_table_entries)

    @property
    def table_end(self) -> int:
        return self.table_offset + self.table_bytes

    @property
    def used_locators(self) -> List[Tuple[int, ParentLocator]]:
        """``(index, locator)`` for every entry with a platform code."""
        return [(i, loc) for i, loc in enumerate(self.locators) if not loc.is_unused]

    # -- creation ----------------------------------------------------------

    @classmethod
    def new(
        cls,
        max_table_entries: int,
        block_size: int,
        table_offset: int = TABLE_OFFSET,
        parent_uuid: Optional[uuid_module.UUID] = None,
        parent_timestamp: int = 0,
        parent_name: str = "",
        locators: Sequence[ParentLocator] = (),
    ) -> "DynamicHeader":
        """A header for a new dynamic (or, with parent fields, differencing) disk.

        Raises:
            ValueError: a block size that is not a power of two in
                [512, MAX_BLOCK_SIZE], a misaligned table offset, more than
                8 locators, or a parent name with NUL or lone surrogates.
        """
        if not (MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE) or block_size & (block_size - 1):
            raise ValueError(
                f"block size must be a power of two from {MIN_BLOCK_SIZE} to "
                f"{MAX_BLOCK_SIZE}, not {block_size}"
            )
        if not 0 <= max_table_entries <= _ALL_ONES_32:
            raise ValueError(f"max_table_entries {max_table_entries} does not fit 32 bits")
        if table_offset < SECTOR_SIZE or table_offset % SECTOR_SIZE:
            raise ValueError(f"table offset must be sector-aligned and >= 512, not {table_offset}")
        if len(locators) > LOCATOR_COUNT:
            raise ValueError(f"a header holds at most 8 locators, not {len(locators)}")
        padded = tuple(locators) + (ParentLocator.unused(),) * (LOCATOR_COUNT - len(locators))
        header = cls(
            cookie=DYNAMIC_COOKIE,
            data_offset=_ALL_ONES_64,
            table_offset=table_offset,
            header_version=HEADER_VERSION,
            max_table_entries=max_table_entries,
            block_size=block_size,
            checksum=0,
            parent_uuid=parent_uuid if parent_uuid is not None else uuid_module.UUID(int=0),
            parent_timestamp=parent_timestamp,
            reserved1=0,
            parent_name_raw=encode_parent_name(parent_name),
            locators=padded,
            reserved2=bytes(256),
        )
        return header.with_checksum()

    # -- validation --------------------------------------------------------

    def validate(
        self,
        path: PathLike = "",
        offset: int = 512,
        file_size: Optional[int] = None,
        disk_type: int = 3,
        current_size: int = 0,
    ) -> List[Problem]:
        """Every rule this header breaks, as :class:`Problem` records.

        Args:
            path: the image, for messages.
            offset: where the header sits (the footer's data offset).
            file_size: the file's size; enables every "inside the file" rule,
                including the anti-DoS bound on the table size.
            disk_type: the footer's disk type (parent fields only on 4).
            current_size: the footer's current size (table must cover it).

        Returns:
            Problems in field order; a wrong cookie is reported alone.
        """
        where = _where(path)
        problems: List[Problem] = []

        def add(code, message, field, severity="error", error=CorruptImageError, at=None):
            at = offset + _OFF[field] if at is None else at
            problems.append(Problem(code, f"{where}: {message}", severity, at, error))

        if self.cookie != DYNAMIC_COOKIE:
            add(
                "header.cookie",
                f"dynamic header cookie at {offset:#x} is {self.cookie!r}, "
                f"expected {DYNAMIC_COOKIE!r}",
                "cookie",
                error=FormatError,
            )
            return problems

        stored, computed = self.checksum, self.computed_checksum
        if stored != computed:
            add(
                "header.checksum",
                f"dynamic header checksum mismatch at {offset:#x}: "
                f"stored {stored:#010x}, computed {computed:#010x}",
                "checksum",
                error=ChecksumError,
                at=offset,
            )

        if self.header_version != HEADER_VERSION:
            add(
                "header.version",
                f"dynamic header version at {offset + 24:#x} is {self.header_version:#010x}, "
                f"expected {HEADER_VERSION:#010x}",
                "header_version",
                severity="error" if self.header_version >> 16 != 1 else "warning",
                error=UnsupportedError,
            )

        if self.data_offset == _ALL_ONES_32:
            add(
                "header.data_offset",
                f"dynamic header data offset at {offset + 8:#x} is {_ALL_ONES_32:#x} "
                f"(32 bits of ones); expected {_ALL_ONES_64:#x}",
                "data_offset",
                severity="warning",
            )
        elif self.data_offset != _ALL_ONES_64:
            add(
                "header.data_offset",
                f"dynamic header data offset at {offset + 8:#x} is {self.data_offset:#x}, "
                f"expected {_ALL_ONES_64:#x} (unused)",
                "data_offset",
            )

        block_size_ok = self._check_block_size(add, offset)
        self._check_table(add, offset, file_size, current_size, block_size_ok)

        if self.reserved1 or any(self.reserved2):
            add(
                "header.reserved",
                f"dynamic header reserved fields at {offset + 60:#x} and {offset + 768:#x} "
                f"are not zero",
                "reserved1",
                severity="warning",
            )

        if disk_type == DISK_DIFFERENCING:
            self._check_parent(add, offset)
            self._check_locators(add, offset, file_size)
        else:
            stray = []
            if self.parent_uuid.int:
                stray.append("parent UUID")
            if self.parent_timestamp:
                stray.append("parent timestamp")
            if any(self.parent_name_raw):
                stray.append("parent name")
            if any(not loc.is_all_zero for loc in self.locators):
                stray.append("parent locators")
            if stray:
                add(
                    "header.parent_fields",
                    f"dynamic header of a non-differencing disk (type {disk_type}) at "
                    f"{offset:#x} has {', '.join(stray)} set; they are ignored",
                    "parent_uuid",
                    severity="warning",
                )
        return problems

    def _check_block_size(self, add, offset) -> bool:
        size = self.block_size
        at = offset + 32
        if size < MIN_BLOCK_SIZE or size & (size - 1):
            add(
                "header.block_size",
                f"dynamic header block size at {at:#x} is {size}, not a power of two "
                f">= {MIN_BLOCK_SIZE}",
                "block_size",
            )
            return False
        if size > MAX_BLOCK_SIZE:
            add(
                "header.block_size",
                f"dynamic header block size at {at:#x} is {size}, above the {MAX_BLOCK_SIZE} "
                f"bytes vhdcore reads",
                "block_size",
                error=LimitError,
            )
            return False
        return True

    def _check_table(self, add, offset, file_size, current_size, block_size_ok) -> None:
        table = self.table_offset
        entries = self.max_table_entries
        if block_size_ok:
            needed = blocks_needed(current_size, self.block_size)
            if entries < needed:
                add(
                    "header.max_table_entries",
                    f"dynamic header max table entries at {offset + 28:#x} is {entries}, but "
                    f"a current size of {current_size} in blocks of {self.block_size} bytes "
                    f"needs {needed}",
                    "max_table_entries",
                )
        if table % SECTOR_SIZE:
            add(
                "header.table_offset",
                f"dynamic header table offset at {offset + 16:#x} is {table:#x}, "
                f"not sector-aligned",
                "table_offset",
            )
            return
        end = table + bat_bytes(entries)
        # The table may not cover the footer copy or this header.
        if table < SECTOR_SIZE or (table < offset + DYNAMIC_HEADER_SIZE and end > offset):
            add(
                "header.table_offset",
                f"dynamic header table offset at {offset + 16:#x} is {table:#x}; the table "
                f"({end - table} bytes) overlaps the footer copy or the header at {offset:#x}",
                "table_offset",
            )
        if file_size is not None:
            footer_start = footer_offset_for(file_size)
            if end > footer_start:
                # The anti-DoS rule: the table can never be larger than the
                # file, so reading it is bounded by the input's size.
                room = max(footer_start - table, 0) // 4
                add(
                    "header.table_size",
                    f"dynamic header places a table of {entries} entries ({end - table} bytes) "
                    f"at {table:#x}, running past the footer at {footer_start:#x}; at most "
                    f"{room} entries fit in this file of {file_size} bytes",
                    "max_table_entries",
                )

    def _check_parent(self, add, offset) -> None:
        if not self.parent_uuid.int:
            add(
                "header.parent_uuid",
                f"differencing header at {offset:#x} has a null parent UUID "
                f"(blktap's mark of a raw parent): the parent cannot be verified, and "
                f"vhdcore does not open raw parents",
                "parent_uuid",
                error=UnsupportedError,
            )
        if not self.parent_name and not self.used_locators:
            add(
                "header.parent_name",
                f"differencing header at {offset:#x} has neither a parent name nor a "
                f"parent locator",
                "parent_name_raw",
            )

    def _check_locators(self, add, offset, file_size) -> None:
        seen = {}
        footer_start = None if file_size is None else footer_offset_for(file_size)
        header_end = offset + DYNAMIC_HEADER_SIZE
        for index, loc in enumerate(self.locators):
            at = offset + _LOCATORS_AT + index * LOCATOR_ENTRY_SIZE
            name = f"parent locator {index} at {at:#x}"
            if loc.is_unused:
                if not loc.is_all_zero:
                    add(
                        "locator.unused_nonzero",
                        f"{name} has no platform code but non-zero fields",
                        "locators",
                        severity="warning",
                        at=at,
                    )
                continue
            if loc.code not in KNOWN_PLATFORMS:
                add(
                    "locator.code",
                    f"{name} has unknown platform code {loc.code!r}",
                    "locators",
                    at=at,
                )
                continue
            if loc.code in seen:
                add(
                    "locator.duplicate",
                    f"{name} repeats platform code {loc.code_name!r} of locator {seen[loc.code]}",
                    "locators",
                    severity="warning",
                    at=at,
                )
            else:
                seen[loc.code] = index
            if not (loc.data_offset and loc.data_space and loc.data_length):
                add(
                    "locator.fields",
                    f"{name} ({loc.code_name}) has offset {loc.data_offset:#x}, space "
                    f"{loc.data_space}, length {loc.data_length}: none may be zero",
                    "locators",
                    at=at,
                )
                continue
            if loc.data_space >= SECTOR_SIZE and loc.data_space % SECTOR_SIZE:
                add(
                    "locator.space",
                    f"{name} ({loc.code_name}) has data space {loc.data_space}: neither a "
                    f"sector count (< 512) nor a multiple of 512 bytes",
                    "locators",
                    at=at,
                )
                continue
            if loc.data_length > loc.space_bytes:
                add(
                    "locator.length",
                    f"{name} ({loc.code_name}) has data length {loc.data_length}, more than "
                    f"its space of {loc.space_bytes} bytes",
                    "locators",
                    at=at,
                )
            start, end = loc.data_offset, loc.data_end
            overlaps = (
                start < header_end and end > offset
                or start < SECTOR_SIZE
                or start < self.table_end and end > self.table_offset
            )
            if overlaps:
                add(
                    "locator.offset",
                    f"{name} ({loc.code_name}) puts its data at {start:#x}..{end:#x}, over the "
                    f"footer copy, the header at {offset:#x} or the table at "
                    f"{self.table_offset:#x}..{self.table_end:#x}",
                    "locators",
                    at=at,
                )
            elif footer_start is not None and end > footer_start:
                add(
                    "locator.offset",
                    f"{name} ({loc.code_name}) puts its data at {start:#x}..{end:#x}, past the "
                    f"footer at {footer_start:#x}",
                    "locators",
                    at=at,
                )
