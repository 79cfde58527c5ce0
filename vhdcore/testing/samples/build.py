"""The ingredients of the samples: deterministic names, UUIDs and patterns; the
hand builders of dynamic, fixed and full images; reading and patching bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid as uuid_module
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ...formats.vhd import layout
from ...formats.vhd.bat import bitmap_bytes_for, blocks_needed
from ...formats.vhd.batmap import BATMAP_VERSION_1_2, Batmap
from ...formats.vhd.constants import (
    BAT_UNUSED,
    BATMAP_COOKIE,
    DISK_DIFFERENCING,
    DISK_DYNAMIC,
    DISK_FIXED,
    FOOTER_SIZE,
    PLATFORM_MACX,
    PLATFORM_W2RU,
    SECTOR_SIZE,
)
from ...formats.vhd.footer import Footer
from ...formats.vhd.header import DynamicHeader, ParentLocator
from ...formats.vhd.locators import encode_locator
from ...formats.vhd.xen import batmap_sectors
from ...io.imagefile import open_image_file

MiB = 1024 * 1024
#: Virtual size of the samples: three and a half 2 MiB blocks, so the last
#: block is partial (vhd-util skips checking it; vhdcore must not).
SIZE = 7 * MiB
BLOCK = 2 * MiB
#: VHD timestamp every sample carries (2023-11-14T22:13:20Z).
TIMESTAMP = 1_700_000_000 - 946_684_800
#: A timestamp far in the future (year 2136) for the "future" sample.
FUTURE_TIMESTAMP = 0xFFFFFF00
#: Bytes of pattern written at the start of each allocated block.
PATTERN_BYTES = 64 * 1024


@dataclass(frozen=True)
class Sample:
    """One generated image and what check and repair must make of it.

    Attributes:
        name: the generator's name.
        path: the image to check.
        codes: problem codes ``check`` must report (others may appear).
        exit_code: what ``vhdcore check`` returns (0, 2 or 3; 1 when the
            file is no VHD at all and ``check`` raises ``NotVHDError``).
        check_options: keyword arguments for ``check`` (``deep``,
            ``parents``) under which the codes appear.
        repair: None when repair cannot fix it (or there is nothing to
            fix), ``"yes"`` when ``repair`` fixes it, ``"force"`` when it
            needs ``force=True`` (data is released).
        content_kept: after repair, the guest-visible content equals
            :attr:`content` (false when repair must drop data).
        content: sha256 of the guest-visible content before the damage
            (see :func:`content_digest`), or None.
        description: what was done to the image.
        files: every file the generator wrote (image, parents).
    """

    name: str
    path: Path
    codes: Tuple[str, ...]
    exit_code: int
    check_options: Mapping = field(default_factory=dict)
    repair: Optional[str] = None
    content_kept: bool = True
    content: Optional[str] = None
    description: str = ""
    files: Tuple[Path, ...] = ()


# ---------------------------------------------------------------------------
# deterministic ingredients


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def _uuid(name: str, salt: str = "") -> uuid_module.UUID:
    digest = hashlib.sha256(f"vhdcore-sample:{name}:{salt}".encode()).digest()
    return uuid_module.UUID(bytes=digest[:16])


def _pattern(name: str, block: int, length: int = PATTERN_BYTES) -> bytes:
    rng = np.random.default_rng([_seed(name), block])
    return rng.integers(1, 256, length, dtype=np.uint8).tobytes()


def _write_pieces(path, size: int, pieces: Iterable[Tuple[int, bytes]]) -> Path:
    """A new file of ``size`` bytes (holes) with ``pieces`` written in."""
    path = Path(path)
    if path.exists():
        path.unlink()
    with open_image_file(path, writable=True, create=True) as image:
        image.truncate(size)
        for offset, data in pieces:
            image.pwrite(offset, data)
        image.flush()
    return path


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _bitmap_for(block_size: int, extents: Sequence[Tuple[int, int]]) -> bytes:
    """A sector bitmap with the sectors of ``(offset, length)`` extents set."""
    sectors = block_size // SECTOR_SIZE
    bits = np.zeros(bitmap_bytes_for(block_size) * 8, dtype=np.uint8)
    for offset, length in extents:
        first = offset // SECTOR_SIZE
        last = _round_up(offset + length, SECTOR_SIZE) // SECTOR_SIZE
        bits[first:min(last, sectors)] = 1
    return np.packbits(bits).tobytes()


# ---------------------------------------------------------------------------
# builders


def build_fixed(path, *, name: str, size: int = 4 * MiB,
                data: Mapping[int, bytes] = None, creator=(b"win ", 0x000A0000, b"Wi2k")) -> Path:
    """A fixed disk: ``data`` ({virtual offset: bytes}) then the footer."""
    footer = Footer.new(
        DISK_FIXED, size, uuid=_uuid(name), timestamp=TIMESTAMP,
        creator_app=creator[0], creator_version=creator[1], creator_os=creator[2],
    )
    if data is None:
        data = {0: _pattern(name, 0), size // 2: _pattern(name, 1)}
    pieces = list(data.items()) + [(size, footer.to_bytes())]
    return _write_pieces(path, size + FOOTER_SIZE, pieces)


def build_dynamic(
    path,
    *,
    name: str,
    size: int = SIZE,
    block_size: int = BLOCK,
    blocks: Optional[Mapping[int, Sequence[Tuple[int, bytes]]]] = None,
    full_blocks: Sequence[int] = (),
    creator=(b"win ", 0x000A0000, b"Wi2k"),
    blktap: bool = False,
    parent: Optional[Path] = None,
    parent_uuid: Optional[uuid_module.UUID] = None,
    locator_name: Optional[str] = None,
    uuid: Optional[uuid_module.UUID] = None,
) -> Path:
    """A dynamic (or, with ``parent``, differencing) disk laid out by hand.

    Args:
        blocks: ``{block index: [(offset in block, data), ...]}``; the
            bitmap bits of the sectors written are set. Default: a pattern
            at the start of blocks 0 and 2.
        full_blocks: blocks whose bitmap is set entirely (data stays a
            hole beyond what ``blocks`` writes), as qemu allocates.
        blktap: blktap's layout: creator ``tap`` 1.3, a batmap after the
            BAT, block data aligned to 4 KiB.
        parent: the parent image; makes a differencing disk with W2ru and
            MacX locators holding the parent's basename (relative).
        parent_uuid: override the parent UUID written into the header.
        locator_name: the file name the locators and header name hold
            (default: the parent's basename).
    """
    if blocks is None:
        blocks = {0: [(0, _pattern(name, 0))], 2: [(4096, _pattern(name, 2))]}
    if blktap:
        creator = (b"tap\0", 0x00010003, b"Lnux")
    disk_type = DISK_DYNAMIC if parent is None else DISK_DIFFERENCING
    entries = blocks_needed(size, block_size)
    bitmap_bytes = bitmap_bytes_for(block_size)
    position = layout.table_end(entries)
    pieces: List[Tuple[int, bytes]] = []

    batmap_at = None
    if blktap:
        batmap_at = position
        map_sectors = batmap_sectors(entries)
        position = layout.metadata_end(entries, map_sectors)

    locators = []
    header_kwargs = {}
    if parent is not None:
        parent_footer = _read_footer(parent)
        base = locator_name or Path(parent).name
        for code, text in ((PLATFORM_W2RU, ".\\" + base), (PLATFORM_MACX, "./" + base)):
            payload = encode_locator(code, text)
            space = _round_up(len(payload), SECTOR_SIZE)
            locators.append(ParentLocator(code, space, len(payload), 0, position))
            pieces.append((position, payload))
            position += space
        header_kwargs = dict(
            parent_uuid=parent_uuid or parent_footer.uuid,
            parent_timestamp=TIMESTAMP,
            parent_name=base,
            locators=tuple(locators),
        )

    table = np.full(entries, BAT_UNUSED, dtype=np.uint32)
    full = set(full_blocks)
    for index in sorted(set(blocks) | full):
        if blktap:
            data_at = _round_up(position + bitmap_bytes, 4096)
            start = data_at - bitmap_bytes
        else:
            start = position
        table[index] = start // SECTOR_SIZE
        extents = [(off, len(data)) for off, data in blocks.get(index, ())]
        if index in full:
            extents = [(0, block_size)]
        pieces.append((start, _bitmap_for(block_size, extents)))
        for offset, data in blocks.get(index, ()):
            pieces.append((start + bitmap_bytes + offset, data))
        position = start + bitmap_bytes + block_size

    if batmap_at is not None:
        bits = np.zeros(map_sectors * SECTOR_SIZE * 8, dtype=np.uint8)
        for index in full:
            bits[index] = 1
        map_bytes = np.packbits(bits).tobytes()
        batmap = Batmap(
            BATMAP_COOKIE, batmap_at + SECTOR_SIZE, map_sectors, BATMAP_VERSION_1_2, 0, 0,
            header_offset=batmap_at,
        ).with_map(map_bytes)
        pieces += [(batmap_at, batmap.to_bytes()), (batmap_at + SECTOR_SIZE, map_bytes)]

    footer = Footer.new(
        disk_type, size, uuid=uuid or _uuid(name), timestamp=TIMESTAMP,
        creator_app=creator[0], creator_version=creator[1], creator_os=creator[2],
    )
    header = DynamicHeader.new(entries, block_size, table_offset=layout.TABLE_OFFSET,
                               **header_kwargs)
    raw_table = layout.encode_table(table, entries)
    footer_at = _round_up(position, SECTOR_SIZE)
    pieces = layout.new_metadata(footer.to_bytes(), header.to_bytes(), raw_table) + pieces
    pieces.append((footer_at, footer.to_bytes()))
    return _write_pieces(path, footer_at + FOOTER_SIZE, pieces)


def build_full_dynamic(path, size: int, *, block_size: int = BLOCK, name: str = "full",
                       bitmaps: bool = False, shuffled: bool = False) -> Path:
    """A dynamic disk whose every block is allocated, contiguous, data left as holes.

    Only the metadata and the final footer are written (and, with
    ``bitmaps``, an all-ones sector bitmap per block, as qemu allocates), so
    a 2040 GiB image costs a few MiB of disk (the BAT) on a file system with
    sparse files. For benchmarks of ``check``: the BAT is as large as it gets.
    With ``shuffled`` the blocks lie in the file in a random (seeded) order,
    as after a guest wrote all over its disk, so no check can rely on
    table order.
    """
    entries = blocks_needed(size, block_size)
    bitmap_bytes = bitmap_bytes_for(block_size)
    span = bitmap_bytes + block_size
    first = layout.table_end(entries)
    order = np.arange(entries, dtype=np.uint64)
    if shuffled:
        order = np.random.default_rng(_seed(name)).permutation(order)
    table = first // SECTOR_SIZE + order * (span // SECTOR_SIZE)
    raw_table = layout.encode_table(table.astype(np.uint32), entries)
    footer = Footer.new(DISK_DYNAMIC, size, uuid=_uuid(name), timestamp=TIMESTAMP)
    header = DynamicHeader.new(entries, block_size, table_offset=layout.TABLE_OFFSET)
    end = first + entries * span
    pieces = layout.new_metadata(footer.to_bytes(), header.to_bytes(), raw_table)
    pieces.append((end, footer.to_bytes()))
    if bitmaps:
        ones = b"\xff" * bitmap_bytes
        pieces += [(int(sector) * SECTOR_SIZE, ones) for sector in table]
    return _write_pieces(path, end + FOOTER_SIZE, pieces)


# ---------------------------------------------------------------------------
# reading and patching


def _read(path, offset: int, length: int) -> bytes:
    with open_image_file(path) as image:
        return image.pread(offset, length, "sample")


def _size(path) -> int:
    with open_image_file(path) as image:
        return image.size()


def _patch(path, offset: int, data: bytes) -> None:
    with open_image_file(path, writable=True) as image:
        image.pwrite(offset, data)


def _truncate(path, size: int) -> None:
    with open_image_file(path, writable=True) as image:
        image.truncate(size)


def _read_footer(path) -> Footer:
    return Footer.from_bytes(_read(path, _size(path) - FOOTER_SIZE, FOOTER_SIZE))


def _footer_offset(path) -> int:
    return _size(path) - FOOTER_SIZE


def _rewrite_footer(path, *, primary=True, copy=True, checksum=True, **changes) -> None:
    """Change footer fields; ``checksum=False`` keeps the stored (now wrong) checksum."""
    footer = _read_footer(path)
    changed = dataclasses.replace(footer, **changes)
    data = changed.to_bytes() if checksum else changed._pack(footer.checksum)
    if primary:
        _patch(path, _footer_offset(path), data)
    if copy:
        _patch(path, 0, data)


def _read_header(path) -> DynamicHeader:
    return DynamicHeader.from_bytes(_read(path, 512, 1024))


def _rewrite_header(path, *, checksum=True, **changes) -> None:
    header = _read_header(path)
    changed = dataclasses.replace(header, **changes)
    _patch(path, 512, changed.to_bytes() if checksum else changed._pack(header.checksum))


def _bat(path) -> np.ndarray:
    header = _read_header(path)
    raw = _read(path, header.table_offset, header.max_table_entries * 4)
    return np.frombuffer(raw, dtype=">u4").astype(np.uint32)


def _set_bat(path, index: int, value: int) -> None:
    header = _read_header(path)
    _patch(path, header.table_offset + 4 * index, int(value).to_bytes(4, "big"))


def content_digest(path) -> str:
    """sha256 of the guest-visible content (parents included), via vhdcore."""
    from ...formats.vhd.image import open as open_image

    digest = hashlib.sha256()
    with open_image(path) as image:
        buffer = bytearray(MiB)
        offset = 0
        while offset < image.virtual_size:
            view = memoryview(buffer)[: min(MiB, image.virtual_size - offset)]
            image.readinto(offset, view)
            digest.update(view)
            offset += len(view)
    return digest.hexdigest()


def _sample(name, path, codes, exit_code, *, content=True, **kwargs) -> Sample:
    files = kwargs.pop("files", (Path(path),))
    digest = kwargs.pop("digest", None)
    return Sample(
        name=name, path=Path(path), codes=tuple(codes), exit_code=exit_code,
        content=digest, files=tuple(Path(f) for f in files), **kwargs,
    )


def _dynamic(directory, name, **kwargs) -> Tuple[Path, str]:
    """A valid dynamic sample and the digest of its content."""
    path = build_dynamic(Path(directory) / f"{name}.vhd", name=name, **kwargs)
    return path, content_digest(path)


def _pair(directory, name, **child_kwargs) -> Tuple[Path, Path, str]:
    """A parent (dynamic) and a differencing child; the child's digest."""
    directory = Path(directory)
    parent = build_dynamic(
        directory / f"{name}.parent.vhd", name=name + ".parent",
        blocks={0: [(0, _pattern(name, 10))], 1: [(0, _pattern(name, 11))]},
    )
    child_kwargs.setdefault("blocks", {1: [(8192, _pattern(name, 12, 16384))]})
    child = build_dynamic(directory / f"{name}.vhd", name=name, parent=parent, **child_kwargs)
    return child, parent, content_digest(child)


