"""BAT arithmetic, the end of metadata, and block placement checks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from vhdcore._backend import kernels
from vhdcore.errors import CorruptImageError
from vhdcore.formats.vhd.bat import (
    MAX_REPORTED,
    bat_bytes,
    bitmap_bytes_for,
    blocks_needed,
    metadata_end,
    validate_bat,
)
from vhdcore.formats.vhd.batmap import Batmap
from vhdcore.formats.vhd.constants import BAT_UNUSED, DISK_DYNAMIC
from vhdcore.formats.vhd.footer import Footer
from vhdcore.formats.vhd.header import DynamicHeader, ParentLocator
from vhdcore.problems import raise_for

MiB = 1024 * 1024
BS = 2 * MiB
SPAN = BS + 512  # bitmap sector + data


@pytest.mark.parametrize(
    ("block_size", "expected"),
    [(512, 512), (4096, 512), (BS, 512), (4 * MiB, 1024), (256 * MiB, 65536)],
)
def test_bitmap_bytes_for(block_size, expected):
    assert bitmap_bytes_for(block_size) == expected


@pytest.mark.parametrize("block_size", [0, -512, 1000])
def test_bitmap_bytes_for_refuses_nonsense(block_size):
    with pytest.raises(ValueError):
        bitmap_bytes_for(block_size)


def test_blocks_needed_is_a_ceiling():
    assert blocks_needed(0, BS) == 0
    assert blocks_needed(1, BS) == 1
    assert blocks_needed(BS, BS) == 1
    assert blocks_needed(BS + 512, BS) == 2
    assert blocks_needed(2040 * 1024**3, BS) == 1_044_480
    with pytest.raises(ValueError):
        blocks_needed(1, 0)
    with pytest.raises(ValueError):
        blocks_needed(-1, BS)


def test_bat_bytes_pads_to_sectors():
    assert [bat_bytes(n) for n in (0, 1, 128, 129)] == [0, 512, 512, 1024]
    assert bat_bytes(1_044_480) == 4_177_920
    with pytest.raises(ValueError):
        bat_bytes(-1)


def test_metadata_end_takes_the_largest_end():
    header = DynamicHeader.new(8, BS)
    assert metadata_end(header) == 2048  # BAT 1536..2048
    big = DynamicHeader.new(300, BS)
    assert metadata_end(big) == 1536 + 1536
    # The batmap header sector counts; its map only once loaded and verified.
    batmap = Batmap(b"tdbatmap", 2560, 1, 0x00010002, 0, 0, header_offset=2048)
    assert metadata_end(header, batmap) == 2560
    batmap = batmap.with_map(bytes(512))
    assert metadata_end(header, batmap) == 3072
    bad = dataclasses.replace(batmap, checksum=batmap.checksum ^ 1)
    assert metadata_end(header, bad) == 2560
    locs = [ParentLocator(b"W2ru", 1, 20, 0, 8192), ParentLocator(b"MacX", 1024, 20, 0, 4096)]
    with_locators = DynamicHeader.new(8, BS, locators=locs)
    assert metadata_end(with_locators) == 8704
    assert metadata_end(with_locators, batmap, locators=()) == 3072
    assert metadata_end(header, locators=locs[1:]) == 5120
    assert metadata_end(header, header_offset=4096) == 5120
    # Unaligned ends round up to a sector.
    odd = Batmap(b"tdbatmap", 2560, 1, 0x00010002, 0, 0, header_offset=2100)
    assert metadata_end(header, odd) == 3072  # 2612 rounded up


# -- validate_bat ------------------------------------------------------------

ENTRIES = 8
START = 2048  # end of metadata for an 8-entry table at 1536


def _image(entries, current_size=ENTRIES * BS, blocks_in_file=None):
    """(bat, header, footer, file_size) with ``entries`` as BAT sector numbers."""
    table = np.full(ENTRIES, BAT_UNUSED, dtype=np.uint32)
    for index, sector in entries.items():
        table[index] = sector
    header = DynamicHeader.new(ENTRIES, BS)
    footer = Footer.new(DISK_DYNAMIC, current_size)
    count = len(entries) if blocks_in_file is None else blocks_in_file
    file_size = START + count * SPAN + 512
    return table, header, footer, file_size


def _sector(block_slot):
    return (START + block_slot * SPAN) // 512


def _check(table, header, footer, file_size):
    return validate_bat(table, header, footer, START, file_size, "disk.vhd")


def test_clean_table():
    image = _image({0: _sector(0), 5: _sector(1), 7: _sector(2)})
    assert _check(*image) == []
    assert _check(*_image({})) == []


def test_raw_bytes_are_accepted():
    table, header, footer, size = _image({0: _sector(0)})
    assert validate_bat(kernels.bat_encode(table), header, footer, START, size) == []


@pytest.mark.parametrize(
    ("where", "sector"),
    [
        ("over the metadata (the footer copy)", 0),
        ("over the metadata (the dynamic header)", 1),
        ("over the metadata (the BAT)", 3),
        ("over the footer", _sector(2)),
        ("running past the end of the file", 0xFFFFFFF0),
    ],
)
def test_blocks_outside_the_data_area(where, sector):
    # The good block sits in slot 1, out of reach of a block at sector 0..3.
    image = _image({0: _sector(1), 3: sector}, blocks_in_file=2)
    problems = _check(*image)
    assert [p.code for p in problems] == ["bat.outside"], where
    problem = problems[0]
    assert "BAT entry 3" in problem.message and f"{sector * 512:#x}" in problem.message
    assert problem.offset == 1536 + 4 * 3
    assert where in problem.message
    with pytest.raises(CorruptImageError, match="puts block"):
        raise_for(problems)


def test_last_partial_block_is_checked_too():
    # 7.5 blocks: vhd-util skips the last, partial block; we do not.
    image = _image({7: _sector(0) + 1}, current_size=7 * BS + BS // 2, blocks_in_file=1)
    assert [p.code for p in _check(*image)] == ["bat.outside"]


def test_duplicate_entries_overlap_each_other():
    # One finding per pair, blaming the higher index, as vhd-util's "clobbers".
    problems = _check(*_image({1: _sector(0), 4: _sector(0)}, blocks_in_file=1))
    assert [p.code for p in problems] == ["bat.overlap"]
    assert "BAT entry 4" in problems[0].message and "BAT entry 1" in problems[0].message
    assert "points at the same block" in problems[0].message


def test_overlap_by_one_sector_names_both_offsets():
    second = _sector(1) - 1
    problems = _check(*_image({2: _sector(0), 6: second}, blocks_in_file=2))
    assert [p.code for p in problems] == ["bat.overlap"]
    text = " ".join(p.message for p in problems)
    assert f"{_sector(0) * 512:#x}" in text and f"{second * 512:#x}" in text
    with pytest.raises(CorruptImageError, match="overlaps"):
        raise_for(problems)


def test_entries_past_the_virtual_size_are_a_warning():
    image = _image({0: _sector(0), 6: _sector(1)}, current_size=4 * BS)
    problems = _check(*image)
    assert [(p.code, p.severity) for p in problems] == [("bat.beyond_size", "warning")]
    assert "entry 6" in problems[0].message
    raise_for(problems)


def test_reports_are_capped():
    table = np.zeros(4096, dtype=np.uint32)  # every entry points at sector 0
    header = DynamicHeader.new(4096, BS)
    footer = Footer.new(DISK_DYNAMIC, 4096 * BS)
    problems = validate_bat(table, header, footer, 1536 + 16384, 1 << 30, "disk.vhd")
    assert len(problems) == MAX_REPORTED + 1
    assert f"{4096 - MAX_REPORTED} more" in problems[-1].message


@pytest.mark.peer
def test_qemu_written_image_is_clean(peers, tmp_path):
    path = tmp_path / "q.vhd"
    peers.run("qemu-img", "create", "-f", "vpc", path, "64M")
    writes = ["-c", "write -P 0x5a 0 3M", "-c", "write -P 0x33 40M 1M"]
    peers.run("qemu-io", "-f", "vpc", *writes, path)
    data = path.read_bytes()
    footer = Footer.from_bytes(data[-512:])
    header = DynamicHeader.from_bytes(data[512:1536])
    raw = data[header.table_offset : header.table_offset + 4 * header.max_table_entries]
    table = kernels.bat_decode(raw)
    assert int(np.count_nonzero(table != BAT_UNUSED)) == 3
    end = metadata_end(header)
    assert validate_bat(table, header, footer, end, len(data), path) == []
    info = json.loads(peers.run("qemu-img", "info", "-f", "vpc", "--output=json", path).stdout)
    assert info["virtual-size"] == footer.virtual_size
