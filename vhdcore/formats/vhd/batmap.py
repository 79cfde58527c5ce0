"""blktap's batmap: a "this block is fully allocated" bitmap after the BAT.

vhd-util (creator ``tap\\0``, version 1.1 and later) writes a one-sector
header with cookie ``tdbatmap`` right after the padded BAT, and the map
itself (one bit per BAT entry, MSB-first) in the sectors it points at,
normally the next ones. Nobody else reads it, and it never changes what
the disk holds (a set bit is only a hint that the block's bitmap is full),
but it is metadata: new blocks must not be written over it, which is
exactly what qemu does to fresh vhd-util images.

Header layout (big-endian): cookie (8), batmap offset in bytes (8), batmap
size in sectors (4), version (4, major << 16 | minor), checksum (4),
marker (1, a free-form flag ``vhd-util set`` can write), zero padding to
512. The checksum is the one's complement of the byte sum of the *map*
(all ``size`` sectors); version 1.1 summed the bytes as signed chars.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

from ...errors import ChecksumError, CorruptImageError, FormatError, UnsupportedError
from ...problems import Problem
from ...problems import where as _where
from .bat import bat_bytes
from .constants import BAT_UNUSED, BATMAP_COOKIE, SECTOR_SIZE
from .layout import footer_offset_for

__all__ = [
    "Batmap",
    "BATMAP_STRUCT",
    "BATMAP_VERSION_1_1",
    "BATMAP_VERSION_1_2",
    "batmap_header_offset",
    "expects_batmap",
    "find_batmap",
    "batmap_checksum",
]

BATMAP_STRUCT = struct.Struct(">8sQIIIB")
BATMAP_VERSION_1_1 = 0x00010001
BATMAP_VERSION_1_2 = 0x00010002
# Creator versions of vhd-util: 1.1 may carry a batmap, 1.2 and later do.
_TAP_CREATOR = b"tap\0"
_TAP_BATMAP_ALWAYS = 0x00010002

PathLike = Union[str, "os.PathLike[str]"]
Reader = Callable[[int, int], bytes]


def batmap_checksum(map_bytes, version: int = BATMAP_VERSION_1_2) -> int:
    """One's complement of the byte sum of the map (signed bytes for v1.1)."""
    import numpy as np  # blktap images only; opening others never needs numpy

    data = np.frombuffer(bytes(map_bytes), dtype=np.uint8)
    total = int(data.sum(dtype=np.uint64))
    if version == BATMAP_VERSION_1_1:
        # (uint32_t)(char)b: bytes >= 0x80 count as b - 256.
        total -= 256 * int(np.count_nonzero(data >= 0x80))
    return ~total & 0xFFFFFFFF


def batmap_header_offset(header) -> int:
    """Where vhd-util puts the batmap header: right after the padded BAT."""
    return header.table_offset + bat_bytes(header.max_table_entries)


def expects_batmap(footer) -> bool:
    """Whether blktap's rules say this image should carry a batmap.

    Version 1.1 images usually do (unless upgraded from 0.1); look for the
    cookie with :func:`find_batmap` whatever this says.
    """
    return (
        footer.creator_app == _TAP_CREATOR
        and footer.disk_type in (3, 4)
        and footer.creator_version >= _TAP_BATMAP_ALWAYS
    )


