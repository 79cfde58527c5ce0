"""--xen: images blktap (Xen, XCP-ng) takes for its own, laid out as blktap lays them out.

The expected layouts are computed here from blktap's rules (vhd/lib/libvhd.c),
independently of vhdcore.xen: ``vhd_initialize_footer`` (creator "tap", 1.3,
host OS 0), ``vhd_create_batmap`` (header after the padded BAT, the map in
the next ``max(1, ceil(ceil(entries / 8) / 512))`` sectors, version 1.2,
checksum ``~sum(map)``), ``vhd_write_parent_locators`` (after the map) and
``__vhd_io_allocate_block`` (a block's data on a 4 KiB page).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import uuid as uuid_module

import numpy as np
import pytest

import vhdcore
from vhdcore import errors
from vhdcore.formats.vhd.check import check
from vhdcore.formats.vhd.snapshot import snapshot
from vhdcore.ops.convert import convert

MiB = 1 << 20
BLOCK = 2 * MiB
SPB = BLOCK // 512  # sectors per block
UNUSED = 0xFFFFFFFF


def _ceil(a, b):
    return -(-a // b)


def blktap_metadata(size, locator_bytes=0):
    """(entries, batmap header offset, map offset, map sectors, end of metadata)."""
    entries = _ceil(size, BLOCK)
    bat_end = 1536 + _ceil(entries * 4, 512) * 512
    map_sectors = max(1, _ceil(_ceil(entries, 8), 512))
    map_at = bat_end + 512
    return entries, bat_end, map_at, map_sectors, map_at + map_sectors * 512 + locator_bytes


def blktap_block_positions(end_of_metadata, count):
    """Byte offsets of ``count`` blocks allocated one after another, blktap's way."""
    positions = []
    sector = end_of_metadata // 512
    for _ in range(count):
        if (sector + 1) % 8:
            sector += 8 - (sector + 1) % 8
        positions.append(sector * 512)
        sector += 1 + SPB
    return positions, sector * 512


