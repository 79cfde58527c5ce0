"""Footer: golden bytes, round trips, checksum, every validation rule, creation."""

from __future__ import annotations

import dataclasses
import json
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
from vhdcore.formats.vhd.constants import (
    DISK_DIFFERENCING,
    DISK_DYNAMIC,
    DISK_FIXED,
    FIXED_DATA_OFFSET,
    MAX_DYNAMIC_SIZE,
    MAX_FIXED_SIZE,
    VHD_EPOCH,
)
from vhdcore.formats.vhd.footer import Footer, footer_offset_for, unix_time, vhd_timestamp
from vhdcore.formats.vhd.geometry import MAX_GEOMETRY, Geometry, chs_for_sectors
from vhdcore.problems import Problem, raise_for

MiB = 1024 * 1024

# The footer of `qemu-img create -f vpc -o subformat=fixed x.vhd 64M` (qemu
# 7.2): 85 meaningful bytes, then 427 zero bytes.
GOLDEN_FIXED = bytes.fromhex(
    "636f6e65637469780000000200010000ffffffffffffffff3299533571656d75"
    "000500035769326b0000000004004000000000000400400003c4081100000002"
    "ffffe6a0bbff2694c45b43d7b3973f756844637300"
) + bytes(427)

NOW = unix_time(0x32995335) + 60  # a minute after the golden timestamp


def _independent_checksum(data: bytes) -> int:
    """The VHD checksum written out longhand, independent of the kernels."""
    return ~(sum(data[:64]) + sum(data[68:])) & 0xFFFFFFFF


def test_golden_fixed_footer_fields():
    footer = Footer.from_bytes(GOLDEN_FIXED)
    assert footer.cookie == b"conectix"
    assert footer.features == 2
    assert footer.format_version == 0x00010000
    assert footer.data_offset == FIXED_DATA_OFFSET
    assert footer.timestamp == 0x32995335
    assert footer.creator_app == b"qemu"
    assert footer.creator_version == 0x00050003
    assert footer.creator_os == b"Wi2k"
    assert footer.original_size == footer.current_size == 67_125_248
    assert footer.geometry == Geometry(964, 8, 17)
    assert footer.disk_type == DISK_FIXED
    assert footer.checksum == 0xFFFFE6A0 == _independent_checksum(GOLDEN_FIXED)
    assert footer.uuid == uuid.UUID("bbff2694-c45b-43d7-b397-3f7568446373")
    assert footer.saved_state == 0 and footer.hidden == 0
    assert footer.virtual_size == 67_125_248 and footer.size_rule == "chs"
    assert footer.type_name == "fixed"


def test_round_trip_is_byte_identical():
    footer = Footer.from_bytes(GOLDEN_FIXED)
    assert footer.to_bytes() == GOLDEN_FIXED
    assert footer.computed_checksum == footer.checksum
    assert Footer.from_bytes(bytearray(GOLDEN_FIXED)) == footer
    assert Footer.from_bytes(memoryview(GOLDEN_FIXED)) == footer


def test_to_bytes_recomputes_the_checksum():
    footer = dataclasses.replace(Footer.from_bytes(GOLDEN_FIXED), current_size=1 * MiB, checksum=0)
    data = footer.to_bytes()
    assert int.from_bytes(data[64:68], "big") == _independent_checksum(data)
    problems = Footer.from_bytes(data).validate(now=NOW, file_size=MiB + 512)
    assert "footer.checksum" not in [p.code for p in problems]


def test_legacy_511_byte_footer_is_padded():
    footer = Footer.from_bytes(GOLDEN_FIXED[:511])
    assert footer == Footer.from_bytes(GOLDEN_FIXED)
    assert len(footer.to_bytes()) == 512


@pytest.mark.parametrize("length", [0, 510, 513, 1024])
def test_wrong_length_is_a_format_error(length):
    with pytest.raises(FormatError, match="512"):
        Footer.from_bytes(bytes(length))


def test_footer_offset_for():
    assert footer_offset_for(MiB + 512) == MiB
    assert footer_offset_for(MiB + 511) == MiB


def test_timestamp_helpers():
    assert VHD_EPOCH == 946_684_800
    assert vhd_timestamp(VHD_EPOCH) == 0
    assert vhd_timestamp(VHD_EPOCH + 12.9) == 12
    assert unix_time(12) == VHD_EPOCH + 12
    assert vhd_timestamp(0) == 0  # before the epoch: clamped
    assert vhd_timestamp(VHD_EPOCH + 2**40) == 0xFFFFFFFF