@dataclass(frozen=True)
class Batmap:
    """The batmap header, plus where it was found and the map once read.

    ``header_offset`` and ``map`` are not part of the on-disk header: the
    first is the file offset the header was read from, the second the
    ``size_bytes`` bytes at ``batmap_offset`` (empty until loaded).
    """

    cookie: bytes
    batmap_offset: int
    batmap_size: int
    batmap_version: int
    checksum: int
    marker: int
    header_offset: int = 0
    map: bytes = dataclasses.field(default=b"", repr=False)

    @classmethod
    def from_bytes(cls, data, header_offset: int = 0) -> "Batmap":
        """Parse the header from the start of ``data`` (a 512-byte sector).

        Raises:
            FormatError: ``data`` is shorter than the 29-byte header.
        """
        raw = bytes(data)
        if len(raw) < BATMAP_STRUCT.size:
            raise FormatError(
                f"batmap header needs {BATMAP_STRUCT.size} bytes, got {len(raw)}"
            )
        fields = BATMAP_STRUCT.unpack_from(raw)
        return cls(*fields, header_offset=header_offset)

    def to_bytes(self) -> bytes:
        """The header sector (512 bytes) with the stored checksum.

        Use :meth:`with_map` to set the map and recompute the checksum.
        """
        packed = BATMAP_STRUCT.pack(
            self.cookie,
            self.batmap_offset,
            self.batmap_size,
            self.batmap_version,
            self.checksum,
            self.marker,
        )
        return packed.ljust(SECTOR_SIZE, b"\0")

    def with_map(self, map_bytes) -> "Batmap":
        """A copy holding ``map_bytes`` with the checksum recomputed."""
        map_bytes = bytes(map_bytes)
        return dataclasses.replace(
            self, map=map_bytes, checksum=batmap_checksum(map_bytes, self.batmap_version)
        )

    @property
    def size_bytes(self) -> int:
        return self.batmap_size * SECTOR_SIZE

    @property
    def computed_checksum(self) -> int:
        """The checksum of the loaded map (meaningless before it is loaded)."""
        return batmap_checksum(self.map, self.batmap_version)

    @property
    def extents(self) -> List[Tuple[int, int]]:
        """``[(start, end), ...]`` byte ranges: the header sector, then the map."""
        ranges = [(self.header_offset, self.header_offset + SECTOR_SIZE)]
        if self.batmap_size:
            ranges.append((self.batmap_offset, self.batmap_offset + self.size_bytes))
        return ranges

    @property
    def end(self) -> int:
        """First byte after the header sector and the map."""
        return max(end for _start, end in self.extents)

    @property
    def map_trusted(self) -> bool:
        """Whether the map was loaded and its checksum holds."""
        return (
            self.batmap_size > 0
            and len(self.map) == self.size_bytes
            and self.computed_checksum == self.checksum
        )

    @property
    def trusted_end(self) -> int:
        """The end of what certainly is batmap: what new blocks must not overwrite.

        The header sector (found by its cookie right after the BAT) always
        counts; the map only when it was loaded and its checksum holds. A
        damaged header must not push the end of metadata over real data
        blocks, since the batmap is only a hint (reliability rule R16).
        """
        end = self.header_offset + SECTOR_SIZE
        if self.map_trusted:
            end = max(end, self.batmap_offset + self.size_bytes)
        return end

    def without(self, blocks) -> "Batmap":
        """A copy with the "full" bits of ``blocks`` cleared (checksum recomputed).

        Every operation that releases a block clears its bit: blktap trusts
        a set bit without reading the block's bitmap, and its ``vhd-util
        check`` refuses an image whose map marks an unallocated block full.
        Returns ``self`` when no bit changes.
        """
        import numpy as np

        bits = np.unpackbits(np.frombuffer(self.map, dtype=np.uint8))
        index = np.asarray(list(blocks) if not isinstance(blocks, range) else
                           np.arange(blocks.start, blocks.stop, blocks.step), dtype=np.int64)
        index = index[(index >= 0) & (index < len(bits))]
        if not len(index) or not bits[index].any():
            return self
        bits[index] = 0
        return self.with_map(np.packbits(bits).tobytes())

    def stale_blocks(self, bat) -> List[int]:
        """Blocks the map marks full although ``bat`` has them unallocated."""
        import numpy as np

        table = np.asarray(bat, dtype=np.uint32)
        bits = np.unpackbits(np.frombuffer(self.map, dtype=np.uint8))[: len(table)]
        return np.flatnonzero((bits == 1) & (table[: len(bits)] == BAT_UNUSED)).tolist()

    def is_full(self, index: int) -> bool:
        """Whether the map marks block ``index`` fully allocated."""
        byte = index >> 3
        if byte >= len(self.map):
            return False
        return bool(self.map[byte] & (0x80 >> (index & 7)))

    def validate(
        self,
        path: PathLike = "",
        file_size: Optional[int] = None,
        header=None,
        bat=None,
    ) -> List[Problem]:
        """Check the batmap.

        Findings are warnings (the map is only a hint), except a bit set
        for an unallocated block: blktap would then skip the block's bitmap
        (reading zeros where a differencing disk should show its parent, or
        data a later allocation has not written yet), and ``vhd-util check``
        refuses the image ("batmap shows unallocated block N full").

        Args:
            path: the image, for messages.
            file_size: enables the "inside the file" rule.
            header: the dynamic header; enables "map covers every entry"
                and "map does not overlap the BAT".
            bat: the decoded BAT; enables "every full block is allocated".
        """
        where = _where(path)
        at = self.header_offset
        problems: List[Problem] = []

        def add(code, message, error=CorruptImageError, offset=at, severity="warning"):
            problems.append(Problem(code, f"{where}: batmap {message}", severity, offset, error))

        if self.cookie != BATMAP_COOKIE:
            add("batmap.cookie", f"cookie at {at:#x} is {self.cookie!r}", FormatError)
            return problems
        if self.batmap_version > BATMAP_VERSION_1_2:
            add(
                "batmap.version",
                f"version at {at + 20:#x} is {self.batmap_version:#010x}, newer than 1.2",
                UnsupportedError,
                at + 20,
            )
        start, end = self.batmap_offset, self.batmap_offset + self.size_bytes
        placement_ok = True
        if start % SECTOR_SIZE or start < at + SECTOR_SIZE and end > at:
            add(
                "batmap.offset",
                f"map at {start:#x}..{end:#x} is misaligned or overlaps its header at {at:#x}",
                offset=at + 8,
            )
            placement_ok = False
        if header is not None:
            needed = -(-header.max_table_entries // 8)
            if self.size_bytes < needed:
                add(
                    "batmap.size",
                    f"of {self.batmap_size} sectors cannot hold {header.max_table_entries} bits",
                    offset=at + 16,
                )
            table_end = header.table_offset + bat_bytes(header.max_table_entries)
            if start < table_end and end > header.table_offset:
                add(
                    "batmap.offset",
                    f"map at {start:#x}..{end:#x} overlaps the BAT at "
                    f"{header.table_offset:#x}..{table_end:#x}",
                    offset=at + 8,
                )
                placement_ok = False
        if file_size is not None:
            footer_start = footer_offset_for(file_size)
            if self.end > footer_start:
                add(
                    "batmap.offset",
                    f"header at {at:#x} or map at {start:#x}..{end:#x} runs past the footer "
                    f"at {footer_start:#x}",
                    offset=at + 8,
                )
                placement_ok = False
        if header is not None and self.size_bytes > bat_bytes(header.max_table_entries):
            add(
                "batmap.size",
                f"of {self.batmap_size} sectors is larger than the BAT it describes; "
                f"its map was not read",
                offset=at + 16,
            )
        if placement_ok and len(self.map) == self.size_bytes:
            computed = self.computed_checksum
            if computed != self.checksum:
                add(
                    "batmap.checksum",
                    f"checksum mismatch at {at:#x}: stored {self.checksum:#010x}, "
                    f"computed {computed:#010x}",
                    ChecksumError,
                    at + 24,
                )
            elif bat is not None:
                wrong = self.stale_blocks(bat)
                if wrong:
                    add(
                        "batmap.unallocated",
                        f"marks {len(wrong)} unallocated blocks as full (first: block "
                        f"{wrong[0]}); blktap refuses such an image",
                        offset=start + wrong[0] // 8,
                        severity="error",
                    )
        return problems


def find_batmap(
    footer,
    header,
    read: Reader,
    file_size: int,
) -> Optional[Batmap]:
    """Look for a batmap after the BAT and load its map when it is sane.

    Args:
        footer: the image footer (only blktap images are searched, or any
            image whose sector after the BAT starts with the cookie).
        header: the dynamic header (where the BAT ends).
        read: ``read(offset, length) -> bytes``, e.g. the image file's
            ``pread``; called at most twice.
        file_size: the file's size, so nothing outside it is read.

    Returns:
        The :class:`Batmap` (with ``map`` loaded when the map lies inside
        the file), or None when there is no ``tdbatmap`` cookie there.
    """
    offset = batmap_header_offset(header)
    if offset + SECTOR_SIZE > file_size:
        return None
    # Only blktap writes batmaps, but the cookie is honoured whoever the
    # creator: a tool that rewrote the footer may have kept the layout.
    sector = bytes(read(offset, SECTOR_SIZE))
    if len(sector) < BATMAP_STRUCT.size or sector[:8] != BATMAP_COOKIE:
        return None
    batmap = Batmap.from_bytes(sector, header_offset=offset)
    start, end = batmap.batmap_offset, batmap.batmap_offset + batmap.size_bytes
    # The map needs one bit per entry; refusing maps larger than the BAT
    # itself keeps the read bounded by what opening already reads.
    sane_size = 0 < batmap.size_bytes <= bat_bytes(header.max_table_entries)
    if sane_size and start >= offset + SECTOR_SIZE and end <= file_size:
        batmap = dataclasses.replace(batmap, map=bytes(read(start, batmap.size_bytes)))
    return batmap
