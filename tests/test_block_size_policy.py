"""Block sizes of new images: refused where peers misread them, noted where unusual (issue 10).

qemu sizes a block's sector bitmap as ``block_size / 4096`` bytes rounded
up to a sector: 0 for blocks under 4 KiB, so it reads the bitmap sector as
data. ``check`` calls such images clean (the specification allows them),
so vhdcore must not create them.
"""

from __future__ import annotations

import os

import pytest

import vhdcore
from vhdcore.errors import LimitError, VHDError
from vhdcore.testing.samples import build_dynamic

KiB = 1024
MiB = 1024 * KiB


def _pattern(length: int) -> bytes:
    return bytes((i * 7 + i // 512) % 251 + 1 for i in range(length))


@pytest.mark.parametrize("block_size", [2 * KiB, 4 * KiB])
def test_threshold_is_where_qemu_starts_reading_right(tmp_path, peers, block_size):
    """The refused sizes are exactly those qemu misreads: 2 KiB wrong, 4 KiB right."""
    data = _pattern(16 * KiB)
    blocks = {
        index: [(0, data[index * block_size : (index + 1) * block_size])]
        for index in range(len(data) // block_size)
    }
    image = build_dynamic(
        tmp_path / "b.vhd", name="b", size=64 * KiB, block_size=block_size, blocks=blocks
    )
    raw = tmp_path / "b.raw"
    peers.run("qemu-img", "convert", "-f", "vpc", "-O", "raw", image, raw)
    with vhdcore.open(image) as opened:
        assert opened.read(0, len(data)) == data  # vhdcore reads both right
    assert (raw.read_bytes()[: len(data)] == data) is (block_size >= 4 * KiB)


@pytest.mark.parametrize("block_size", [512, 1 * KiB, 2 * KiB])
def test_create_refuses_blocks_qemu_misreads(tmp_path, block_size):
    with pytest.raises(LimitError, match="below 4 KiB, which qemu misreads.*bitmap"):
        vhdcore.create(tmp_path / "s.vhd", 4 * MiB, block_size=block_size)
    assert not os.path.exists(tmp_path / "s.vhd")


@pytest.mark.parametrize("text", ["512", "1K", "2K"])
def test_cli_create_and_convert_refuse_them(tmp_path, cli, text):
    code, out, err = cli("create", tmp_path / "s.vhd", "4M", "--block-size", text)
    assert code != 0 and "qemu misreads" in err and len(err.strip().splitlines()) == 1
    src = tmp_path / "s.raw"
    src.write_bytes(_pattern(64 * KiB))
    code, out, err = cli("convert", src, tmp_path / "c.vhd", "--block-size", text)
    assert code != 0 and "qemu misreads" in err
    assert sorted(os.listdir(tmp_path)) == ["s.raw"]


def test_library_convert_refuses_them(tmp_path):
    src = tmp_path / "s.raw"
    src.write_bytes(_pattern(64 * KiB))
    with pytest.raises(LimitError, match="qemu misreads"):
        vhdcore.convert(src, tmp_path / "c.vhd", block_size=2 * KiB)
    assert sorted(os.listdir(tmp_path)) == ["s.raw"]


def test_four_kib_blocks_round_trip_through_qemu(tmp_path, peers):
    data = _pattern(64 * KiB)
    with vhdcore.create(tmp_path / "f.vhd", 256 * KiB, block_size=4 * KiB) as image:
        image.write(4 * KiB, data)
    raw = tmp_path / "f.raw"
    peers.run("qemu-img", "convert", "-f", "vpc", "-O", "raw", tmp_path / "f.vhd", raw)
    assert raw.read_bytes()[4 * KiB : 4 * KiB + len(data)] == data


@pytest.mark.parametrize("block_size", [4 * KiB, 64 * KiB, MiB, 8 * MiB, 256 * MiB])
def test_unusual_sizes_get_a_note(tmp_path, block_size):
    with vhdcore.create(tmp_path / "u.vhd", 4 * MiB, block_size=block_size) as image:
        assert any("unusual" in note and "512 KiB or 2 MiB" in note for note in image.notes)


@pytest.mark.parametrize("block_size", [512 * KiB, 2 * MiB])
def test_peer_sizes_get_none(tmp_path, block_size, cli):
    with vhdcore.create(tmp_path / "p.vhd", 4 * MiB, block_size=block_size) as image:
        assert not any("unusual" in note for note in image.notes)
    code, out, err = cli("create", tmp_path / "q.vhd", "4M", "--block-size", str(block_size))
    assert code == 0 and err == ""


def test_cli_warns_in_one_line_on_stderr(tmp_path, cli):
    code, out, err = cli("create", tmp_path / "w.vhd", "4M", "--block-size", "64K")
    assert code == 0
    assert err.startswith("vhdcore create: warning: block size 64 KiB is unusual")
    assert len(err.strip().splitlines()) == 1 and "unusual" not in out
    code, out, err = cli("create", tmp_path / "j.vhd", "4M", "--block-size", "64K", "--json")
    assert code == 0 and "warning: block size 64 KiB" in err
    src = tmp_path / "w.raw"
    src.write_bytes(_pattern(64 * KiB))
    code, out, err = cli("convert", src, tmp_path / "c.vhd", "--block-size", "1M")
    assert code == 0
    assert err.startswith("vhdcore convert: warning: block size 1 MiB is unusual")
    assert "unusual" not in out


def test_library_convert_notes_an_unusual_size(tmp_path):
    src = tmp_path / "n.raw"
    src.write_bytes(_pattern(64 * KiB))
    result = vhdcore.convert(src, tmp_path / "n.vhd", block_size=64 * KiB)
    assert any("unusual" in note for note in result.notes)
    result = vhdcore.convert(src, tmp_path / "m.vhd", block_size=512 * KiB)
    assert not any("unusual" in note for note in result.notes)


def test_fixed_with_a_block_size_is_refused(tmp_path, cli):
    with pytest.raises(VHDError, match="fixed image has no blocks"):
        vhdcore.create(tmp_path / "f.vhd", 4 * MiB, type="fixed", block_size=2 * MiB)
    code, out, err = cli("create", tmp_path / "f.vhd", "4M", "--type", "fixed", "--block-size", "2M")
    assert code == 64 and "fixed image has no blocks" in err  # a usage error
    assert not os.path.exists(tmp_path / "f.vhd")
    code, out, err = cli("create", tmp_path / "f.vhd", "4M", "--type", "fixed")
    assert code == 0, err


def test_a_child_takes_its_parents_block_size_unless_told(tmp_path):
    with vhdcore.create(tmp_path / "p.vhd", 4 * MiB, block_size=512 * KiB):
        pass
    with vhdcore.create(tmp_path / "c.vhd", parent=tmp_path / "p.vhd") as child:
        assert child.block_size == 512 * KiB
    with vhdcore.create(tmp_path / "d.vhd", parent=tmp_path / "p.vhd", block_size=2 * MiB) as child:
        assert child.block_size == 2 * MiB


def test_check_warns_on_an_image_qemu_misreads(tmp_path, cli):
    from vhdcore.formats.vhd.check import check

    small = build_dynamic(tmp_path / "s.vhd", name="s", size=64 * KiB, block_size=2 * KiB,
                          blocks={0: [(0, _pattern(2 * KiB))]})
    report = check(small)
    assert "header.block_size_compat" in report.codes and not report.errors
    assert any("qemu" in w.message for w in report.warnings)
    fine = build_dynamic(tmp_path / "f.vhd", name="f", size=64 * KiB, block_size=4 * KiB,
                         blocks={0: [(0, _pattern(4 * KiB))]})
    assert "header.block_size_compat" not in check(fine).codes