# -- creation ------------------------------------------------------------


def test_new_uses_hyper_v_identity_and_the_exact_size():
    footer = Footer.new(DISK_DYNAMIC, 1000 * MiB, timestamp=5)
    assert footer.creator_app == b"win "
    assert footer.creator_version == 0x000A0000
    assert footer.creator_os == b"Wi2k"
    assert footer.current_size == footer.original_size == 1000 * MiB
    assert footer.geometry == chs_for_sectors(1000 * MiB // 512)
    assert footer.virtual_size == 1000 * MiB and footer.size_rule == "current_size"
    assert footer.data_offset == 512
    assert footer.features == 2 and footer.format_version == 0x00010000
    assert footer.timestamp == 5
    assert footer.uuid.int != 0
    assert footer.checksum == footer.computed_checksum
    assert footer.reserved == bytes(427)


def test_new_defaults():
    fixed = Footer.new(DISK_FIXED, 1000)
    assert fixed.current_size == 1024  # rounded up to a sector
    assert fixed.data_offset == FIXED_DATA_OFFSET
    assert abs(unix_time(fixed.timestamp) - __import__("time").time()) < 5
    assert Footer.new(DISK_FIXED, 512).uuid != Footer.new(DISK_FIXED, 512).uuid
    given = uuid.UUID(int=7)
    assert Footer.new(DISK_DIFFERENCING, 512, uuid=given).uuid == given


def test_new_refuses_bad_requests():
    with pytest.raises(ValueError):
        Footer.new(5, MiB)
    with pytest.raises(ValueError):
        Footer.new(DISK_FIXED, -512)
    with pytest.raises(LimitError, match=str(MAX_DYNAMIC_SIZE)):
        Footer.new(DISK_DYNAMIC, MAX_DYNAMIC_SIZE + 512)
    assert Footer.new(DISK_DYNAMIC, MAX_DYNAMIC_SIZE).current_size == MAX_DYNAMIC_SIZE
    with pytest.raises(LimitError):
        Footer.new(DISK_FIXED, MAX_FIXED_SIZE + 512)
    assert Footer.new(DISK_FIXED, 4 * 1024**4).current_size == 4 * 1024**4


@pytest.mark.parametrize("disk_type", [DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING])
def test_new_footers_validate_clean(disk_type):
    footer = Footer.new(disk_type, 64 * MiB)
    file_size = 64 * MiB + 512 if disk_type == DISK_FIXED else 3 * 512 + 512 + 512
    assert footer.validate("new.vhd", file_size - 512, file_size) == []


# -- validation ----------------------------------------------------------

DYN_FILE = 512 + 1024 + 512 + 512  # copy, header, BAT sector, footer


def _dynamic(**changes) -> Footer:
    base = Footer.new(DISK_DYNAMIC, 64 * MiB, timestamp=0x32995335, uuid=uuid.UUID(int=1))
    return dataclasses.replace(base, **changes).with_checksum()


def _fixed(**changes) -> Footer:
    base = Footer.new(DISK_FIXED, MiB, timestamp=0x32995335, uuid=uuid.UUID(int=1))
    return dataclasses.replace(base, **changes).with_checksum()


def _codes(problems):
    return [p.code for p in problems]


def _only(problems, code) -> Problem:
    matching = [p for p in problems if p.code == code]
    assert matching, f"no {code} in {_codes(problems)}"
    return matching[0]


# (footer, file_size, code, severity, error class)
RULES = [
    ("cookie", _dynamic(cookie=b"conectiy"), DYN_FILE, "footer.cookie", "error", FormatError),
    ("features-reserved", _dynamic(features=0), DYN_FILE, "footer.features_reserved", "warning", None),
    ("features-unknown", _dynamic(features=6), DYN_FILE, "footer.features_unknown", "error", UnsupportedError),
    ("version-major", _dynamic(format_version=0x00020000), DYN_FILE, "footer.version", "error", UnsupportedError),
    ("version-minor", _dynamic(format_version=0x00010001), DYN_FILE, "footer.version", "warning", None),
    ("fixed-data-offset", _fixed(data_offset=0), MiB + 512, "footer.data_offset", "warning", None),
    ("dyn-data-offset-zero", _dynamic(data_offset=0), DYN_FILE, "footer.data_offset", "error", CorruptImageError),
    ("dyn-data-offset-misaligned", _dynamic(data_offset=513), DYN_FILE, "footer.data_offset", "error", CorruptImageError),
    ("dyn-data-offset-past-file", _dynamic(data_offset=1536), DYN_FILE, "footer.data_offset", "error", CorruptImageError),
    ("timestamp-future", _dynamic(timestamp=0x32995335 + 3600), DYN_FILE, "footer.timestamp", "warning", None),
    ("disk-type-reserved", _dynamic(disk_type=1), DYN_FILE, "footer.disk_type", "error", UnsupportedError),
    ("disk-type-none", _dynamic(disk_type=0), DYN_FILE, "footer.disk_type", "error", UnsupportedError),
    ("disk-type-garbage", _dynamic(disk_type=77), DYN_FILE, "footer.disk_type", "error", FormatError),
    ("geometry-max", _dynamic(geometry=MAX_GEOMETRY, creator_app=b"qem2"), DYN_FILE, "footer.geometry", "warning", None),
    ("geometry-large", _dynamic(geometry=Geometry(2000, 16, 63)), DYN_FILE, "footer.geometry", "warning", None),
    ("chs-size", _dynamic(creator_app=b"vpc "), DYN_FILE, "footer.chs_size", "warning", None),
    ("size-unaligned", _dynamic(current_size=64 * MiB + 1), DYN_FILE, "footer.current_size", "error", CorruptImageError),
    ("size-dynamic-limit", _dynamic(current_size=MAX_DYNAMIC_SIZE + 512), DYN_FILE, "footer.size_limit", "error", LimitError),
    ("size-fixed-limit", _fixed(current_size=MAX_FIXED_SIZE + 512), MAX_FIXED_SIZE + 1024, "footer.size_limit", "error", LimitError),
    ("size-fixed-compat", _fixed(current_size=MAX_DYNAMIC_SIZE + 512), MAX_DYNAMIC_SIZE + 1024, "footer.size_compat", "warning", None),
    ("fixed-file-short", _fixed(), MiB, "footer.file_size", "error", CorruptImageError),
    ("fixed-file-long", _fixed(), MiB + 1024, "footer.file_size", "error", CorruptImageError),
    ("dyn-file-unaligned", _dynamic(), DYN_FILE + 100, "footer.file_size", "error", CorruptImageError),
    ("saved-state", _dynamic(saved_state=2), DYN_FILE, "footer.saved_state", "warning", None),
    ("hidden", _dynamic(reserved=b"\x02" + bytes(426)), DYN_FILE, "footer.hidden", "warning", None),
    ("reserved", _dynamic(reserved=bytes(100) + b"\x01" + bytes(326)), DYN_FILE, "footer.reserved", "warning", None),
    ("uuid-null", _dynamic(uuid=uuid.UUID(int=0)), DYN_FILE, "footer.uuid", "warning", None),
]


@pytest.mark.parametrize(
    ("footer", "file_size", "code", "severity", "error"),
    [rule[1:] for rule in RULES],
    ids=[rule[0] for rule in RULES],
)
def test_each_rule(footer, file_size, code, severity, error):
    problems = footer.validate("disk.vhd", max(file_size - 512, 0), file_size, now=NOW)
    problem = _only(problems, code)
    assert problem.severity == severity
    assert problem.message.startswith("disk.vhd: footer ")
    assert problem.offset is not None
    if severity == "error":
        assert problem.error is error
        with pytest.raises(error):
            raise_for([problem])
        with pytest.raises(VHDError):
            raise_for(problems)
    else:
        raise_for([problem])  # warnings never raise


def test_bases_are_clean():
    assert _dynamic().validate("d.vhd", DYN_FILE - 512, DYN_FILE, now=NOW) == []
    assert _fixed().validate("f.vhd", MiB, MiB + 512, now=NOW) == []
    assert _fixed().validate("f.vhd", MiB, MiB + 511, now=NOW) == []  # legacy footer


def test_bad_cookie_is_reported_alone():
    footer = _dynamic(cookie=b"\0" * 8, disk_type=99, features=0)
    assert _codes(footer.validate("x.vhd", 0, DYN_FILE, now=NOW)) == ["footer.cookie"]


def test_checksum_message_names_everything():
    good = Footer.from_bytes(GOLDEN_FIXED)
    damaged = dataclasses.replace(good, checksum=good.checksum - 1)
    problems = damaged.validate("disk.vhd", 0x1FFE00, now=NOW)
    problem = _only(problems, "footer.checksum")
    assert problem.message == (
        f"disk.vhd: footer checksum mismatch at 0x1ffe00: "
        f"stored {good.checksum - 1:#010x}, computed {good.checksum:#010x}"
    )
    assert problem.offset == 0x1FFE00
    with pytest.raises(ChecksumError, match="footer checksum mismatch"):
        raise_for(problems)


def test_flipped_byte_breaks_the_checksum():
    data = bytearray(GOLDEN_FIXED)
    data[40] ^= 0x01  # original size
    problems = Footer.from_bytes(bytes(data)).validate("f.vhd", now=NOW)
    assert _codes(problems) == ["footer.checksum"]


def test_blktap_hidden_checksum_quirk_is_a_warning():
    good = _dynamic(creator_app=b"tap\0")
    hidden = dataclasses.replace(good, reserved=b"\x01" + bytes(426))  # checksum kept
    problems = hidden.validate("t.vhd", 0, DYN_FILE, now=NOW)
    assert _codes(problems) == ["footer.checksum_hidden"]
    raise_for(problems)


def test_timestamp_within_slack_is_fine():
    footer = _dynamic(timestamp=0x32995335 + 29 * 60)
    assert footer.validate("d.vhd", 0, DYN_FILE, now=unix_time(0x32995335)) == []


def test_validate_without_file_size_skips_placement():
    assert _fixed().validate(now=NOW) == []
    assert "<image>" in _dynamic(data_offset=0).validate(now=NOW)[0].message


def test_unknown_disk_type_skips_type_rules():
    problems = _dynamic(disk_type=77, data_offset=0).validate("d.vhd", 0, DYN_FILE, now=NOW)
    assert _codes(problems) == ["footer.disk_type"]


# -- peers ---------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_qemu_created_footer_parses_and_validates(peers, tmp_path, subformat):
    path = tmp_path / "q.vhd"
    peers.run("qemu-img", "create", "-f", "vpc", "-o", f"subformat={subformat}", path, "64M")
    data = path.read_bytes()
    footer = Footer.from_bytes(data[-512:])
    info = json.loads(peers.run("qemu-img", "info", "-f", "vpc", "--output=json", path).stdout)
    assert footer.virtual_size == info["virtual-size"]
    assert footer.disk_type == (DISK_FIXED if subformat == "fixed" else DISK_DYNAMIC)
    assert footer.creator_app == b"qemu"
    assert footer.to_bytes() == data[-512:]
    assert footer.validate(path, len(data) - 512, len(data)) == []
    if subformat == "dynamic":
        assert data[:512] == data[-512:]


@pytest.mark.peer
def test_qemu_force_size_footer_gets_the_geometry_warning(peers, tmp_path):
    path = tmp_path / "q.vhd"
    peers.run("qemu-img", "create", "-f", "vpc", "-o", "force_size=on", path, "1000M")
    data = path.read_bytes()
    footer = Footer.from_bytes(data[-512:])
    assert footer.creator_app == b"qem2" and footer.geometry.is_max
    assert footer.virtual_size == 1000 * MiB
    problems = footer.validate(path, len(data) - 512, len(data))
    assert _codes(problems) == ["footer.geometry"]


@pytest.mark.peer
@pytest.mark.parametrize("size", [1000 * MiB, 64 * MiB + 512])
def test_peers_read_the_exact_size_of_a_new_footer(peers, tmp_path, size):
    path = tmp_path / "ours.vhd"
    footer = Footer.new(DISK_FIXED, size)
    with open(path, "wb") as handle:
        handle.truncate(size)
        handle.seek(size)
        handle.write(footer.to_bytes())
    info = json.loads(peers.run("qemu-img", "info", "-f", "vpc", "--output=json", path).stdout)
    assert info["virtual-size"] == size
    out = peers.run("vhdiinfo", path).stdout
    assert f"({size} bytes)" in out


def test_random_footers_never_crash_validate(rng):
    for _ in range(200):
        data = bytearray(rng.integers(0, 256, 512, dtype=np.uint8).tobytes())
        data[:8] = b"conectix"
        data[60:64] = int(rng.integers(0, 6)).to_bytes(4, "big")
        footer = Footer.from_bytes(bytes(data))
        size = int(rng.integers(0, 1 << 40))
        for problem in footer.validate("r.vhd", max(size - 512, 0), size, now=NOW):
            assert isinstance(problem, Problem)
            assert issubclass(problem.error, VHDError)
