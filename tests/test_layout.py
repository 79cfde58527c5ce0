"""Every operation leaves an image `check` calls clean (exit 0: no leak), compact
closes holes of any size, and blktap's table room is not a leak."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import vhdcore
from vhdcore.formats.vhd.bat import bat_bytes, bitmap_bytes_for
from vhdcore.formats.vhd.batmap import BATMAP_VERSION_1_2, Batmap
from vhdcore.formats.vhd.check import check
from vhdcore.formats.vhd.commit import commit
from vhdcore.formats.vhd.compact import compact
from vhdcore.formats.vhd.constants import BAT_UNUSED, BATMAP_COOKIE, DISK_DYNAMIC
from vhdcore.formats.vhd.footer import Footer
from vhdcore.formats.vhd.header import DynamicHeader
from vhdcore.formats.vhd.rebase import rebase
from vhdcore.formats.vhd.repair import repair
from vhdcore.formats.vhd.resize import resize
from vhdcore.formats.vhd.snapshot import snapshot
from vhdcore.testing import samples

MiB = 1024 * 1024
SIZE = 24 * MiB


def _fill(image, rng, model, count=12):
    """Writes spread over the disk (whole blocks and pieces), mirrored in ``model``."""
    for _ in range(count):
        length = int(rng.integers(512, 300_000))
        offset = int(rng.integers(0, len(model) - length))
        data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        image.write(offset, data)
        model[offset : offset + length] = data


def _dynamic(path, rng, size=SIZE, block=2 * MiB):
    model = bytearray(size)
    with vhdcore.create(path, size, block_size=block) as image:
        _fill(image, rng, model)
    return model


def _chain(tmp_path, rng):
    """base <- s1 <- s2 <- s3 with data in each; returns the paths and s3's view."""
    model = bytearray(SIZE)
    paths = [tmp_path / f"{n}.vhd" for n in ("base", "s1", "s2", "s3")]
    with vhdcore.create(paths[0], SIZE) as image:
        _fill(image, rng, model)
    for parent, path in zip(paths, paths[1:]):
        with vhdcore.create(path, parent=parent) as image:
            _fill(image, rng, model, 4)
    return paths, model


def _content(path, size):
    with vhdcore.open(path) as image:
        return image.read(0, size)


# Each operation: (name, function(tmp_path, rng) -> [(image checked, expected view or None)])


def op_create(tmp_path, rng):
    out = []
    for kind in ("dynamic", "fixed"):
        path = tmp_path / f"{kind}.vhd"
        vhdcore.create(path, SIZE, type=kind).close()
        out.append((path, bytes(SIZE)))
    base = tmp_path / "dynamic.vhd"
    child = tmp_path / "child.vhd"
    vhdcore.create(child, parent=base).close()
    return out + [(child, bytes(SIZE))]


def op_write(tmp_path, rng):
    path = tmp_path / "d.vhd"
    return [(path, bytes(_dynamic(path, rng)))]


def op_convert(tmp_path, rng):
    source = tmp_path / "d.vhd"
    model = bytes(_dynamic(source, rng))
    raw = tmp_path / "d.raw"
    raw.write_bytes(model)
    out = []
    for src, kind in ((raw, "dynamic"), (raw, "fixed"), (source, "dynamic"), (source, "fixed")):
        target = tmp_path / f"{src.suffix[1:]}-{kind}.vhd"
        vhdcore.convert(src, target, out_format=kind)
        out.append((target, model))
    return out


def op_snapshot(tmp_path, rng):
    base = tmp_path / "base.vhd"
    model = bytes(_dynamic(base, rng))
    child = tmp_path / "snap.vhd"
    snapshot(base, child)
    return [(child, model), (base, model)]


def op_commit(tmp_path, rng):
    (_base, _s1, s2, s3), model = _chain(tmp_path, rng)
    commit(s3)
    return [(s2, bytes(model)), (s3, bytes(model))]


def op_commit_remove_then_unsafe_rebase(tmp_path, rng):
    (_base, s1, s2, s3), model = _chain(tmp_path, rng)
    commit(s2, remove=True)
    rebase(s3, s1, unsafe=True)
    return [(s1, None), (s3, bytes(model))]


def op_rebase_safe(tmp_path, rng):
    (base, _s1, _s2, s3), model = _chain(tmp_path, rng)
    rebase(s3, base)
    # a single-block child: the case that left a block-sized hole
    lone = tmp_path / "lone.vhd"
    with vhdcore.create(lone, parent=base) as image:
        image.write(0, b"x" * 4096)
        view = image.read(0, SIZE)
    other = tmp_path / "other.vhd"
    vhdcore.create(other, SIZE).close()
    rebase(lone, other)
    return [(s3, bytes(model)), (lone, view)]


