"""Compact against an in-memory model, the peers, and a crash at every write."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_checks_clean
from helpers import random_writes as _random_writes

import vhdcore
from vhdcore import errors
from vhdcore.formats.vhd.check import check
from vhdcore.formats.vhd.compact import compact

MiB = 1024 * 1024


def random_writes(image, model, rng, count, max_len=150_000, zero_fraction=0):
    _random_writes(image, model, rng, count, max_len=max_len, zero_fraction=zero_fraction)




def zero_some_blocks(image, model, rng, fraction=0.5):
    """Overwrite a random share of the allocated blocks with zeros (whole or in parts)."""
    block = image.block_size
    for index in np.flatnonzero(image.bat != 0xFFFFFFFF).tolist():
        if rng.random() < fraction:
            start = index * block
            end = min(start + block, len(model))
            image.write(start, bytes(end - start))
            model[start:end] = bytes(end - start)


def check_peers(peers, image, model, tmp_path):
    raw = tmp_path / "expected.raw"
    raw.write_bytes(bytes(model))
    peers.run("qemu-img", "compare", "-q", "-f", "vpc", "-F", "raw", image, raw)
    peers.run("qemu-img", "info", "-f", "vpc", image)
    peers.run("vhdiinfo", image)


def nonzero_blocks(model, block):
    return sum(1 for i in range(0, len(model), block) if any(model[i : i + block]))




@pytest.mark.parametrize("block_size", [512 * 1024, MiB, 2 * MiB])
def test_dynamic_against_model_and_peers(tmp_path, rng, peers, block_size):
    path = tmp_path / "d.vhd"
    model = bytearray(12 * MiB + 3 * 512)
    with vhdcore.create(path, len(model), block_size=block_size) as image:
        random_writes(image, model, rng, 30)
        zero_some_blocks(image, model, rng)
    before = path.stat().st_size
    estimate = compact(path, dry_run=True)
    assert path.stat().st_size == before
    copy = compact(path, output=tmp_path / "copy.vhd")
    result = compact(path)
    assert result.bytes_reclaimed == estimate.bytes_reclaimed == before - path.stat().st_size
    assert result.blocks_dropped > 0 and result.bytes_reclaimed > 0
    assert copy.file_size_after == path.stat().st_size
    for image_path in (path, tmp_path / "copy.vhd"):
        with vhdcore.open(image_path) as image:
            assert image.read(0, len(model)) == bytes(model)
            assert image.allocated_blocks == nonzero_blocks(model, block_size)
            blocks = image.allocated_blocks * (block_size + 512)
            assert image.file_size == image._metadata_end + blocks + 512
        check_peers(peers, image_path, model, tmp_path)
        assert check(image_path, deep=True).status == "clean"
    # compacting a compact image changes nothing
    again = compact(path)
    assert again.bytes_reclaimed == 0 and again.blocks_moved == 0


def test_differencing_keeps_zeros_that_hide_parent_data(tmp_path):
    parent = tmp_path / "p.vhd"
    child = tmp_path / "c.vhd"
    size = 4 * MiB
    with vhdcore.create(parent, size, block_size=MiB) as image:
        image.write(0, b"\xaa" * MiB)  # block 0: parent data
    with vhdcore.create(child, parent=parent) as image:
        image.write(0, bytes(MiB))  # zeros over parent data: content, must stay
        image.write(MiB, bytes(4096))  # zeros over parent zeros: may go ...
        image.write(MiB, b"x")  # ... (they are written, then made non-zero ...)
        image.write(MiB, b"\0")  # ... and zero again)
        image.write(2 * MiB + 512, b"data")  # a real block
        image.write(3 * MiB, b"y")  # data, then zeros again: an all-zero block
        image.write(3 * MiB, bytes(512))
        expected = image.read(0, size)
        assert image.allocated_blocks == 4
    result = compact(child)
    assert result.blocks_dropped == 2
    with vhdcore.open(child) as image:
        assert image.allocated_blocks == 2
        assert image.read(0, size) == expected
        assert not any(image.read(0, MiB))
    result = compact(child, output=tmp_path / "c2.vhd")
    with vhdcore.open(tmp_path / "c2.vhd") as image:
        assert image.read(0, size) == expected
        assert image.parent.path == str(parent)


def test_random_chains(tmp_path, rng):
    size = 6 * MiB
    for round_ in range(3):
        folder = tmp_path / str(round_)
        folder.mkdir()
        model = bytearray(size)
        with vhdcore.create(folder / "p.vhd", size, block_size=512 * 1024) as image:
            random_writes(image, model, rng, 12)
        with vhdcore.create(folder / "c.vhd", parent=folder / "p.vhd") as image:
            random_writes(image, model, rng, 12)
            zero_some_blocks(image, model, rng)
        compact(folder / "c.vhd")
        with vhdcore.open(folder / "c.vhd") as image:
            assert image.read(0, size) == bytes(model)


def test_qemu_made_image(tmp_path, peers):
    path = tmp_path / "q.vhd"
    peers.run("qemu-img", "create", "-q", "-f", "vpc", path, "20M")
    writes = ["write -P 0x11 0 3M", "write -P 0x22 8M 2M", "write -P 0x33 14M 1M",
              "write -P 0 0 2M", "write -P 0 8M 2M"]
    for command in writes:
        peers.run("qemu-io", "-f", "vpc", "-c", command, path)
    with vhdcore.open(path) as image:
        model = image.read(0, image.virtual_size)
        assert image.allocated_blocks == 4
    result = compact(path)
    assert result.blocks_dropped == 2 and result.bytes_reclaimed >= 4 * MiB
    check_peers(peers, path, model, tmp_path)
    # qemu appends new blocks after the compacted ones
    peers.run("qemu-io", "-f", "vpc", "-c", "write -P 0x44 18M 1M", path)
    with vhdcore.open(path) as image:
        assert image.read(18 * MiB, MiB) == b"\x44" * MiB
        assert image.read(0, 16 * MiB) == model[: 16 * MiB]


def test_refusals_and_cli(tmp_path, rng, cli):
    with vhdcore.create(tmp_path / "f.vhd", MiB, type="fixed"):
        pass
    with pytest.raises(errors.UnsupportedError, match="fixed"):
        compact(tmp_path / "f.vhd")
    path = tmp_path / "d.vhd"
    model = bytearray(4 * MiB)
    with vhdcore.create(path, len(model), block_size=MiB) as image:
        random_writes(image, model, rng, 5)
        zero_some_blocks(image, model, rng, fraction=1.0)
    code, out, err = cli("compact", path, "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(out)["dry_run"]
    code, out, err = cli("compact", path, "-o", tmp_path / "o.vhd", "-p")
    assert code == 0 and "into" in out
    code, out, err = cli("compact", path, "-o", tmp_path / "o.vhd")
    assert code == 1 and "exists" in err
    code, out, err = cli("compact", path, "--json")
    report = json.loads(out)
    assert report["file_size_after"] < report["file_size_before"]
    with vhdcore.open(path) as image:
        assert image.allocated_blocks == 0 and not any(image.read(0, len(model)))


@pytest.mark.parametrize("kind", ["dynamic", "differencing"])
def test_crash_at_every_write(tmp_path, rng, crasher, kind):
    """After a crash at any write the image opens for writing and reads the
    same; compacting again reaches the same result as an uninterrupted run."""
    path = tmp_path / "d.vhd"
    model = bytearray(4 * MiB)
    if kind == "differencing":
        with vhdcore.create(tmp_path / "p.vhd", len(model), block_size=256 * 1024) as image:
            random_writes(image, model, rng, 4)
        with vhdcore.create(path, parent=tmp_path / "p.vhd") as image:
            random_writes(image, model, rng, 14)
            zero_some_blocks(image, model, rng)
    else:
        with vhdcore.create(path, len(model), block_size=256 * 1024) as image:
            random_writes(image, model, rng, 14)
            zero_some_blocks(image, model, rng)
    pristine = path.read_bytes()
    crashed, total = crasher(None, compact, path)
    assert not crashed and total >= 4
    final_size = path.stat().st_size
    assert final_size < len(pristine)
    for limit in range(1, total + 1):
        path.write_bytes(pristine)
        crashed, _ = crasher(limit, compact, path)
        assert crashed
        with vhdcore.open(path, "r+") as image:
            assert image.read(0, len(model)) == bytes(model), limit
        raw = path.read_bytes()
        assert raw[:512] == raw[-512:]
        assert_checks_clean(path, deep=False)
        compact(path)
        assert path.stat().st_size == final_size, limit
        with vhdcore.open(path) as image:
            assert image.read(0, len(model)) == bytes(model), limit
        assert check(path, deep=True).status == "clean"


def test_blktap_batmap_bits_follow_dropped_blocks(tmp_path):
    import dataclasses

    from vhdcore.formats.vhd.bat import bat_bytes
    from vhdcore.formats.vhd.batmap import Batmap
    from vhdcore.formats.vhd.footer import Footer
    from vhdcore.formats.vhd.header import DynamicHeader

    path = tmp_path / "tap.vhd"
    vhdcore.create(path, 4 * MiB, block_size=MiB).close()
    data = bytearray(path.read_bytes())
    footer = dataclasses.replace(Footer.from_bytes(data[-512:]), creator_app=b"tap\0",
                                 creator_version=0x00010003).with_checksum()
    header = DynamicHeader.from_bytes(data[512:1536])
    at = header.table_offset + bat_bytes(header.max_table_entries)
    batmap = Batmap(b"tdbatmap", at + 512, 1, 0x00010002, 0, 0, header_offset=at)
    empty = batmap.with_map(bytes(512))
    image_bytes = data[:at] + empty.to_bytes() + empty.map + footer.to_bytes()
    image_bytes[:512] = footer.to_bytes()
    path.write_bytes(bytes(image_bytes))
    with vhdcore.open(path, "r+") as image:
        image.write(0, b"\x05" * MiB)
        image.write(MiB, b"\x06" * MiB)
        image.write(0, bytes(MiB))  # block 0: full of zeros now
    full = batmap.with_map(b"\xc0" + bytes(511))  # blocks 0 and 1 written in full
    with open(path, "r+b") as handle:
        handle.seek(at)
        handle.write(full.to_bytes() + full.map)
    for output in (tmp_path / "copy.vhd", None):
        compact(path, output=output)
        with vhdcore.open(output or path) as image:
            assert image.allocated_blocks == 1
            assert image.batmap.map_trusted
            assert not image.batmap.is_full(0) and image.batmap.is_full(1)
            assert image.read(MiB, MiB) == b"\x06" * MiB and not any(image.read(0, MiB))
