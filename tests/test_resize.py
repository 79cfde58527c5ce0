"""Resize (grow and shrink) against an in-memory model, the peers, and a crash at every write."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_checks_clean
from helpers import random_writes as _random_writes

import vhdcore
from vhdcore import errors
from vhdcore.formats.vhd.resize import resize

MiB = 1024 * 1024


def random_writes(image, model, rng, count, max_len=150_000, zero_fraction=0.15):
    _random_writes(image, model, rng, count, max_len=max_len, zero_fraction=zero_fraction)




def check_peers(peers, image, model, tmp_path):
    raw = tmp_path / "expected.raw"
    nonzero = np.flatnonzero(np.frombuffer(bytes(model), dtype=np.uint8))
    end = int(nonzero[-1]) + 1 if len(nonzero) else 0
    with open(raw, "wb") as f:  # sparse: the zero tail is a hole
        f.write(model[:end])
        f.truncate(len(model))
    info = json.loads(peers.run("qemu-img", "info", "-f", "vpc", "--output=json", image).stdout)
    assert info["virtual-size"] == len(model)
    peers.run("qemu-img", "compare", "-q", "-f", "vpc", "-F", "raw", image, raw)
    out = peers.run("vhdiinfo", image).stdout
    assert f"({len(model)} bytes)" in out


def footers_agree(path):
    raw = path.read_bytes()
    return raw[:512] == raw[-512:]




@pytest.mark.parametrize(
    "kind, block_size",
    [("fixed", None), ("dynamic", 2 * MiB), ("dynamic", 512 * 1024), ("dynamic", 4096)],
)
def test_random_resizes_against_model(tmp_path, rng, peers, kind, block_size):
    path = tmp_path / "disk.vhd"
    model = bytearray(3 * MiB)
    with vhdcore.create(
        path, len(model), type=kind,
        block_size=None if kind == "fixed" else block_size or 2 * MiB,
    ) as image:
        random_writes(image, model, rng, 10)
    for step in range(8):
        new_size = int(rng.integers(1, 24)) * 256 * 1024 + int(rng.integers(0, 4)) * 512
        force = rng.random() < 0.5
        if new_size < len(model) and any(model[new_size:]) and not force:
            with pytest.raises(errors.VHDError, match="would drop data"):
                resize(path, new_size)
            continue
        result = resize(path, new_size, force=force)
        assert (result.old_size, result.new_size) == (len(model), new_size)
        if new_size < len(model):
            del model[new_size:]
        else:
            model.extend(bytes(new_size - len(model)))
        with vhdcore.open(path, "r+") as image:
            assert image.virtual_size == new_size
            assert image.read(0, new_size) == bytes(model), step
            random_writes(image, model, rng, 3)
        if kind != "fixed":
            assert footers_agree(path)
        assert_checks_clean(path)
    check_peers(peers, path, model, tmp_path)


def test_grow_moves_blocks_and_peers_agree(tmp_path, rng, peers):
    path = tmp_path / "small_blocks.vhd"
    model = bytearray(MiB)
    with vhdcore.create(path, len(model), block_size=4096) as image:
        random_writes(image, model, rng, 20)
        first_block = int(image.bat.min()) * 512
    result = resize(path, 64 * MiB)
    assert result.blocks_moved > 0
    assert result.table_entries == [256, 16384]
    model.extend(bytes(63 * MiB))
    with vhdcore.open(path) as image:
        assert int(image.bat[image.bat != 0xFFFFFFFF].min()) * 512 > first_block
        assert image.read(0, len(model)) == bytes(model)
    check_peers(peers, path, model, tmp_path)
    # qemu writes into the grown image land after our blocks
    peers.run("qemu-io", "-f", "vpc", "-c", "write -P 0x77 60M 64k", path)
    model[60 * MiB : 60 * MiB + 65536] = b"\x77" * 65536
    with vhdcore.open(path) as image:
        assert image.read(0, len(model)) == bytes(model)


@pytest.mark.parametrize(
    "options, write",
    [([], True), ([], False), (["-o", "subformat=fixed"], True)],
    ids=["dynamic", "dynamic-empty", "fixed"],
)
def test_qemu_made_images(tmp_path, peers, options, write):
    path = tmp_path / "q.vhd"
    peers.run("qemu-img", "create", "-q", "-f", "vpc", *options, path, "10M")
    if write:
        peers.run("qemu-io", "-f", "vpc", "-c", "write -P 0x33 1M 2M", path)
    with vhdcore.open(path) as image:
        assert image.creator == "qemu" and image.size_rule == "chs"
        head = image.read(0, image.virtual_size)
    # Not a CHS size, and past the 128 entries of the BAT's first sector (an
    # image without blocks must move its footer out of the table's way).
    new_size = 300 * MiB + 4096
    result = resize(path, new_size)
    assert result.creator == "win " and any("creator changed" in n for n in result.notes)
    raw = tmp_path / "expected.raw"
    with open(raw, "wb") as f:
        f.write(head)
        f.truncate(new_size)
    info = json.loads(peers.run("qemu-img", "info", "-f", "vpc", "--output=json", path).stdout)
    assert info["virtual-size"] == new_size
    peers.run("qemu-img", "compare", "-q", "-f", "vpc", "-F", "raw", path, raw)
    assert f"({new_size} bytes)" in peers.run("vhdiinfo", path).stdout
    with vhdcore.open(path) as image:
        assert image.virtual_size == new_size
        assert image.read(0, len(head)) == head
        assert not any(image.read(new_size - MiB, MiB))


def test_differencing_grow_relocates_locators(tmp_path, rng):
    parent = tmp_path / "parent.vhd"
    child = tmp_path / "child.vhd"
    model = bytearray(MiB)
    with vhdcore.create(parent, MiB, block_size=4096) as image:
        random_writes(image, model, rng, 8)
    with vhdcore.create(child, parent=parent) as image:
        random_writes(image, model, rng, 8)
        old_locators = [loc.data_offset for _i, loc in image.header.used_locators]
    result = resize(child, 8 * MiB)
    model.extend(bytes(7 * MiB))
    with vhdcore.open(child) as image:
        assert image.parent.path == str(parent)
        assert image.virtual_size == 8 * MiB
        new_locators = [loc.data_offset for _i, loc in image.header.used_locators]
        assert min(new_locators) >= image.header.table_end
        assert image.read(0, len(model)) == bytes(model)
    assert new_locators != old_locators and result.blocks_moved > 0
    # shrinking back: the child holds nothing past 1 MiB, so no --force is needed
    resize(child, MiB)
    with vhdcore.open(child) as image:
        assert image.read(0, MiB) == bytes(model[:MiB])


def test_shrink_refuses_data_and_keeps_tail_clean(tmp_path):
    path = tmp_path / "d.vhd"
    with vhdcore.create(path, 4 * MiB, block_size=MiB) as image:
        image.write(3 * MiB + 1000, b"tail data")
        image.write(MiB, b"keep")
    with pytest.raises(errors.VHDError, match=str(3 * MiB + 1000)):
        resize(path, 2 * MiB)
    result = resize(path, 3 * MiB + 512, force=True)
    assert result.blocks_released == 0
    # growing again shows zeros where the dropped data was, never the old bytes
    resize(path, 4 * MiB)
    with vhdcore.open(path) as image:
        assert image.read(MiB, 4) == b"keep"
        assert not any(image.read(3 * MiB, MiB))
    with pytest.raises(errors.LimitError):
        resize(path, 2041 * 1024**3)


def test_cli(tmp_path, cli):
    path = tmp_path / "c.vhd"
    with vhdcore.create(path, MiB):
        pass
    code, out, err = cli("resize", path, "5M", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["new_size"] == 5 * MiB and report["old_size"] == MiB
    code, out, err = cli("resize", path, "2M")
    assert code == 0 and "to 2097152 bytes" in out
    code, _, err = cli("resize", path, "nonsense")
    assert code == 64 and "invalid size 'nonsense'" in err


@pytest.mark.parametrize(
    "kind, block_size, start, target",
    [
        ("dynamic", 4096, MiB, 3 * MiB),  # the BAT grows over the first blocks
        ("empty", 4096, MiB, 3 * MiB),  # ... and over the footer of a blockless image
        ("differencing", 4096, MiB, 3 * MiB),  # ... and over the parent locators
        ("dynamic", 512 * 1024, 3 * MiB, MiB + 512),  # shrink with --force
        ("fixed", None, MiB, 2 * MiB),
        ("fixed", None, 2 * MiB, MiB),
    ],
)
def test_crash_at_every_write(tmp_path, rng, crasher, kind, block_size, start, target):
    """After a crash at any write the image opens, reads its kept data, shows
    zeros (or the old size) elsewhere; rerunning the resize finishes it."""
    path = tmp_path / "disk.vhd"
    model = bytearray(start)
    if kind == "differencing":
        with vhdcore.create(tmp_path / "parent.vhd", start, block_size=block_size) as image:
            random_writes(image, model, rng, 6)
        with vhdcore.create(path, parent=tmp_path / "parent.vhd") as image:
            random_writes(image, model, rng, 6)
    elif kind == "empty":
        vhdcore.create(path, start, block_size=block_size).close()
    else:
        with vhdcore.create(
            path, start, type=kind, block_size=None if kind == "fixed" else block_size or MiB
        ) as image:
            random_writes(image, model, rng, 10)
    pristine = path.read_bytes()
    kept = min(start, target)
    expected = bytes(model[:kept]) + bytes(max(0, target - start))
    crashed, total = crasher(None, resize, path, target, force=True)
    assert not crashed and total >= 2
    for limit in range(1, total + 1):
        path.write_bytes(pristine)
        crashed, _ = crasher(limit, resize, path, target, force=True)
        assert crashed
        with vhdcore.open(path, "r+") as image:
            size = image.virtual_size
            assert size in (start, target), limit
            now = image.read(0, size)
        assert now[:kept] == model[:kept], limit
        # Between the primary footer and its copy the two differ: check warns
        # (footer.copy_stale) and repair or a rerun fixes it; nothing is wrong.
        assert_checks_clean(path, deep=False)
        if size == target and target > start:
            extra = bytearray(now[start:])
            if kind == "fixed":
                extra[:512] = bytes(512)  # the old footer's sector may still show it
            assert not any(extra), limit
        resize(path, target, force=True)
        with vhdcore.open(path) as image:
            assert image.virtual_size == target
            assert image.read(0, target) == expected, limit
        if kind != "fixed":
            assert footers_agree(path), limit
        assert_checks_clean(path)


def tap_image(path, size, block_size):
    """A blktap-style dynamic image: creator ``tap`` 1.3 and a batmap after the BAT."""
    import dataclasses

    from vhdcore.formats.vhd.bat import bat_bytes
    from vhdcore.formats.vhd.batmap import Batmap
    from vhdcore.formats.vhd.footer import Footer
    from vhdcore.formats.vhd.header import DynamicHeader

    vhdcore.create(path, size, block_size=block_size).close()
    data = bytearray(path.read_bytes())
    footer = Footer.from_bytes(data[-512:])
    footer = dataclasses.replace(footer, creator_app=b"tap\0",
                                 creator_version=0x00010003).with_checksum()
    header = DynamicHeader.from_bytes(data[512:1536])
    at = header.table_offset + bat_bytes(header.max_table_entries)
    map_bytes = ((header.max_table_entries + 7) // 8 + 511) // 512 * 512
    batmap = Batmap(b"tdbatmap", at + 512, map_bytes // 512, 0x00010002, 0, 0,
                    header_offset=at).with_map(bytes(map_bytes))
    image = data[:at] + batmap.to_bytes() + batmap.map + footer.to_bytes()
    image[:512] = footer.to_bytes()
    path.write_bytes(bytes(image))


def set_full(path, blocks):
    """Mark ``blocks`` full in the image's batmap (header checksum included)."""
    with vhdcore.open(path, "r+") as image:
        batmap = image.batmap
        data = bytearray(batmap.map)
        for block in blocks:
            data[block // 8] |= 0x80 >> (block % 8)
        batmap = batmap.with_map(bytes(data))
        image._file.pwrite(batmap.header_offset, batmap.to_bytes() + batmap.map)


def test_grow_relocates_blktap_batmap(tmp_path, rng):
    path = tmp_path / "tap.vhd"
    tap_image(path, MiB, 4096)
    model = bytearray(MiB)
    with vhdcore.open(path, "r+") as image:
        assert image.batmap is not None and image.batmap.map_trusted
        random_writes(image, model, rng, 10)
        image.write(0, b"\x01" * 4096)
        model[:4096] = b"\x01" * 4096
        first = int(image.bat.min()) * 512
        assert first >= image.batmap.end
    set_full(path, [0])
    result = resize(path, 4 * MiB)
    assert result.blocks_moved > 0
    model.extend(bytes(3 * MiB))
    with vhdcore.open(path) as image:
        batmap = image.batmap
        assert batmap is not None and batmap.map_trusted
        assert batmap.header_offset == image.header.table_end
        assert batmap.is_full(0) and not batmap.is_full(1)
        assert batmap.size_bytes * 8 >= image.header.max_table_entries
        assert image.read(0, len(model)) == bytes(model)
        assert not [p for p in batmap.validate(path, image.file_size, image.header, image.bat)]