def op_rebase_unsafe(tmp_path, rng):
    (base, _s1, _s2, s3), _model = _chain(tmp_path, rng)
    rebase(s3, base, unsafe=True)
    return [(s3, None)]


def op_resize(tmp_path, rng):
    out = []
    for kind in ("dynamic", "fixed"):
        path = tmp_path / f"{kind}.vhd"
        model = bytearray(SIZE)
        with vhdcore.create(path, SIZE, type=kind) as image:
            _fill(image, rng, model)
        resize(path, 3 * SIZE)  # grow (the dynamic table grows: a block moves)
        out.append((path, bytes(model) + bytes(2 * SIZE)))
        shrunk = tmp_path / f"{kind}-shrunk.vhd"
        shutil.copy(path, shrunk)
        resize(shrunk, SIZE // 3, force=True)  # shrink, dropping data
        out.append((shrunk, bytes(model[: SIZE // 3])))
    (_base, _s1, _s2, s3), model = _chain(tmp_path, rng)
    resize(s3, 4 * SIZE)
    return out + [(s3, bytes(model) + bytes(3 * SIZE))]


def op_resize_blktap(tmp_path, rng):
    """Shrink then grow a blktap image whose batmap marks released blocks full."""
    path = samples.build_dynamic(
        tmp_path / "tap.vhd", name="tap", size=64 * MiB, blktap=True,
        blocks={i: [(0, b"\x5a" * 4096)] for i in range(0, 32, 2)},
        full_blocks=range(16, 32, 2),
    )
    view = _content(path, 16 * MiB)
    resize(path, 16 * MiB, force=True)
    resize(path, 64 * MiB)
    return [(path, view + bytes(48 * MiB))]


def op_compact(tmp_path, rng):
    path = tmp_path / "d.vhd"
    model = _dynamic(path, rng)
    with vhdcore.open(path, "r+") as image:
        image.write(4 * MiB, bytes(2 * MiB))  # a block of zeros to drop
        model[4 * MiB : 6 * MiB] = bytes(2 * MiB)
    copy = tmp_path / "copy.vhd"
    compact(path, output=copy)
    compact(path)
    return [(path, bytes(model)), (copy, bytes(model))]


def op_repair(tmp_path, rng):
    path = tmp_path / "d.vhd"
    model = _dynamic(path, rng)
    with open(path, "r+b") as handle:  # zero the primary footer
        handle.seek(-512, 2)
        handle.write(bytes(512))
    repair(path)
    sample = samples.generate("batmap_unallocated_full", tmp_path)
    view = _content(sample.path, samples.SIZE)
    repair(sample.path)
    return [(path, bytes(model)), (sample.path, view)]


OPERATIONS = [
    op_create, op_write, op_convert, op_snapshot, op_commit,
    op_commit_remove_then_unsafe_rebase, op_rebase_safe, op_rebase_unsafe, op_resize,
    op_resize_blktap, op_compact, op_repair,
]


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda f: f.__name__[3:])
def test_every_operation_leaves_a_clean_image(tmp_path, rng, operation):
    for path, view in operation(tmp_path, rng):
        report = check(path, parents=True, deep=True)
        assert report.exit_code == 0, (path.name, [p.message for p in report.all_problems])
        assert report.leaked_bytes == 0
        if view is not None:
            assert _content(path, len(view)) == view, path.name


# -- layouts made by hand --------------------------------------------------


def _handmade(path, size, block_size, positions, *, batmap=True, first_data=None):
    """A blktap-style dynamic image with block ``i`` at byte ``positions[i]``.

    The BAT at 0x600 is followed by the batmap header and map, as vhd-util
    lays them out; blocks go wherever ``positions`` says (padding between).
    Block ``i`` holds the byte ``i + 1`` in its first 4 KiB.
    """
    entries = -(-size // block_size)
    bitmap = bitmap_bytes_for(block_size)
    table = np.full(entries, BAT_UNUSED, dtype=np.uint32)
    pieces = []
    for block, at in positions.items():
        table[block] = at // 512
        pieces.append((at, b"\xff" * bitmap + bytes([block + 1]) * 4096))
    end = max(at + bitmap + block_size for at in positions.values())
    footer = Footer.new(DISK_DYNAMIC, size, creator_app=b"tap\0", creator_version=0x00010003,
                        creator_os=b"Lnux")
    header = DynamicHeader.new(entries, block_size)
    with open(path, "wb") as out:
        out.truncate(end + 512)
        out.write(footer.to_bytes())
        out.seek(512)
        out.write(header.to_bytes())
        out.seek(1536)
        out.write(table.astype(">u4").tobytes().ljust(bat_bytes(entries), b"\xff"))
        if batmap:
            at = 1536 + bat_bytes(entries)
            bits = np.zeros(-(-entries // 4096) * 4096, dtype=np.uint8)
            map_bytes = np.packbits(bits).tobytes()
            sector = Batmap(BATMAP_COOKIE, at + 512, len(map_bytes) // 512, BATMAP_VERSION_1_2,
                            0, 0, header_offset=at).with_map(map_bytes)
            out.seek(at)
            out.write(sector.to_bytes() + map_bytes)
        for at, data in pieces:
            out.seek(at)
            out.write(data)
        out.seek(end)
        out.write(footer.to_bytes())
    return path


def _blktap_grown(path):
    """What vhd-util resize leaves: table room between the batmap and the first block.

    A 2 GiB disk (1024 entries: BAT 0x600..0x1600, batmap 0x1600..0x1a00)
    grown to 4 GiB: the BAT needs 4 KiB more, so vhd-util moved the first
    block (data 4 KiB-aligned at 0x2000) to the end and shifted the batmap
    into its place; 2 MiB + 512 bytes are left before the next block.
    """
    span = 2 * MiB + 512
    first = 0x2000 - 512 + span + 3584  # the second block, where vhd-util left it
    positions = {1: first, 2: first + span + 3584, 0: first + 2 * (span + 3584)}
    path = _handmade(path, 4096 * MiB, 2 * MiB, positions)
    # the tables after the grow end at 0x2a00: 2048 entries, then the batmap
    return path, first - 0x2a00


def test_blktap_table_room_is_not_a_leak(tmp_path):
    path, room = _blktap_grown(tmp_path / "grown.vhd")
    assert room > 2 * MiB + 512  # more than a block's span: still room, not a leak
    report = check(path)
    assert report.exit_code == 0, [p.message for p in report.all_problems]
    assert report.counts["table_room"] == room
    # compact gives it back all the same, and the data stays
    before = _content(path, 8 * MiB)
    result = compact(path)
    assert result.bytes_reclaimed >= room
    assert check(path).exit_code == 0 and _content(path, 8 * MiB) == before


def test_a_hole_after_the_first_block_is_a_leak(tmp_path):
    span = 2 * MiB + 512
    path = _handmade(tmp_path / "hole.vhd", 8 * MiB, 2 * MiB,
                     {0: 0x2000 - 512, 1: 0x2000 - 512 + span + MiB})
    report = check(path)
    assert report.exit_code == 3 and report.leaked_bytes == MiB
    # and so is a front gap a whole block (plus alignment) fits in
    path = _handmade(tmp_path / "front.vhd", 8 * MiB, 2 * MiB, {0: 0xc00 + span + 4096})  # tables end at 0xc00
    report = check(path)
    assert report.exit_code == 3 and report.leaked_bytes == span + 4096


@pytest.mark.parametrize("hole", [4096, 1 * MiB, 2 * MiB + 512 - 4096, 3 * MiB])
def test_compact_closes_holes_of_any_size(tmp_path, hole):
    span = 2 * MiB + 512
    first = 0x2000 - 512
    positions = {}
    at = first
    for block in range(12):  # more blocks after the hole than compact moves to the end
        positions[block] = at
        at += span + (hole if block == 2 else 0)
    path = _handmade(tmp_path / "hole.vhd", 32 * MiB, 2 * MiB, positions, batmap=False)
    before = _content(path, 32 * MiB)
    assert check(path).exit_code == 3
    dry = compact(path, dry_run=True)
    result = compact(path)
    assert result.file_size_after == dry.file_size_after
    report = check(path, deep=True)
    assert report.exit_code == 0 and report.counts["table_room"] == 0
    assert result.file_size_after == 0x800 + 12 * span + 512  # packed right after the BAT
    assert _content(path, 32 * MiB) == before


def test_shrink_truncates_and_grow_reuses_the_room(tmp_path, rng):
    path = tmp_path / "d.vhd"
    _dynamic(path, rng, size=64 * MiB)
    with vhdcore.open(path, "r+") as image:
        for offset in range(0, 64 * MiB, 2 * MiB):
            image.write(offset, b"\x01" * 512)
    big = path.stat().st_size
    resize(path, 16 * MiB, force=True)
    assert path.stat().st_size < big // 3  # released blocks' space is given back
    assert check(path).exit_code == 0
    first = resize(path, 1024 * MiB)  # BAT grows by a sector: one block moves out
    assert first.blocks_moved == 1 and check(path).exit_code == 0
    second = resize(path, 2048 * MiB)  # the room that left takes the next sector
    assert second.blocks_moved == 0 and check(path).exit_code == 0
