"""Geometry: the specification's CHS algorithm, qemu's rounding, the size rule."""

from __future__ import annotations

import json

import pytest

from vhdcore.formats.vhd.constants import MAX_CHS_SECTORS
from vhdcore.formats.vhd.geometry import (
    MAX_GEOMETRY,
    Geometry,
    chs_covering,
    chs_for_sectors,
    size_rule,
    virtual_size,
)

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("sectors", "expected"),
    [
        (0, (0, 4, 17)),
        (2048, (30, 4, 17)),  # 1 MiB
        (64 * MiB // 512, (963, 8, 17)),  # 64 MiB, rounded down by the spec
        (1000 * MiB // 512, (2031, 16, 63)),  # 1000 MiB
        (65535 * 16 * 63 - 1, (65534, 16, 63)),  # last size below the 255-spt switch
        (65535 * 16 * 63, (16191, 16, 255)),  # the switch itself
        (MAX_CHS_SECTORS, (65535, 16, 255)),
        (MAX_CHS_SECTORS * 4, (65535, 16, 255)),  # capped
    ],
)
def test_chs_for_sectors_known_values(sectors, expected):
    assert chs_for_sectors(sectors) == Geometry(*expected)


@pytest.mark.parametrize(
    ("request_bytes", "expected", "size"),
    [
        (1000 * MiB, (2032, 16, 63), 1_048_707_072),  # qemu-img create ... 1000M
        (64 * MiB, (964, 8, 17), 67_125_248),  # qemu-img create ... 64M
        (MAX_CHS_SECTORS * 512 + 512, (65535, 16, 255), MAX_CHS_SECTORS * 512),
    ],
)
def test_chs_covering_matches_qemu_rounding(request_bytes, expected, size):
    geometry = chs_covering(request_bytes // 512)
    assert geometry == Geometry(*expected)
    assert geometry.size == size


def test_chs_never_exceeds_request_and_covering_never_falls_short():
    for sectors in list(range(0, 5000, 7)) + [10**6 + 3, 2 * 10**7 + 11, 10**8 + 1]:
        low = chs_for_sectors(sectors)
        assert low.total_sectors <= sectors
        assert chs_covering(sectors).total_sectors >= sectors


def test_negative_sector_counts_are_refused():
    with pytest.raises(ValueError):
        chs_for_sectors(-1)
    with pytest.raises(ValueError):
        chs_covering(-1)


def test_packing_round_trip_and_properties():
    geometry = Geometry(2032, 16, 63)
    assert geometry.to_int() == 0x07F0103F
    assert Geometry.from_int(0x07F0103F) == geometry
    assert geometry.total_sectors == 2032 * 16 * 63
    assert geometry.size == 1_048_707_072
    assert str(geometry) == "2032/16/63"
    assert not geometry.is_max
    assert MAX_GEOMETRY.is_max and MAX_GEOMETRY.to_int() == 0xFFFF10FF


def test_geometry_fields_are_range_checked():
    with pytest.raises(ValueError):
        Geometry(65536, 16, 63)
    with pytest.raises(ValueError):
        Geometry(1, 256, 63)
    with pytest.raises(ValueError):
        Geometry.from_int(1 << 32)


@pytest.mark.parametrize(
    ("creator", "geometry", "rule"),
    [
        (b"vpc ", Geometry(2032, 16, 63), "chs"),
        (b"qemu", Geometry(2032, 16, 63), "chs"),
        (b"qemu", MAX_GEOMETRY, "current_size"),
        (b"vpc ", MAX_GEOMETRY, "current_size"),
        (b"win ", Geometry(2032, 16, 63), "current_size"),
        (b"qem2", MAX_GEOMETRY, "current_size"),
        (b"tap\0", Geometry(2032, 16, 63), "current_size"),
        (b"d2v ", Geometry(2032, 16, 63), "current_size"),
        (b"wa\0\0", Geometry(2032, 16, 63), "current_size"),
        (b"zzzz", Geometry(2032, 16, 63), "current_size"),  # unknown: the 2025 qemu rule
    ],
)
def test_size_rule_per_creator(creator, geometry, rule):
    assert size_rule(creator, geometry) == rule


class _FakeFooter:
    def __init__(self, creator_app, geometry, current_size):
        self.creator_app = creator_app
        self.geometry = geometry
        self.current_size = current_size


def test_virtual_size_follows_the_rule():
    geometry = Geometry(2032, 16, 63)
    assert virtual_size(_FakeFooter(b"vpc ", geometry, 1_048_576_000)) == (1_048_707_072, "chs")
    assert virtual_size(_FakeFooter(b"win ", geometry, 1_048_576_000)) == (
        1_048_576_000,
        "current_size",
    )


@pytest.mark.peer
@pytest.mark.parametrize("size", ["1M", "64M", "1000M", "10G", "40G"])
def test_qemu_img_geometry_is_chs_covering(peers, tmp_path, size):
    from vhdcore.formats.vhd.footer import Footer
    from vhdcore.sizes import parse_size

    path = tmp_path / "x.vhd"
    peers.run("qemu-img", "create", "-f", "vpc", path, size)
    data = path.read_bytes()
    footer = Footer.from_bytes(data[:512])
    assert footer.geometry == chs_covering(parse_size(size) // 512)
    # qemu's rounded sizes satisfy vhd-util's "geometry <= CHS(size)" rule.
    assert footer.validate(path, len(data) - 512, len(data)) == []
    info = json.loads(peers.run("qemu-img", "info", "-f", "vpc", "--output=json", path).stdout)
    assert virtual_size(footer) == (info["virtual-size"], "chs")
