"""Small valid and deliberately damaged VHD images, for tests and fuzzing.

Every generator takes a directory, writes one image there (plus a parent
for differencing samples) and returns a :class:`Sample` naming the file,
the problem codes :func:`vhdcore.formats.vhd.check.check` must report for it, the
exit code ``vhdcore check`` must return, and whether ``vhdcore repair``
can fix it. Images are deterministic (fixed UUIDs, timestamps and data
derived from the sample's name; locators hold only relative paths, so the
bytes do not depend on the directory), small (7 MiB virtual, at most three
2 MiB blocks, under 8 MiB of file) and sparse: data is written only where
a pattern goes, everything else is a hole.

:data:`VALID` and :data:`DAMAGED` map names to generators;
:func:`generate` and :func:`generate_all` run them. The damaged set has one
image per rule of :mod:`vhdcore.formats.vhd.check`, so it doubles as a seed corpus for
the fuzzing harness.

Images are built by hand (:func:`build_dynamic`, :func:`build_fixed`)
rather than through :func:`vhdcore.create`, so a sample can take layouts
vhdcore never writes (blktap's batmap and 4 KiB-aligned blocks, relative
``MacX`` locators); damage is then applied as byte patches. All file I/O
goes through :func:`vhdcore.io.imagefile.open_image_file`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid as uuid_module
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..formats.vhd import layout
from ..formats.vhd.bat import bitmap_bytes_for, blocks_needed
from ..formats.vhd.batmap import BATMAP_VERSION_1_2, Batmap
from ..formats.vhd.constants import (
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
from ..formats.vhd.footer import Footer
from ..formats.vhd.header import DynamicHeader, ParentLocator, encode_parent_name
from ..formats.vhd.locators import encode_locator
from ..formats.vhd.xen import batmap_sectors
from ..io.imagefile import open_image_file

__all__ = [
    "Sample",
    "VALID",
    "DAMAGED",
    "generate",
    "generate_all",
    "build_dynamic",
    "build_fixed",
    "build_full_dynamic",
    "content_digest",
    "SIZE",
    "BLOCK",
    "TIMESTAMP",
]

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
    from ..formats.vhd.image import open as open_image

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


# ---------------------------------------------------------------------------
# valid images


def valid_dynamic(directory) -> Sample:
    path, digest = _dynamic(directory, "valid_dynamic")
    return _sample("valid_dynamic", path, (), 0, digest=digest,
                   description="dynamic disk, blocks 0 and 2 partly written")


def valid_dynamic_full_last_block(directory) -> Sample:
    name = "valid_dynamic_full_last_block"
    path, digest = _dynamic(
        directory, name, blocks={3: [(0, _pattern(name, 3))]}, full_blocks=(0,),
    )
    return _sample(name, path, (), 0, digest=digest,
                   description="dynamic disk with an all-ones bitmap (as qemu writes) and the "
                               "last, partial block allocated")


def valid_fixed(directory) -> Sample:
    path = build_fixed(Path(directory) / "valid_fixed.vhd", name="valid_fixed")
    return _sample("valid_fixed", path, (), 0, digest=content_digest(path),
                   description="fixed disk of 4 MiB")


def valid_differencing(directory) -> Sample:
    child, parent, digest = _pair(directory, "valid_differencing")
    return _sample("valid_differencing", child, (), 0, digest=digest, files=(child, parent),
                   check_options={"parents": True},
                   description="differencing disk over a dynamic parent (W2ru and MacX locators)")


def valid_blktap(directory) -> Sample:
    name = "valid_blktap"
    path, digest = _dynamic(directory, name, blktap=True, full_blocks=(0,))
    return _sample(name, path, (), 0, digest=digest,
                   description="blktap layout: creator tap 1.3, batmap, 4 KiB-aligned data")


VALID: Dict[str, Callable[[Path], Sample]] = {
    "valid_dynamic": valid_dynamic,
    "valid_dynamic_full_last_block": valid_dynamic_full_last_block,
    "valid_fixed": valid_fixed,
    "valid_differencing": valid_differencing,
    "valid_blktap": valid_blktap,
}


# ---------------------------------------------------------------------------
# damaged images: footers


def _footer_sample(directory, name, codes, exit_code, repair, description, *,
                   primary=True, copy=False, checksum=True, **changes) -> Sample:
    path, digest = _dynamic(directory, name)
    _rewrite_footer(path, primary=primary, copy=copy, checksum=checksum, **changes)
    return _sample(name, path, codes, exit_code, repair=repair, digest=digest,
                   description=description)


def footer_bad_cookie(directory) -> Sample:
    return _footer_sample(directory, "footer_bad_cookie", ["footer.cookie"], 2, "yes",
                          "primary footer cookie 'conectiX'", cookie=b"conectiX")


def footer_bad_checksum(directory) -> Sample:
    name = "footer_bad_checksum"
    path, digest = _dynamic(directory, name)
    stored = _read_footer(path).checksum
    _patch(path, _footer_offset(path) + 64, ((stored + 1) & 0xFFFFFFFF).to_bytes(4, "big"))
    return _sample(name, path, ["footer.checksum"], 2, repair="yes", digest=digest,
                   description="primary footer checksum off by one")


def footer_bad_checksum_fixed(directory) -> Sample:
    name = "footer_bad_checksum_fixed"
    path = build_fixed(Path(directory) / f"{name}.vhd", name=name)
    digest = content_digest(path)
    stored = _read_footer(path).checksum
    _patch(path, _footer_offset(path) + 64, ((stored + 1) & 0xFFFFFFFF).to_bytes(4, "big"))
    return _sample(name, path, ["footer.checksum"], 2, repair="yes", digest=digest,
                   description="fixed disk whose footer checksum is off by one")


def footer_wrong_version(directory) -> Sample:
    return _footer_sample(directory, "footer_wrong_version", ["footer.version"], 2, "yes",
                          "primary footer format version 2.0", format_version=0x00020000)


def footer_bad_features(directory) -> Sample:
    return _footer_sample(directory, "footer_bad_features", ["footer.features_unknown"], 2,
                          "yes", "primary footer features 0x12 (unknown bit 0x10)",
                          features=0x12)


def footer_fixed_data_offset(directory) -> Sample:
    name = "footer_fixed_data_offset"
    path = build_fixed(Path(directory) / f"{name}.vhd", name=name)
    digest = content_digest(path)
    _rewrite_footer(path, copy=False, data_offset=512)
    return _sample(name, path, ["footer.data_offset"], 0, digest=digest,
                   description="fixed disk whose footer data offset is 0x200, not all ones "
                               "(a warning: nothing reads it)")


def footer_future_timestamp(directory) -> Sample:
    return _footer_sample(directory, "footer_future_timestamp", ["footer.timestamp"], 0, None,
                          "both footers stamped in 2136 (a warning)", copy=True,
                          timestamp=FUTURE_TIMESTAMP)


def footer_wrong_disk_type(directory) -> Sample:
    return _footer_sample(directory, "footer_wrong_disk_type", ["footer.disk_type"], 2, "yes",
                          "primary footer disk type 6 (reserved)", disk_type=6)


def footer_geometry_too_large(directory) -> Sample:
    from ..formats.vhd.geometry import MAX_GEOMETRY

    return _footer_sample(directory, "footer_geometry_too_large", ["footer.geometry"], 0, None,
                          "both footers carry qemu force_size's 65535/16/255 geometry "
                          "(a warning; vhd-util rejects it)", copy=True, geometry=MAX_GEOMETRY)


def footer_reserved_set(directory) -> Sample:
    reserved = bytearray(427)
    reserved[100] = 0x5A
    return _footer_sample(directory, "footer_reserved_set", ["footer.reserved"], 0, None,
                          "a reserved footer byte set in both footers (a warning)", copy=True,
                          reserved=bytes(reserved))


def footer_null_uuid(directory) -> Sample:
    return _footer_sample(directory, "footer_null_uuid", ["footer.uuid"], 0, None,
                          "both footers carry the null UUID (a warning)", copy=True,
                          uuid=uuid_module.UUID(int=0))


def footer_copy_mismatch(directory) -> Sample:
    return _footer_sample(directory, "footer_copy_mismatch", ["footer.mismatch"], 2, "yes",
                          "the copy at offset 0 has another (valid) timestamp",
                          primary=False, copy=True, timestamp=TIMESTAMP - 3600)


def footer_copy_size_mismatch(directory) -> Sample:
    return _footer_sample(directory, "footer_copy_size_mismatch", ["footer.mismatch"], 2, "force",
                          "the copy at offset 0 says another current size: which is right "
                          "is not obvious, so repair needs --force",
                          primary=False, copy=True, current_size=SIZE - BLOCK)


def footer_copy_stale(directory) -> Sample:
    return _footer_sample(directory, "footer_copy_stale", ["footer.copy_stale"], 0, "yes",
                          "the copy at offset 0 holds an older timestamp and a smaller size: "
                          "a resize interrupted between its two footer writes",
                          primary=False, copy=True, current_size=SIZE - BLOCK,
                          original_size=SIZE - BLOCK, timestamp=TIMESTAMP - 60)


def footer_copy_missing(directory) -> Sample:
    name = "footer_copy_missing"
    path, digest = _dynamic(directory, name)
    _patch(path, 0, bytes(FOOTER_SIZE))
    return _sample(name, path, ["footer_copy.missing"], 2, repair="yes", digest=digest,
                   description="the footer copy at offset 0 zeroed")


def footer_missing_truncated(directory) -> Sample:
    name = "footer_missing_truncated"
    path, digest = _dynamic(directory, name)
    _truncate(path, _size(path) - FOOTER_SIZE)
    return _sample(name, path, ["footer.missing"], 2, repair="yes", digest=digest,
                   description="the last 512 bytes (the footer) cut off")


def footer_missing_zeroed(directory) -> Sample:
    name = "footer_missing_zeroed"
    path, digest = _dynamic(directory, name)
    _patch(path, _footer_offset(path), bytes(FOOTER_SIZE))
    return _sample(name, path, ["footer.missing"], 2, repair="yes", digest=digest,
                   description="the primary footer zeroed")


def footer_killed(directory) -> Sample:
    name = "footer_killed"
    path, digest = _dynamic(directory, name, blktap=True)
    _patch(path, _footer_offset(path), b"\xc7" * FOOTER_SIZE)
    return _sample(name, path, ["footer.killed"], 2, repair="yes", digest=digest,
                   description="blktap image whose primary footer tapdisk 'killed' (0xC7 bytes)")


def footer_legacy_511(directory) -> Sample:
    name = "footer_legacy_511"
    path, digest = _dynamic(directory, name)
    _truncate(path, _size(path) - 1)
    return _sample(name, path, ["footer.legacy"], 0, digest=digest,
                   description="a 511-byte legacy footer (a warning)")


# ---------------------------------------------------------------------------
# damaged images: dynamic header


def _header_sample(directory, name, codes, description, *, repair=None, checksum=True,
                   **changes) -> Sample:
    path, digest = _dynamic(directory, name)
    _rewrite_header(path, checksum=checksum, **changes)
    return _sample(name, path, codes, 2, repair=repair, digest=digest, description=description)


def header_bad_cookie(directory) -> Sample:
    return _header_sample(directory, "header_bad_cookie", ["header.cookie"],
                          "dynamic header cookie 'cxsparsX'", cookie=b"cxsparsX")


def header_bad_checksum(directory) -> Sample:
    name = "header_bad_checksum"
    path, digest = _dynamic(directory, name)
    stored = _read_header(path).checksum
    _patch(path, layout.HEADER_OFFSET + 36, ((stored + 1) & 0xFFFFFFFF).to_bytes(4, "big"))
    return _sample(name, path, ["header.checksum"], 2, repair="yes", digest=digest,
                   description="dynamic header checksum off by one")


def header_wrong_version(directory) -> Sample:
    return _header_sample(directory, "header_wrong_version", ["header.version"],
                          "dynamic header version 2.0", header_version=0x00020000)


def header_table_outside(directory) -> Sample:
    return _header_sample(directory, "header_table_outside", ["header.table_size"],
                          "table offset 256 MiB, past the end of the file",
                          table_offset=256 * MiB)


def header_table_unaligned(directory) -> Sample:
    return _header_sample(directory, "header_table_unaligned", ["header.table_offset"],
                          "table offset 0x604, not sector-aligned",
                          table_offset=layout.TABLE_OFFSET + 4)


def header_block_size_not_pow2(directory) -> Sample:
    return _header_sample(directory, "header_block_size_not_pow2", ["header.block_size"],
                          "block size 3 MiB", block_size=3 * MiB)


def header_block_size_zero(directory) -> Sample:
    return _header_sample(directory, "header_block_size_zero", ["header.block_size"],
                          "block size 0", block_size=0)


def header_block_size_huge(directory) -> Sample:
    return _header_sample(directory, "header_block_size_huge", ["header.block_size"],
                          "block size 2 GiB", block_size=0x80000000)


def header_max_entries_small(directory) -> Sample:
    return _header_sample(directory, "header_max_entries_small", ["header.max_table_entries"],
                          "max table entries 2 for a disk of 4 blocks", max_table_entries=2)


def header_max_entries_absurd(directory) -> Sample:
    return _header_sample(directory, "header_max_entries_absurd", ["header.table_size"],
                          "max table entries 0xFFFFFFFF (a 16 GiB table in a small file)",
                          max_table_entries=0xFFFFFFFF)


def header_parent_fields_on_dynamic(directory) -> Sample:
    name = "header_parent_fields_on_dynamic"
    path, digest = _dynamic(directory, name)
    _rewrite_header(path, parent_uuid=_uuid(name, "parent"),
                    parent_name_raw=encode_parent_name("ghost.vhd"))
    return _sample(name, path, ["header.parent_fields"], 0, digest=digest,
                   description="parent UUID and name set on a dynamic disk (a warning)")


def header_zeroed(directory) -> Sample:
    name = "header_zeroed"
    path, digest = _dynamic(directory, name)
    _patch(path, 512, bytes(1024))
    return _sample(name, path, ["header.cookie"], 2, digest=digest,
                   description="the dynamic header's two sectors zeroed")


# ---------------------------------------------------------------------------
# damaged images: BAT


def _bat_sample(directory, name, codes, description, value_of, *, index=1, repair="force",
                content_kept=False, **build) -> Sample:
    path, digest = _dynamic(directory, name, **build)
    table = _bat(path)
    footer_at = _footer_offset(path)
    _set_bat(path, index, value_of(table, footer_at))
    return _sample(name, path, codes, 2, repair=repair, content_kept=content_kept,
                   digest=digest, description=description)


def bat_entry_zero(directory) -> Sample:
    return _bat_sample(directory, "bat_entry_zero", ["bat.outside"],
                       "BAT entry 1 = 0 (the block would cover the footer copy and header)",
                       lambda table, end: 0)


def bat_entry_into_bat(directory) -> Sample:
    return _bat_sample(directory, "bat_entry_into_bat", ["bat.outside"],
                       "BAT entry 1 points at sector 3, the BAT itself",
                       lambda table, end: 3)


def bat_entry_into_footer(directory) -> Sample:
    return _bat_sample(directory, "bat_entry_into_footer", ["bat.outside"],
                       "BAT entry 1 points at the footer's sector",
                       lambda table, end: end // SECTOR_SIZE)


def bat_entry_past_eof(directory) -> Sample:
    return _bat_sample(directory, "bat_entry_past_eof", ["bat.outside"],
                       "BAT entry 1 points 64 MiB past the end of the file",
                       lambda table, end: (end + 64 * MiB) // SECTOR_SIZE)


def bat_entry_duplicate(directory) -> Sample:
    return _bat_sample(directory, "bat_entry_duplicate", ["bat.overlap"],
                       "BAT entry 1 points at block 0's block", lambda table, end: table[0],
                       repair=None)


def bat_entry_overlap_one_sector(directory) -> Sample:
    span = (BLOCK + SECTOR_SIZE) // SECTOR_SIZE
    return _bat_sample(directory, "bat_entry_overlap_one_sector", ["bat.overlap"],
                       "BAT entry 2 starts one sector before block 0 ends",
                       lambda table, end: int(table[0]) + span - 1, index=2, repair=None)


def bat_last_partial_block(directory) -> Sample:
    return _bat_sample(directory, "bat_last_partial_block", ["bat.outside"],
                       "the entry of the last, partial block points over the footer "
                       "(vhd-util never checks this block)",
                       lambda table, end: end // SECTOR_SIZE, index=3)


def bat_zeroed_sector(directory) -> Sample:
    name = "bat_zeroed_sector"
    path, digest = _dynamic(directory, name)
    _patch(path, layout.TABLE_OFFSET, bytes(SECTOR_SIZE))
    return _sample(name, path, ["bat.outside"], 2, repair="force", content_kept=False,
                   digest=digest, description="the BAT's sector zeroed: every entry says 0")


# ---------------------------------------------------------------------------
# damaged images: batmap


def batmap_bad_checksum(directory) -> Sample:
    name = "batmap_bad_checksum"
    path, digest = _dynamic(directory, name, blktap=True, full_blocks=(0,))
    header_at = layout.table_end(blocks_needed(SIZE, BLOCK))
    _patch(path, header_at + 24, (0x0BADBEEF).to_bytes(4, "big"))
    return _sample(name, path, ["batmap.checksum"], 0, digest=digest,
                   description="blktap batmap whose checksum is wrong (a warning: only a hint)")


def batmap_unallocated_full(directory) -> Sample:
    name = "batmap_unallocated_full"
    path, digest = _dynamic(directory, name, blktap=True, full_blocks=(0,))
    header_at = layout.table_end(blocks_needed(SIZE, BLOCK))
    batmap = Batmap.from_bytes(_read(path, header_at, SECTOR_SIZE), header_offset=header_at)
    map_bytes = bytearray(_read(path, batmap.batmap_offset, batmap.size_bytes))
    map_bytes[0] |= 0x80 >> 1  # block 1 is not allocated
    fixed = batmap.with_map(bytes(map_bytes))
    _patch(path, batmap.batmap_offset, bytes(map_bytes))
    _patch(path, header_at, fixed.to_bytes())
    return _sample(name, path, ["batmap.unallocated"], 2, repair="yes", digest=digest,
                   description="blktap batmap marks unallocated block 1 full (an error: "
                               "vhd-util check refuses it)")


# ---------------------------------------------------------------------------
# damaged images: parent locators and chains


def _locator_sample(directory, name, codes, exit_code, description, change) -> Sample:
    child, parent, digest = _pair(directory, name)
    header = _read_header(child)
    locators = list(header.locators)
    change(locators, child)
    _rewrite_header(child, locators=tuple(locators))
    return _sample(name, child, codes, exit_code, digest=digest, files=(child, parent),
                   description=description)


def locator_unknown_code(directory) -> Sample:
    def change(locators, child):
        locators[1] = dataclasses.replace(locators[1], code=b"Xyzw")

    return _locator_sample(directory, "locator_unknown_code", ["locator.code"], 2,
                           "the MacX locator's platform code changed to 'Xyzw'", change)


def locator_outside_file(directory) -> Sample:
    def change(locators, child):
        locators[1] = dataclasses.replace(locators[1], data_offset=_size(child) + 64 * MiB)

    return _locator_sample(directory, "locator_outside_file", ["locator.offset"], 2,
                           "the MacX locator's data lies 64 MiB past the end of the file", change)


def locator_length_exceeds_space(directory) -> Sample:
    def change(locators, child):
        locators[0] = dataclasses.replace(
            locators[0], data_length=locators[0].space_bytes + 1)

    return _locator_sample(directory, "locator_length_exceeds_space", ["locator.length"], 2,
                           "the W2ru locator's length is one byte more than its space", change)


def locator_duplicate(directory) -> Sample:
    def change(locators, child):
        locators[2] = locators[0]

    return _locator_sample(directory, "locator_duplicate", ["locator.duplicate"], 0,
                           "the W2ru locator entry appears twice (a warning)", change)


def parent_missing(directory) -> Sample:
    name = "parent_missing"
    child, parent, digest = _pair(directory, name)
    parent.unlink()
    return _sample(name, child, ["parent.missing"], 2, digest=None, files=(child,),
                   description="the parent file was deleted")


def parent_uuid_mismatch(directory) -> Sample:
    name = "parent_uuid_mismatch"
    child, parent, _digest = _pair(directory, name)
    build_dynamic(parent, name=name + ".impostor")
    return _sample(name, child, ["parent.uuid"], 2, files=(child, parent),
                   description="the parent file replaced by another image (another UUID)")


def chain_loop(directory) -> Sample:
    """A -> B -> A: found only when the chain is checked (``parents=True``)."""
    name = "chain_loop"
    directory = Path(directory)
    a_path = directory / f"{name}.vhd"
    b_path = directory / f"{name}.parent.vhd"
    a_uuid, b_uuid = _uuid(name, "a"), _uuid(name, "b")
    # B first needs A's UUID, and A needs B's: write a placeholder A, then B, then A.
    build_dynamic(a_path, name=name, uuid=a_uuid)
    build_dynamic(b_path, name=name + ".b", parent=a_path, uuid=b_uuid)
    build_dynamic(a_path, name=name, parent=b_path, uuid=a_uuid)
    return _sample(name, a_path, ["chain.loop"], 2, check_options={"parents": True},
                   files=(a_path, b_path),
                   description="two differencing disks, each the other's parent")


def chain_self_loop(directory) -> Sample:
    name = "chain_self_loop"
    path = Path(directory) / f"{name}.vhd"
    own = _uuid(name)
    build_dynamic(path, name=name)
    build_dynamic(path, name=name, parent=path, parent_uuid=own, locator_name=path.name)
    return _sample(name, path, ["chain.loop"], 2,
                   description="a differencing disk whose locators name itself")


# ---------------------------------------------------------------------------
# damaged images: the file


def trailing_garbage(directory) -> Sample:
    name = "trailing_garbage"
    path, digest = _dynamic(directory, name)
    _patch(path, _size(path), _pattern(name, 99, 1000))
    return _sample(name, path, ["file.trailing_data"], 2, repair="yes", digest=digest,
                   description="1000 bytes appended after the footer")


def trailing_garbage_fixed(directory) -> Sample:
    name = "trailing_garbage_fixed"
    path = build_fixed(Path(directory) / f"{name}.vhd", name=name)
    digest = content_digest(path)
    _patch(path, _size(path), _pattern(name, 99, 4096))
    return _sample(name, path, ["file.trailing_data"], 2, repair="yes", digest=digest,
                   description="4 KiB appended after a fixed disk's footer")


def file_size_unaligned(directory) -> Sample:
    name = "file_size_unaligned"
    path, digest = _dynamic(directory, name)
    footer_at = _footer_offset(path)
    footer = _read(path, footer_at, FOOTER_SIZE)
    _patch(path, footer_at, _pattern(name, 98, 100) + footer)
    return _sample(name, path, ["file.size"], 2, repair="yes", digest=digest,
                   description="100 bytes between the last block and the footer: the file "
                               "size is 100 modulo 512")


def truncated_file(directory) -> Sample:
    name = "truncated_file"
    path, digest = _dynamic(directory, name)
    _truncate(path, _size(path) - FOOTER_SIZE - MiB)
    return _sample(name, path, ["file.truncated", "bat.outside"], 2, repair="force",
                   content_kept=False, digest=digest,
                   description="the file cut 1 MiB into its last block (footer lost)")


def file_too_small(directory) -> Sample:
    path = _write_pieces(Path(directory) / "file_too_small.vhd", 100, [(0, b"conectix")])
    return _sample("file_too_small", path, ["file.too_small"], 2,
                   description="a 100-byte file")


def not_a_vhd(directory) -> Sample:
    name = "not_a_vhd"
    path = _write_pieces(Path(directory) / f"{name}.vhd", 8192, [(0, _pattern(name, 0, 8192))])
    return _sample(name, path, [], 1, description="8 KiB of random bytes: no VHD at all, so "
                   "check refuses it (NotVHDError, exit 1) instead of calling it corrupt")


def data_under_clear_bits(directory) -> Sample:
    name = "data_under_clear_bits"
    path, digest = _dynamic(directory, name)
    table = _bat(path)
    data_at = int(table[2]) * SECTOR_SIZE + SECTOR_SIZE
    _patch(path, data_at + 512 * 1024, _pattern(name, 50, 4096))
    return _sample(name, path, ["data.clear_bitmap"], 0, check_options={"deep": True},
                   digest=digest, description="data written into block 2 where its bitmap "
                                              "bits are clear (found by deep)")


def stale_data_differencing(directory) -> Sample:
    name = "stale_data_differencing"
    child, parent, digest = _pair(directory, name)
    table = _bat(child)
    data_at = int(table[1]) * SECTOR_SIZE + SECTOR_SIZE
    _patch(child, data_at + 1024 * 1024, _pattern(name, 51, 4096))
    return _sample(name, child, ["data.stale"], 0, check_options={"deep": True},
                   digest=digest, files=(child, parent),
                   description="stale bytes under clear bitmap bits of a differencing disk "
                               "(a warning, found by deep)")


def leaked_block(directory) -> Sample:
    """The state a crash leaves between extending the file and writing the BAT."""
    name = "leaked_block"
    path, digest = _dynamic(directory, name)
    footer_at = _footer_offset(path)
    footer = _read(path, footer_at, FOOTER_SIZE)
    span = BLOCK + SECTOR_SIZE
    _patch(path, footer_at, bytes(SECTOR_SIZE))  # the orphan's zeroed bitmap
    _patch(path, footer_at + span, footer)
    return _sample(name, path, ["file.leak"], 3, digest=digest,
                   description="an orphan block between the last block and the footer "
                               "(only leaks: exit 3)")


DAMAGED: Dict[str, Callable[[Path], Sample]] = {
    fn.__name__: fn
    for fn in (
        footer_bad_cookie,
        footer_bad_checksum,
        footer_bad_checksum_fixed,
        footer_wrong_version,
        footer_bad_features,
        footer_fixed_data_offset,
        footer_future_timestamp,
        footer_wrong_disk_type,
        footer_geometry_too_large,
        footer_reserved_set,
        footer_null_uuid,
        footer_copy_mismatch,
        footer_copy_size_mismatch,
        footer_copy_stale,
        footer_copy_missing,
        footer_missing_truncated,
        footer_missing_zeroed,
        footer_killed,
        footer_legacy_511,
        header_bad_cookie,
        header_bad_checksum,
        header_wrong_version,
        header_table_outside,
        header_table_unaligned,
        header_block_size_not_pow2,
        header_block_size_zero,
        header_block_size_huge,
        header_max_entries_small,
        header_max_entries_absurd,
        header_parent_fields_on_dynamic,
        header_zeroed,
        bat_entry_zero,
        bat_entry_into_bat,
        bat_entry_into_footer,
        bat_entry_past_eof,
        bat_entry_duplicate,
        bat_entry_overlap_one_sector,
        bat_last_partial_block,
        bat_zeroed_sector,
        batmap_bad_checksum,
        batmap_unallocated_full,
        locator_unknown_code,
        locator_outside_file,
        locator_length_exceeds_space,
        locator_duplicate,
        parent_missing,
        parent_uuid_mismatch,
        chain_loop,
        chain_self_loop,
        trailing_garbage,
        trailing_garbage_fixed,
        file_size_unaligned,
        truncated_file,
        file_too_small,
        not_a_vhd,
        data_under_clear_bits,
        stale_data_differencing,
        leaked_block,
    )
}


def generate(name: str, directory) -> Sample:
    """Run the generator ``name`` (from :data:`VALID` or :data:`DAMAGED`) in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator = VALID.get(name) or DAMAGED.get(name)
    if generator is None:
        raise KeyError(f"no sample named {name!r}")
    return generator(directory)


def generate_all(directory, which: str = "damaged") -> List[Sample]:
    """Every sample of ``which`` (``"valid"``, ``"damaged"`` or ``"all"``), one directory each."""
    names = {"valid": list(VALID), "damaged": list(DAMAGED), "all": [*VALID, *DAMAGED]}[which]
    return [generate(name, Path(directory) / name) for name in names]
