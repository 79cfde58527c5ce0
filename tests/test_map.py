"""``vhdcore map``: the allocation map of raw and VHD images."""

from __future__ import annotations

import json

import pytest

import vhdcore
from vhdcore.ops.map import allocation_map

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def raw(tmp_path, rng):
    path = tmp_path / "disk.raw"
    with open(path, "wb") as handle:
        handle.truncate(8 * MiB)
        handle.write(rng.bytes(64 * KiB))
        handle.seek(5 * MiB)
        handle.write(rng.bytes(8 * KiB))
    return path


def covers(extents, size):
    position = 0
    for extent in extents:
        assert extent["offset"] == position and extent["length"] > 0
        position += extent["length"]
    assert position == size


def test_raw_map_shows_holes(raw):
    extents = allocation_map(raw)
    covers(extents, 8 * MiB)
    data = [(e["offset"], e["length"]) for e in extents if e["state"] == "data"]
    assert data == [(0, 64 * KiB), (5 * MiB, 8 * KiB)]
    assert all(e["file_offset"] == (e["offset"] if e["state"] == "data" else None) for e in extents)


def test_dynamic_map_points_into_the_file(tmp_path, raw):
    vhd = tmp_path / "disk.vhd"
    vhdcore.convert(raw, vhd)
    extents = allocation_map(vhd)
    covers(extents, 8 * MiB)
    states = [(e["offset"], e["length"], e["state"]) for e in extents]
    assert states == [
        (0, 2 * MiB, "data"),
        (2 * MiB, 2 * MiB, "zero"),
        (4 * MiB, 2 * MiB, "data"),
        (6 * MiB, 2 * MiB, "zero"),
    ]
    source = raw.read_bytes()
    image = vhd.read_bytes()
    for e in extents:
        if e["state"] == "data":
            assert e["file"] == str(vhd) and e["depth"] == 0
            stored = image[e["file_offset"] : e["file_offset"] + e["length"]]
            assert stored == source[e["offset"] : e["offset"] + e["length"]]


def test_chain_map_shows_parent_depth(tmp_path, raw):
    base = tmp_path / "base.vhd"
    vhdcore.convert(raw, base)
    child = tmp_path / "child.vhd"
    with vhdcore.create(child, parent=base) as image:
        image.write(6 * MiB, b"c" * 4096)
    extents = allocation_map(child)
    covers(extents, 8 * MiB)
    by_state = {(e["state"], e["depth"]) for e in extents}
    assert ("parent", 1) in by_state and ("data", 0) in by_state and ("zero", None) in by_state
    parent = [e for e in extents if e["state"] == "parent"]
    assert all(e["file"] == str(base) for e in parent)


def test_map_matches_qemu_for_dynamic(tmp_path, raw, peers):
    vhd = tmp_path / "disk.vhd"
    vhdcore.convert(raw, vhd)
    qemu = json.loads(peers.run("qemu-img", "map", "-f", "vpc", "--output=json", vhd).stdout)
    qemu_data = [(e["start"], e["length"]) for e in qemu if e["data"]]
    ours = [(e["offset"], e["length"]) for e in allocation_map(vhd) if e["state"] == "data"]
    assert ours == qemu_data


def test_cli_text_and_json(tmp_path, raw, cli):
    vhd = tmp_path / "disk.vhd"
    vhdcore.convert(raw, vhd)
    code, out, err = cli("map", vhd)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["Offset", "Length", "State", "Depth"]
    assert len(lines) == 5 and "data" in lines[1] and "zero" in lines[2]
    code, out, err = cli("map", vhd, "--json")
    assert code == 0
    assert json.loads(out) == allocation_map(vhd)


def test_cli_error_is_one_line(tmp_path, cli):
    code, _, err = cli("map", "-f", "vhd", tmp_path / "missing.vhd")
    assert code == 1 and err.count("\n") == 1
