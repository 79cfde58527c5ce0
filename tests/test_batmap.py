"""blktap's batmap: header layout, checksum variants, finding it, validation."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest

import vhdcore
from vhdcore.errors import ChecksumError, FormatError, UnsupportedError
from vhdcore.formats.vhd.bat import metadata_end
from vhdcore.formats.vhd.batmap import (
    BATMAP_VERSION_1_1,
    BATMAP_VERSION_1_2,
    Batmap,
    batmap_checksum,
    batmap_header_offset,
    expects_batmap,
    find_batmap,
)
from vhdcore.formats.vhd.constants import BAT_UNUSED, DISK_DYNAMIC, DISK_FIXED
from vhdcore.formats.vhd.footer import Footer
from vhdcore.formats.vhd.header import DynamicHeader
from vhdcore.problems import raise_for

MiB = 1024 * 1024
ENTRIES = 40  # 40 bits: a 5-byte map, one sector on disk
HEADER_AT = 1536 + 512  # right after a one-sector BAT
MAP_AT = HEADER_AT + 512


def _map(full_blocks=(0, 1, 9)) -> bytes:
    bits = np.zeros(512 * 8, dtype=np.uint8)
    bits[list(full_blocks)] = 1
    return np.packbits(bits).tobytes()


def _independent_checksum(data: bytes, signed=False) -> int:
    total = sum((b - 256 if signed and b >= 128 else b) for b in data)
    return ~total & 0xFFFFFFFF


def _header_sector(checksum, version=BATMAP_VERSION_1_2, offset=MAP_AT, size=1, marker=0):
    # Written longhand, in blktap's field order: cookie, offset, size
    # (sectors), version, checksum, marker.
    raw = b"tdbatmap" + struct.pack(">QIII", offset, size, version, checksum) + bytes([marker])
    return raw.ljust(512, b"\0")


def _layout(map_bytes=None, **kwargs):
    """A blktap-style image prefix: copy, header, BAT, batmap header, map, footer."""
    map_bytes = _map() if map_bytes is None else map_bytes
    sector = _header_sector(kwargs.pop("checksum", _independent_checksum(map_bytes)), **kwargs)
    footer = Footer.new(
        DISK_DYNAMIC, ENTRIES * 2 * MiB, creator_app=b"tap\0", creator_version=0x00010003
    )
    header = DynamicHeader.new(ENTRIES, 2 * MiB)
    image = bytearray(MAP_AT + 512 + 512)
    image[HEADER_AT : HEADER_AT + 512] = sector
    image[MAP_AT : MAP_AT + 512] = map_bytes
    image[-512:] = footer.to_bytes()
    return footer, header, bytes(image)


def _reader(image):
    calls = []

    def read(offset, length):
        calls.append((offset, length))
        return image[offset : offset + length]

    read.calls = calls
    return read


def test_header_layout_round_trip():
    sector = _header_sector(0x1234, marker=1)
    batmap = Batmap.from_bytes(sector, header_offset=HEADER_AT)
    assert batmap.cookie == b"tdbatmap"
    assert (batmap.batmap_offset, batmap.batmap_size) == (MAP_AT, 1)
    assert batmap.batmap_version == BATMAP_VERSION_1_2
    assert batmap.checksum == 0x1234 and batmap.marker == 1
    assert batmap.to_bytes() == sector
    assert batmap.extents == [(HEADER_AT, HEADER_AT + 512), (MAP_AT, MAP_AT + 512)]
    assert batmap.end == MAP_AT + 512
    with pytest.raises(FormatError):
        Batmap.from_bytes(bytes(28))


def test_checksum_variants():
    data = bytes([0xFF, 0x80, 0x01]) + bytes(509)
    assert batmap_checksum(data) == _independent_checksum(data)
    assert batmap_checksum(data, BATMAP_VERSION_1_1) == _independent_checksum(data, signed=True)
    assert batmap_checksum(data) != batmap_checksum(data, BATMAP_VERSION_1_1)
    assert batmap_checksum(b"") == 0xFFFFFFFF


def test_with_map_recomputes_and_is_full_reads_msb_first():
    batmap = Batmap.from_bytes(_header_sector(0)).with_map(_map((0, 9)))
    assert batmap.checksum == _independent_checksum(_map((0, 9)))
    assert batmap.computed_checksum == batmap.checksum
    assert batmap.is_full(0) and batmap.is_full(9)
    assert not batmap.is_full(1) and not batmap.is_full(10**6)


def test_find_batmap_after_the_bat():
    footer, header, image = _layout()
    assert batmap_header_offset(header) == HEADER_AT
    assert expects_batmap(footer)
    read = _reader(image)
    batmap = find_batmap(footer, header, read, len(image))
    assert batmap is not None
    assert batmap.header_offset == HEADER_AT
    assert batmap.map == _map()
    assert read.calls == [(HEADER_AT, 512), (MAP_AT, 512)]
    assert batmap.validate("t.vhd", len(image), header) == []
    assert metadata_end(header, batmap) == MAP_AT + 512


def test_find_batmap_without_cookie_or_room():
    footer, header, image = _layout()
    plain = image[:HEADER_AT] + bytes(512) + image[HEADER_AT + 512 :]
    assert find_batmap(footer, header, _reader(plain), len(plain)) is None
    assert find_batmap(footer, header, _reader(image), HEADER_AT + 100) is None


def test_find_batmap_does_not_read_an_absurd_map():
    footer, header, image = _layout(size=0x7FFFFFFF)
    read = _reader(image)
    batmap = find_batmap(footer, header, read, len(image))
    assert batmap is not None and batmap.map == b""
    assert read.calls == [(HEADER_AT, 512)]
    codes = [p.code for p in batmap.validate("t.vhd", len(image), header)]
    assert codes == ["batmap.offset", "batmap.size"]
    # Inside a big enough file, the size alone is reported and still not read.
    big = find_batmap(footer, header, _reader(image), 1 << 42)
    assert big.map == b""


def test_expects_batmap_by_creator():
    footer = Footer.new(DISK_DYNAMIC, MiB, creator_app=b"tap\0", creator_version=0x00010002)
    assert expects_batmap(footer)
    assert not expects_batmap(dataclasses.replace(footer, creator_version=0x00010001))
    assert not expects_batmap(dataclasses.replace(footer, creator_app=b"qemu"))
    assert not expects_batmap(dataclasses.replace(footer, disk_type=DISK_FIXED))


def _found(**kwargs):
    footer, header, image = _layout(**kwargs)
    return find_batmap(footer, header, _reader(image), len(image)), header, len(image)


def test_rule_checksum():
    batmap, header, size = _found(checksum=0xDEADBEEF)
    problems = batmap.validate("t.vhd", size, header)
    assert [(p.code, p.severity) for p in problems] == [("batmap.checksum", "warning")]
    assert problems[0].error is ChecksumError
    assert "stored 0xdeadbeef" in problems[0].message
    raise_for(problems)  # a hint: never fatal


def test_rule_checksum_v1_1_is_signed():
    data = _map((0, 1, 2, 3, 4, 5, 6, 7))  # 0xFF: signed and unsigned sums differ
    batmap, header, size = _found(
        map_bytes=data,
        checksum=_independent_checksum(data, signed=True),
        version=BATMAP_VERSION_1_1,
    )
    assert batmap.validate("t.vhd", size, header) == []


def test_rule_cookie_and_version():
    batmap, header, size = _found()
    wrong = dataclasses.replace(batmap, cookie=b"tdbatmaP")
    assert [p.code for p in wrong.validate("t.vhd", size, header)] == ["batmap.cookie"]
    assert wrong.validate()[0].error is FormatError
    newer = dataclasses.replace(batmap, batmap_version=0x00010003)
    problems = newer.validate("t.vhd", size, header)
    assert "batmap.version" in [p.code for p in problems]
    assert problems[0].error is UnsupportedError


def test_rule_inside_the_file():
    batmap, header, size = _found()
    moved = dataclasses.replace(batmap, batmap_offset=size)
    assert [p.code for p in moved.validate("t.vhd", size, header)] == ["batmap.offset"]
    over_bat = dataclasses.replace(batmap, batmap_offset=1536)
    assert "batmap.offset" in [p.code for p in over_bat.validate("t.vhd", size, header)]


def test_rule_size_covers_every_entry():
    batmap, _header, size = _found()
    big = DynamicHeader.new(512 * 8 + 1, 2 * MiB)
    assert "batmap.size" in [p.code for p in batmap.validate("t.vhd", size, big)]


def test_rule_full_blocks_are_allocated():
    batmap, header, size = _found()
    bat = np.full(ENTRIES, BAT_UNUSED, dtype=np.uint32)
    bat[[0, 1]] = [100, 200_000]
    problems = batmap.validate("t.vhd", size, header, bat)
    assert [p.code for p in problems] == ["batmap.unallocated"]
    assert "block 9" in problems[0].message
    bat[9] = 400_000
    assert batmap.validate("t.vhd", size, header, bat) == []


def test_allocating_a_block_clears_its_stale_full_bit(tmp_path):
    """A block allocated again must not inherit a "full" hint (blktap would skip its bitmap)."""
    from vhdcore.formats.vhd.check import check
    from vhdcore.testing import samples

    sample = samples.generate("batmap_unallocated_full", tmp_path)  # block 1 marked full
    assert check(sample.path).exit_code == 2
    with vhdcore.open(sample.path, "r+") as image:
        image.write(samples.BLOCK + 4096, b"\x11" * 512)  # allocates block 1
        assert not image.batmap.is_full(1) and image.batmap.is_full(0)
    report = check(sample.path)
    assert report.exit_code == 0, report.codes


def test_shrink_clears_the_bits_of_released_blocks(tmp_path):
    from vhdcore.formats.vhd.check import check
    from vhdcore.formats.vhd.resize import resize
    from vhdcore.testing import samples

    path = samples.build_dynamic(tmp_path / "tap.vhd", name="tap", size=64 * MiB, blktap=True,
                                 blocks={}, full_blocks=range(32))
    resize(path, 16 * MiB, force=True)
    with vhdcore.open(path) as image:
        assert [b for b in range(32) if image.batmap.is_full(b)] == list(range(8))
    resize(path, 64 * MiB)  # blktap's vhd-util check refused this one ("block 64 full")
    assert check(path).exit_code == 0


def test_compact_copy_drops_stale_bits(tmp_path):
    from vhdcore.formats.vhd.check import check
    from vhdcore.formats.vhd.compact import compact
    from vhdcore.testing import samples

    sample = samples.generate("batmap_unallocated_full", tmp_path)  # block 1 marked full
    compact(sample.path, output=tmp_path / "copy.vhd")
    assert check(tmp_path / "copy.vhd").exit_code == 0
    compact(sample.path)  # in place: the stale bit goes too
    assert check(sample.path).exit_code == 0