def read_at(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def footer_fields(path):
    raw = read_at(path, os.path.getsize(path) - 512, 512)
    return raw, raw[28:32], struct.unpack(">I", raw[32:36])[0], raw[36:40]


def bat_of(path, entries):
    return list(struct.unpack(f">{entries}I", read_at(path, 1536, entries * 4)))


def batmap_of(path, header_at):
    header = read_at(path, header_at, 512)
    cookie, offset, sectors, version, checksum = struct.unpack(">8sQIII", header[:28])
    data = read_at(path, offset, sectors * 512)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    return {
        "cookie": cookie, "offset": offset, "sectors": sectors, "version": version,
        "checksum": checksum, "computed": ~sum(data) & 0xFFFFFFFF,
        "full": set(np.flatnonzero(bits).tolist()), "rest_zero": header[28:] == bytes(484),
    }


def assert_tap_footer(path):
    raw, app, version, host = footer_fields(path)
    assert (app, version, host) == (b"tap\0", 0x00010003, b"\0\0\0\0")
    return raw


def assert_peers_accept(peers, path, size, raw=None):
    info = json.loads(peers.run("qemu-img", "info", "-f", "vpc", "--output=json", path).stdout)
    assert info["virtual-size"] == size
    peers.run("vhdiinfo", path)
    if raw is not None:
        peers.run("qemu-img", "compare", "-f", "vpc", "-F", "raw", path, raw)


# --- create -----------------------------------------------------------------


@pytest.mark.parametrize("size", [20 * MiB, 1 << 30, 8194 * MiB, 2040 << 30])
def test_create_xen_has_blktaps_footer_and_batmap(tmp_path, cli, peers, size):
    path = tmp_path / "x.vhd"
    code, _out, err = cli("create", "--xen", path, str(size))
    assert code == 0, err
    raw = assert_tap_footer(path)
    assert read_at(path, 0, 512) == raw  # the copy
    entries, header_at, map_at, sectors, end = blktap_metadata(size)
    assert struct.unpack(">Q", read_at(path, 512 + 16, 8))[0] == 1536
    assert struct.unpack(">II", read_at(path, 512 + 28, 8)) == (entries, BLOCK)
    batmap = batmap_of(path, header_at)
    assert batmap["cookie"] == b"tdbatmap" and batmap["rest_zero"]
    assert (batmap["offset"], batmap["sectors"]) == (map_at, sectors)
    assert batmap["version"] == 0x00010002
    assert batmap["checksum"] == batmap["computed"] and not batmap["full"]
    assert os.path.getsize(path) == end + 512  # the footer right after the map
    # vhd_create_bat zeroes the table's last sector beyond the entries.
    assert read_at(path, 1536 + entries * 4, header_at - 1536 - entries * 4) == bytes(
        header_at - 1536 - entries * 4
    )
    assert check(path).exit_code == 0
    assert_peers_accept(peers, path, size)


def test_create_xen_rounds_to_whole_blocks_but_a_snapshot_keeps_its_parents_size(tmp_path):
    with vhdcore.create(tmp_path / "x.vhd", 21 * MiB, xen=True) as image:
        assert image.virtual_size == 22 * MiB
        assert any("a whole 2 MiB block" in note for note in image.notes)
    parent = tmp_path / "odd.vhd"
    vhdcore.create(parent, 21 * MiB).close()
    with vhdcore.create(tmp_path / "c.vhd", parent=parent, xen=True) as child:
        assert child.virtual_size == 21 * MiB  # as vhd_snapshot keeps it


def test_create_xen_fixed_is_tap_without_batmap(tmp_path, peers):
    path = tmp_path / "f.vhd"
    vhdcore.create(path, 4 * MiB, type="fixed", xen=True).close()
    assert_tap_footer(path)
    assert os.path.getsize(path) == 4 * MiB + 512
    with vhdcore.open(path) as image:
        assert image.creator == "tap\0"
    assert check(path).exit_code == 0
    assert_peers_accept(peers, path, 4 * MiB)


def test_without_xen_nothing_changes(tmp_path):
    path = tmp_path / "plain.vhd"
    vhdcore.create(path, 20 * MiB).close()
    _raw, app, _version, _host = footer_fields(path)
    assert app == b"win "
    assert os.path.getsize(path) == 2048 + 512  # no batmap after the BAT
    with vhdcore.open(path) as image:
        assert image.batmap is None


@pytest.mark.parametrize("block_size", ["512K", "1M", "4M"])
def test_xen_refuses_other_block_sizes(tmp_path, cli, block_size):
    code, _out, err = cli("create", "--xen", "--block-size", block_size, tmp_path / "x.vhd", "1G")
    assert code != 0 and "--xen needs 2 MiB blocks" in err and "128 MiB" in err
    assert not (tmp_path / "x.vhd").exists()
    raw = tmp_path / "r.raw"
    raw.write_bytes(b"\1" * MiB)
    code, _out, err = cli("convert", "--xen", "--block-size", block_size, raw, tmp_path / "c.vhd")
    assert code != 0 and "--xen needs 2 MiB blocks" in err
    assert not (tmp_path / "c.vhd").exists()


def test_xen_snapshot_of_a_parent_with_other_blocks_is_refused(tmp_path, cli):
    parent = tmp_path / "p.vhd"
    vhdcore.create(parent, 8 * MiB, block_size=512 * 1024).close()
    with pytest.raises(errors.LimitError, match="parent's block size"):
        snapshot(parent, tmp_path / "c.vhd", xen=True)
    code, _out, err = cli("snapshot", "--xen", parent, tmp_path / "c.vhd")
    assert code != 0 and "2 MiB blocks" in err
    assert not (tmp_path / "c.vhd").exists()


def test_xen_contradictions_are_refused(tmp_path):
    raw = tmp_path / "r.raw"
    raw.write_bytes(b"\1" * MiB)
    with pytest.raises(errors.UnsupportedError, match="choose one"):
        convert(raw, tmp_path / "a.vhd", azure=True, xen=True)
    with pytest.raises(errors.UnsupportedError, match="not raw"):
        convert(raw, tmp_path / "a.raw", out_format="raw", xen=True)


# --- convert ----------------------------------------------------------------


def _source(tmp_path, rng, size=21 * MiB):
    """Block 0 full of data, block 1 zeros, block 2 one sector, block 3 holes
    around data, ..., and a last partial block."""
    data = bytearray(size)
    data[0:BLOCK] = rng.integers(0, 256, BLOCK, dtype=np.uint8).tobytes()
    data[2 * BLOCK + 512 : 2 * BLOCK + 1024] = b"\x55" * 512
    data[3 * BLOCK + 100 * 1024 : 3 * BLOCK + 200 * 1024] = b"\xaa" * (100 * 1024)
    data[7 * BLOCK : 8 * BLOCK] = rng.integers(1, 256, BLOCK, dtype=np.uint8).tobytes()
    data[size - 4096 :] = b"\x77" * 4096  # inside the last (partial) block
    path = tmp_path / "src.raw"
    path.write_bytes(bytes(data))
    return path, [0, 2, 3, 7, (size - 1) // BLOCK]


def _assert_blktap_dynamic(path, size, allocated):
    entries, header_at, map_at, sectors, end = blktap_metadata(size)
    positions, footer_at = blktap_block_positions(end, len(allocated))
    bat = bat_of(path, entries)
    assert [i for i, e in enumerate(bat) if e != UNUSED] == allocated
    padding = header_at - 1536 - entries * 4
    assert read_at(path, 1536 + entries * 4, padding) == bytes(padding)
    assert [bat[i] * 512 for i in allocated] == positions
    assert os.path.getsize(path) == footer_at + 512
    for position in positions:
        assert (position + 512) % 4096 == 0  # data on a page
        assert read_at(path, position, 512) == b"\xff" * 512  # stored whole
    batmap = batmap_of(path, header_at)
    assert (batmap["offset"], batmap["sectors"], batmap["version"]) == (map_at, sectors, 0x10002)
    assert batmap["checksum"] == batmap["computed"]
    assert batmap["full"] == set(allocated)


def test_convert_xen_layout_and_batmap_bits(tmp_path, rng, cli, peers):
    src, allocated = _source(tmp_path, rng)
    out = tmp_path / "x.vhd"
    code, text, err = cli("convert", "--xen", src, out)
    assert code == 0, err
    assert "dynamic, 2 MiB blocks" in text
    # blktap sizes disks in whole blocks (and its resize miscounts others).
    assert "rounded up from 22020096 to 23068672 bytes" in text
    assert_tap_footer(out)
    _assert_blktap_dynamic(out, 22 * MiB, allocated)
    report = check(out, deep=True)
    assert report.exit_code == 0, [p.message for p in report.problems]
    assert_peers_accept(peers, out, 22 * MiB, src)


def test_convert_xen_to_stdout_matches_the_file(tmp_path, rng):
    src, allocated = _source(tmp_path, rng)
    fixed_id = uuid_module.UUID(int=7)
    convert(src, tmp_path / "file.vhd", xen=True, uuid=fixed_id, timestamp=1000)
    code = (
        "import sys, uuid; from vhdcore.ops.convert import convert; "
        f"convert({str(src)!r}, '-', xen=True, uuid=uuid.UUID(int=7), timestamp=1000)"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(vhdcore.__file__)))
    with open(tmp_path / "stream.vhd", "wb") as sink:
        subprocess.run([sys.executable, "-c", code], stdout=sink, env=env, check=True)
    assert (tmp_path / "stream.vhd").read_bytes() == (tmp_path / "file.vhd").read_bytes()
    _assert_blktap_dynamic(tmp_path / "stream.vhd", 22 * MiB, allocated)


def test_convert_xen_fixed(tmp_path, rng, peers):
    src, _allocated = _source(tmp_path, rng)
    out = tmp_path / "f.vhd"
    result = convert(src, out, out_format="fixed", xen=True)
    assert result.output_format == "fixed" and result.virtual_size == 22 * MiB
    assert_tap_footer(out)
    assert check(out).exit_code == 0
    assert_peers_accept(peers, out, 22 * MiB, src)


def test_convert_xen_from_a_vhd_chain(tmp_path, rng, peers):
    base = tmp_path / "base.vhd"
    with vhdcore.create(base, 8 * MiB) as image:
        image.write(0, rng.integers(0, 256, 3 * MiB, dtype=np.uint8).tobytes())
    snapshot(base, tmp_path / "child.vhd")
    with vhdcore.open(tmp_path / "child.vhd", "r+") as image:
        image.write(6 * MiB, b"\x01" * 4096)
    out = tmp_path / "x.vhd"
    convert(tmp_path / "child.vhd", out, xen=True)
    _assert_blktap_dynamic(out, 8 * MiB, [0, 1, 3])
    with vhdcore.open(out) as a, vhdcore.open(tmp_path / "child.vhd") as b:
        assert a.read(0, 8 * MiB) == b.read(0, 8 * MiB)


# --- library writes -----------------------------------------------------------


def test_library_writes_set_bits_of_blocks_filled_completely(tmp_path, rng, peers):
    path = tmp_path / "x.vhd"
    with vhdcore.create(path, 20 * MiB, xen=True) as image:
        image.write(0, rng.integers(0, 256, BLOCK, dtype=np.uint8).tobytes())  # full
        image.write(BLOCK + 4096, b"\x01" * 8192)  # partial
        image.write(2 * BLOCK, b"\x02" * MiB)  # full in two writes
        image.write(3 * MiB * 2 - MiB, b"\x03" * MiB)
        image.write(3 * BLOCK, b"\x04" * (BLOCK - 512))  # one sector short
    entries, header_at, _map_at, _sectors, end = blktap_metadata(20 * MiB)
    bat = bat_of(path, entries)
    positions, footer_at = blktap_block_positions(end, 4)
    assert [bat[i] * 512 for i in range(4)] == positions
    assert os.path.getsize(path) == footer_at + 512
    batmap = batmap_of(path, header_at)
    assert batmap["full"] == {0, 2}
    assert batmap["checksum"] == batmap["computed"]
    assert check(path, deep=True).exit_code == 0
    with vhdcore.open(path) as image:
        assert image.batmap.is_full(0) and not image.batmap.is_full(1)
    assert_peers_accept(peers, path, 20 * MiB)


def test_batmap_bits_reach_the_disk_only_at_flush(tmp_path):
    path = tmp_path / "x.vhd"
    _entries, header_at, _map_at, _sectors, _end = blktap_metadata(8 * MiB)
    with vhdcore.create(path, 8 * MiB, xen=True) as image:
        image.write(0, b"\x09" * BLOCK)
        assert batmap_of(path, header_at)["full"] == set()  # bitmaps not yet durable
        image.flush()
        assert batmap_of(path, header_at)["full"] == {0}


def test_differencing_child_sets_bits_only_for_whole_blocks(tmp_path, rng, cli, peers):
    base = tmp_path / "base.vhd"
    with vhdcore.create(base, 16 * MiB, xen=True) as image:
        image.write(0, rng.integers(0, 256, 16 * MiB, dtype=np.uint8).tobytes())
    code, _out, err = cli("snapshot", "--xen", base, tmp_path / "child.vhd")
    assert code == 0, err
    child = tmp_path / "child.vhd"
    assert_tap_footer(child)
    with vhdcore.open(child, "r+") as image:
        image.write(BLOCK + 1000, b"partial")  # must keep reading the parent elsewhere
        image.write(3 * BLOCK, b"\x05" * BLOCK)
        expected = image.read(0, 16 * MiB)
    with vhdcore.open(child) as image:
        header = image.header
        locators = [loc for loc in header.locators if loc.data_length]
        bitmap = image._bitmap(1)
    _entries, header_at, map_at, sectors, _end = blktap_metadata(16 * MiB)
    batmap = batmap_of(child, header_at)
    assert batmap["full"] == {3}
    assert batmap["checksum"] == batmap["computed"]
    # Locators follow the map (vhd_write_parent_locators).
    assert min(loc.data_offset for loc in locators) == map_at + sectors * 512
    assert bitmap != b"\xff" * 512
    assert check(child, deep=True).exit_code == 0
    with vhdcore.open(child) as image:
        assert image.read(0, 16 * MiB) == expected
    peers.run("qemu-img", "info", "-f", "vpc", child)
    peers.run("vhdiinfo", child)


# --- info -------------------------------------------------------------------


def test_info_shows_hidden_flag_and_batmap(tmp_path, cli):
    path = tmp_path / "x.vhd"
    with vhdcore.create(path, 20 * MiB, xen=True) as image:
        image.write(0, b"\x01" * BLOCK)
    code, out, _err = cli("info", path)
    assert code == 0
    assert "hidden (blktap): no" in out
    assert "batmap (blktap): version 1.2 at 0x800, 1 of 10 blocks marked full" in out
    code, out, _err = cli("info", path, "--json")
    data = json.loads(out)
    assert data["hidden"] == 0
    assert data["batmap"] == {
        "offset": 0x800, "version": "1.2", "valid": True, "full_blocks": 1, "blocks": 10,
    }
    plain = tmp_path / "plain.vhd"
    vhdcore.create(plain, MiB, type="fixed").close()
    data = json.loads(cli("info", plain, "--json")[1])
    assert data["hidden"] == 0 and data["batmap"] is None


def _set_hidden(path, value, where):
    """Set blktap's hidden byte (footer offset 85) in the footers at ``where``, checksum fixed."""
    from vhdcore.formats.vhd.footer import Footer

    for offset in where:
        footer = Footer.from_bytes(read_at(path, offset, 512))
        footer = Footer.from_bytes(
            footer.to_bytes()[:85] + bytes([value]) + footer.to_bytes()[86:]
        )
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(footer.to_bytes())


def test_info_reads_hidden_as_blktap_does(tmp_path, cli):
    path = tmp_path / "x.vhd"
    vhdcore.create(path, 4 * MiB, xen=True).close()
    end = os.path.getsize(path) - 512
    _set_hidden(path, 1, (0, end))
    _code, out, _err = cli("info", path)
    assert "hidden (blktap): yes" in out
    assert json.loads(cli("info", path, "--json")[1])["hidden"] == 1
    # tap 1.1 kept the flag in the copy at offset 0 only (vhd_hidden).
    from vhdcore.formats.vhd.footer import Footer

    for offset, hidden in ((0, 1), (end, 0)):
        footer = Footer.from_bytes(read_at(path, offset, 512))
        raw = bytearray(footer.to_bytes())
        raw[32:36] = struct.pack(">I", 0x00010001)
        raw[85] = hidden
        fixed = Footer.from_bytes(bytes(raw)).to_bytes()
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(fixed)
    data = json.loads(cli("info", path, "--json")[1])
    assert data["creator"]["version"] == "1.1" and data["hidden"] == 1


# --- blktap's own vhd-util ----------------------------------------------------
#
# Not packaged by Debian: build it from xapi-project/blktap (vhd/lib/*.c,
# vhd/vhd-util.c, lvm/lvm-util.c; -luuid -ldl) and point VHDCORE_VHD_UTIL at it.


@pytest.fixture
def vhd_util():
    tool = os.environ.get("VHDCORE_VHD_UTIL") or shutil.which("vhd-util")
    if not tool:
        pytest.skip("blktap's vhd-util not installed (set VHDCORE_VHD_UTIL to a build of it)")
    return lambda *argv: subprocess.run(
        [tool, *map(str, argv)], capture_output=True, text=True, check=False
    )


def test_vhd_util_accepts_and_resizes_xen_images(tmp_path, rng, vhd_util, peers):
    src, _allocated = _source(tmp_path, rng)
    made = tmp_path / "made.vhd"
    vhdcore.create(made, 100 * MiB, xen=True).close()
    converted = tmp_path / "conv.vhd"
    convert(src, converted, xen=True)
    child = tmp_path / "child.vhd"
    snapshot(converted, child, xen=True)
    with vhdcore.open(child, "r+") as image:
        image.write(0, b"\x01" * BLOCK)
        image.write(BLOCK + 512, b"\x02" * 4096)
    for path in (made, converted):
        result = vhd_util("check", "-n", path, "-b")
        assert result.returncode == 0 and "is valid" in result.stdout, result.stdout
    result = vhd_util("check", "-n", child, "-p", "-b")
    assert result.returncode == 0, result.stdout
    # The point of --xen: blktap's resize takes our images.
    for path, megabytes in ((made, 300), (converted, 64)):
        result = vhd_util("resize", "-n", path, "-s", megabytes, "-j", tmp_path / "journal")
        assert result.returncode == 0, result.stdout
        assert vhd_util("query", "-n", path, "-v").stdout.strip() == str(megabytes)
        assert vhd_util("check", "-n", path, "-b").returncode == 0
    with vhdcore.open(converted) as image:
        assert image.virtual_size == 64 * MiB
        assert image.read(0, 21 * MiB) == src.read_bytes()
        assert image.read(21 * MiB, 43 * MiB) == bytes(43 * MiB)
    peers.run("qemu-img", "info", "-f", "vpc", converted)


def test_vhd_util_refuses_to_resize_without_xen(tmp_path, vhd_util):
    path = tmp_path / "plain.vhd"
    vhdcore.create(path, 100 * MiB).close()
    result = vhd_util("resize", "-n", path, "-s", 300, "-j", tmp_path / "journal")
    assert result.returncode != 0 and "not created by xen" in result.stdout


def test_our_layout_equals_vhd_utils(tmp_path, rng, vhd_util):
    # Metadata of create --xen: vhd-util create's, but for identity fields.
    theirs, ours = tmp_path / "theirs.vhd", tmp_path / "ours.vhd"
    assert vhd_util("create", "-n", theirs, "-s", 100).returncode == 0
    vhdcore.create(ours, 100 * MiB, xen=True).close()
    a, b = bytearray(theirs.read_bytes()), bytearray(ours.read_bytes())
    assert len(a) == len(b)
    for footer in (0, len(a) - 512):
        for start, end in ((24, 28), (64, 84)):  # timestamp, checksum, UUID
            a[footer + start : footer + end] = b[footer + start : footer + end]
    assert a == b
    # Block placement: vhd-util fill allocates every block, as convert does
    # for a source full of data.
    filled = tmp_path / "filled.vhd"
    assert vhd_util("create", "-n", filled, "-s", 22).returncode == 0
    assert vhd_util("fill", "-n", filled).returncode == 0
    src = tmp_path / "full.raw"
    src.write_bytes(rng.integers(1, 256, 22 * MiB, dtype=np.uint8).tobytes())
    convert(src, ours, xen=True, force=True)
    assert bat_of(ours, 11) == bat_of(filled, 11)
    assert os.path.getsize(ours) == os.path.getsize(filled)
    assert batmap_of(ours, 2048)["full"] == batmap_of(filled, 2048)["full"] == set(range(11))
