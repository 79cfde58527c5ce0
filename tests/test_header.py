"""Dynamic header and parent locator entries: golden bytes, round trips, rules."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest

from vhdcore.errors import (
    ChecksumError,
    CorruptImageError,
    FormatError,
    LimitError,
    UnsupportedError,
    VHDError,
)
from vhdcore.formats.vhd.constants import DISK_DIFFERENCING, DISK_DYNAMIC, MAX_BLOCK_SIZE
from vhdcore.formats.vhd.header import (
    DynamicHeader,
    ParentLocator,
    decode_parent_name,
    encode_parent_name,
)
from vhdcore.problems import raise_for

MiB = 1024 * 1024

# The header of `qemu-img create -f vpc x.vhd 64M` (qemu 7.2): 64 meaningful
# bytes, then zeros (no parent, no locators).
GOLDEN_DYNAMIC = bytes.fromhex(
    "6378737061727365ffffffffffffffff0000000000000600000100000000002100200000fffff456"
    "000000000000000000000000000000000000000000000000"
) + bytes(960)


def _independent_checksum(data: bytes) -> int:
    return ~(sum(data[:36]) + sum(data[40:])) & 0xFFFFFFFF


def test_golden_dynamic_header_fields():
    header = DynamicHeader.from_bytes(GOLDEN_DYNAMIC)
    assert header.cookie == b"cxsparse"
    assert header.data_offset == 0xFFFFFFFFFFFFFFFF
    assert header.table_offset == 1536
    assert header.header_version == 0x00010000
    assert header.max_table_entries == 33
    assert header.block_size == 2 * MiB
    assert header.checksum == 0xFFFFF456 == _independent_checksum(GOLDEN_DYNAMIC)
    assert header.parent_uuid.int == 0 and header.parent_timestamp == 0
    assert header.parent_name == ""
    assert all(loc.is_unused and loc.is_all_zero for loc in header.locators)
    assert len(header.locators) == 8
    assert header.bitmap_bytes == 512
    assert header.sectors_per_block == 4096
    assert header.table_bytes == 512 and header.table_end == 2048
    assert header.used_locators == []


def test_round_trip_and_checksum():
    header = DynamicHeader.from_bytes(GOLDEN_DYNAMIC)
    assert header.to_bytes() == GOLDEN_DYNAMIC
    assert header.computed_checksum == header.checksum
    changed = dataclasses.replace(header, max_table_entries=64)
    data = changed.to_bytes()
    assert int.from_bytes(data[36:40], "big") == _independent_checksum(data)
    assert DynamicHeader.from_bytes(data).max_table_entries == 64


@pytest.mark.parametrize("length", [0, 512, 1023, 1025])
def test_wrong_length_is_a_format_error(length):
    with pytest.raises(FormatError, match="1024"):
        DynamicHeader.from_bytes(bytes(length))


# -- parent locator entries ----------------------------------------------


def test_locator_entry_round_trip_and_units():
    raw = b"W2ru" + (1).to_bytes(4, "big") + (24).to_bytes(4, "big") + bytes(4) + (0x1000).to_bytes(8, "big")
    loc = ParentLocator.from_bytes(raw)
    assert loc == ParentLocator(b"W2ru", 1, 24, 0, 0x1000)
    assert loc.to_bytes() == raw
    assert loc.space_bytes == 512  # < 512: sectors (the specification)
    assert ParentLocator(b"W2ru", 512, 24, 0, 0x1000).space_bytes == 512  # blktap: bytes
    assert ParentLocator(b"W2ru", 1024, 24, 0, 0x1000).data_end == 0x1400
    assert not loc.is_unused and loc.code_name == "W2ru"
    assert ParentLocator.unused().is_unused and ParentLocator.unused().is_all_zero
    with pytest.raises(FormatError):
        ParentLocator.from_bytes(bytes(23))


# -- parent names --------------------------------------------------------


@pytest.mark.parametrize("name", ["parent.vhd", "père €.vhd", "disk 𝄞 name.vhd", ""])
def test_parent_name_round_trip(name):
    raw = encode_parent_name(name)
    assert len(raw) == 512
    assert decode_parent_name(raw) == name
    assert DynamicHeader.new(1, 2 * MiB, parent_name=name).parent_name == name


def test_parent_name_is_big_endian():
    assert encode_parent_name("AB")[:6] == b"\0A\0B\0\0"


def test_parent_name_truncates_without_splitting_a_pair():
    assert decode_parent_name(encode_parent_name("x" * 300)) == "x" * 256
    name = "x" * 255 + "𝄞"  # the pair would need units 256 and 257
    assert decode_parent_name(encode_parent_name(name)) == "x" * 255


def test_parent_name_refuses_nul_and_lone_surrogates():
    with pytest.raises(ValueError):
        encode_parent_name("a\0b")
    with pytest.raises(ValueError):
        encode_parent_name("a\ud800b")


def test_undecodable_parent_name_is_replaced_not_raised():
    raw = "ab".encode("utf-16-be") + b"\xd8\x00" + "c".encode("utf-16-be")
    assert decode_parent_name(raw.ljust(512, b"\0")) == "ab\ufffdc"


# -- creation ------------------------------------------------------------


def test_new_dynamic_header():
    header = DynamicHeader.new(33, 2 * MiB)
    assert header.to_bytes()[:36] == GOLDEN_DYNAMIC[:36]
    assert header.to_bytes() == GOLDEN_DYNAMIC
    assert header.validate("d.vhd", 512, 512 * 5, DISK_DYNAMIC, 64 * MiB) == []


def test_new_differencing_header():
    parent = uuid.UUID(int=0x1234)
    locs = [ParentLocator(b"W2ru", 512, 24, 0, 2048)]
    header = DynamicHeader.new(
        4, 2 * MiB, table_offset=1536, parent_uuid=parent, parent_timestamp=99,
        parent_name="base.vhd", locators=locs,
    )
    assert header.parent_uuid == parent and header.parent_timestamp == 99
    assert header.locators[0] == locs[0] and header.locators[1:] == (ParentLocator.unused(),) * 7
    assert header.used_locators == [(0, locs[0])]
    assert header.checksum == header.computed_checksum


@pytest.mark.parametrize(
    "kwargs",
    [
        {"block_size": 3 * MiB},
        {"block_size": 256},
        {"block_size": MAX_BLOCK_SIZE * 2},
        {"table_offset": 1000},
        {"table_offset": 0},
        {"max_table_entries": 1 << 32},
        {"locators": [ParentLocator.unused()] * 9},
    ],
)
def test_new_refuses_bad_arguments(kwargs):
    args = {"max_table_entries": 4, "block_size": 2 * MiB, **kwargs}
    with pytest.raises(ValueError):
        DynamicHeader.new(**args)


# -- validation ----------------------------------------------------------

FILE = 512 + 1024 + 512 + 3 * 512 + 512  # copy, header, BAT, locator space, footer
SIZE = 8 * MiB  # four 2 MiB blocks


def _dynamic(**changes) -> DynamicHeader:
    return dataclasses.replace(DynamicHeader.new(4, 2 * MiB), **changes).with_checksum()


def _good_locators():
    return [
        ParentLocator(b"W2ru", 1, 24, 0, 2048),
        ParentLocator(b"W2ku", 512, 40, 0, 2560),
        ParentLocator(b"MacX", 1, 30, 0, 3072),
    ]


def _differencing(locators=None, **changes) -> DynamicHeader:
    header = DynamicHeader.new(
        4, 2 * MiB, parent_uuid=uuid.UUID(int=5), parent_timestamp=7,
        parent_name="base.vhd", locators=_good_locators() if locators is None else locators,
    )
    return dataclasses.replace(header, **changes).with_checksum()


def _with_locator(index, locator):
    locs = _good_locators() + [ParentLocator.unused()] * 5
    locs[index] = locator
    return _differencing(locators=locs)


def _codes(problems):
    return [p.code for p in problems]


D, V = DISK_DYNAMIC, DISK_DIFFERENCING
RULES = [
    ("cookie", _dynamic(cookie=b"cxsparsE"), D, "header.cookie", "error", FormatError),
    ("version-major", _dynamic(header_version=0x00020000), D, "header.version", "error", UnsupportedError),
    ("version-minor", _dynamic(header_version=0x00010001), D, "header.version", "warning", None),
    ("data-offset-32", _dynamic(data_offset=0xFFFFFFFF), D, "header.data_offset", "warning", None),
    ("data-offset-other", _dynamic(data_offset=0), D, "header.data_offset", "error", CorruptImageError),
    ("block-size-zero", _dynamic(block_size=0), D, "header.block_size", "error", CorruptImageError),
    ("block-size-128", _dynamic(block_size=128), D, "header.block_size", "error", CorruptImageError),
    ("block-size-odd", _dynamic(block_size=0x12345678), D, "header.block_size", "error", CorruptImageError),
    ("block-size-huge", _dynamic(block_size=MAX_BLOCK_SIZE * 2), D, "header.block_size", "error", LimitError),
    ("table-misaligned", _dynamic(table_offset=1537), D, "header.table_offset", "error", CorruptImageError),
    ("table-over-header", _dynamic(table_offset=1024), D, "header.table_offset", "error", CorruptImageError),
    ("table-over-copy", _dynamic(table_offset=0), D, "header.table_offset", "error", CorruptImageError),
    ("table-too-small", _dynamic(max_table_entries=3), D, "header.max_table_entries", "error", CorruptImageError),
    ("table-past-file", _dynamic(max_table_entries=0xFFFFFFFF), D, "header.table_size", "error", CorruptImageError),
    ("table-offset-past-file", _dynamic(table_offset=FILE), D, "header.table_size", "error", CorruptImageError),
    ("reserved1", _dynamic(reserved1=1), D, "header.reserved", "warning", None),
    ("reserved2", _dynamic(reserved2=bytes(255) + b"\x01"), D, "header.reserved", "warning", None),
    ("parent-on-dynamic", _differencing(), D, "header.parent_fields", "warning", None),
    ("parent-uuid-null", _differencing(parent_uuid=uuid.UUID(int=0)), V, "header.parent_uuid", "error", UnsupportedError),
    ("no-parent-at-all", _differencing(locators=[], parent_name_raw=bytes(512)), V, "header.parent_name", "error", CorruptImageError),
    ("locator-code", _with_locator(3, ParentLocator(b"ABCD", 1, 4, 0, 3584)), V, "locator.code", "error", CorruptImageError),
    ("locator-unused-nonzero", _with_locator(3, ParentLocator(b"\0\0\0\0", 1, 0, 0, 0)), V, "locator.unused_nonzero", "warning", None),
    ("locator-duplicate", _with_locator(3, ParentLocator(b"W2ru", 1, 24, 0, 3584)), V, "locator.duplicate", "warning", None),
    ("locator-zero-length", _with_locator(0, ParentLocator(b"W2ru", 1, 0, 0, 2048)), V, "locator.fields", "error", CorruptImageError),
    ("locator-zero-offset", _with_locator(0, ParentLocator(b"W2ru", 1, 24, 0, 0)), V, "locator.fields", "error", CorruptImageError),
    ("locator-space-units", _with_locator(0, ParentLocator(b"W2ru", 700, 24, 0, 2048)), V, "locator.space", "error", CorruptImageError),
    ("locator-length", _with_locator(0, ParentLocator(b"W2ru", 1, 513, 0, 2048)), V, "locator.length", "error", CorruptImageError),
    ("locator-over-header", _with_locator(0, ParentLocator(b"W2ru", 1, 24, 0, 1024)), V, "locator.offset", "error", CorruptImageError),
    ("locator-over-bat", _with_locator(0, ParentLocator(b"W2ru", 1, 24, 0, 1536)), V, "locator.offset", "error", CorruptImageError),
    ("locator-past-footer", _with_locator(0, ParentLocator(b"W2ru", 2, 24, 0, 3584)), V, "locator.offset", "error", CorruptImageError),
]


@pytest.mark.parametrize(
    ("header", "disk_type", "code", "severity", "error"),
    [rule[1:] for rule in RULES],
    ids=[rule[0] for rule in RULES],
)
def test_each_rule(header, disk_type, code, severity, error):
    problems = header.validate("disk.vhd", 512, FILE, disk_type, SIZE)
    matching = [p for p in problems if p.code == code]
    assert matching, f"no {code} in {_codes(problems)}"
    problem = matching[0]
    assert problem.severity == severity
    assert problem.message.startswith("disk.vhd: ")
    assert problem.offset is not None
    if severity == "error":
        assert problem.error is error
        with pytest.raises(error):
            raise_for([problem])
        with pytest.raises(VHDError):
            raise_for(problems)
    else:
        raise_for([problem])


def test_bases_are_clean():
    assert _dynamic().validate("d.vhd", 512, FILE, D, SIZE) == []
    assert _differencing().validate("c.vhd", 512, FILE, V, SIZE) == []
    # 512-byte blocks are the smallest qemu accepts.
    small = dataclasses.replace(_dynamic(), block_size=512, max_table_entries=16).with_checksum()
    assert small.validate("s.vhd", 512, 512 * 6, D, 16 * 512) == []


def test_checksum_rule():
    good = _dynamic()
    bad = dataclasses.replace(good, checksum=good.checksum ^ 1)
    problems = bad.validate("disk.vhd", 512, FILE, D, SIZE)
    assert _codes(problems) == ["header.checksum"]
    assert problems[0].message == (
        f"disk.vhd: dynamic header checksum mismatch at 0x200: "
        f"stored {good.checksum ^ 1:#010x}, computed {good.checksum:#010x}"
    )
    with pytest.raises(ChecksumError):
        raise_for(problems)


def test_bad_cookie_is_reported_alone():
    header = _dynamic(cookie=bytes(8), block_size=3, max_table_entries=0xFFFFFFFF)
    assert _codes(header.validate("d.vhd", 512, FILE, D, SIZE)) == ["header.cookie"]


def test_table_bound_names_what_fits():
    problems = _dynamic(max_table_entries=0xFFFFFFFF).validate("d.vhd", 512, FILE, D, SIZE)
    message = next(p.message for p in problems if p.code == "header.table_size")
    assert "4294967295 entries" in message and "at most" in message


def test_max_table_entries_uses_ceiling():
    header = _dynamic(max_table_entries=4)
    assert header.validate("d.vhd", 512, FILE, D, 8 * MiB) == []
    codes = _codes(header.validate("d.vhd", 512, FILE, D, 8 * MiB + 512))
    assert codes == ["header.max_table_entries"]


def test_validate_without_file_size_skips_bounds():
    assert _dynamic(max_table_entries=0xFFFFFFFF).validate(disk_type=D, current_size=SIZE) == []


def test_stray_locators_on_a_dynamic_disk_are_one_warning():
    problems = _differencing().validate("d.vhd", 512, FILE, D, SIZE)
    assert _codes(problems) == ["header.parent_fields"]
    assert "parent UUID" in problems[0].message and "parent locators" in problems[0].message


@pytest.mark.peer
def test_qemu_created_header(peers, tmp_path):
    path = tmp_path / "q.vhd"
    peers.run("qemu-img", "create", "-f", "vpc", path, "64M")
    data = path.read_bytes()
    header = DynamicHeader.from_bytes(data[512:1536])
    assert header.to_bytes() == data[512:1536]
    assert (header.table_offset, header.max_table_entries, header.block_size) == (1536, 33, 2 * MiB)
    assert header.validate(path, 512, len(data), DISK_DYNAMIC, 67_125_248) == []


def test_random_headers_never_crash_validate(rng):
    for _ in range(200):
        data = bytearray(rng.integers(0, 256, 1024, dtype=np.uint8).tobytes())
        data[:8] = b"cxsparse"
        if rng.integers(0, 2):
            data[32:36] = (2 * MiB).to_bytes(4, "big")  # reach the table rules
        header = DynamicHeader.from_bytes(bytes(data))
        assert header.to_bytes()[:36] == bytes(data[:36])
        size = int(rng.integers(0, 1 << 40))
        for disk_type in (DISK_DYNAMIC, DISK_DIFFERENCING):
            for problem in header.validate("r.vhd", 512, size, disk_type, size // 2):
                assert issubclass(problem.error, VHDError)
        _ = header.parent_name  # never raises
