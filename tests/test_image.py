"""The VHD object against an in-memory model of what was written."""

from __future__ import annotations

import io
import os
import shutil

import pytest
from helpers import random_writes as _random_writes

import vhdcore
from vhdcore import errors
from vhdcore.disk.extent import Extent

MiB = 1024 * 1024


def random_writes(image, model, rng, count, max_len=300_000, zero_fraction=0.2):
    _random_writes(image, model, rng, count, max_len=max_len, zero_fraction=zero_fraction)


def assert_reads_like(image, model, rng, reads=60):
    assert image.read(0, len(model)) == bytes(model)
    for _ in range(reads):
        length = int(rng.integers(0, 100_000))
        offset = int(rng.integers(0, len(model) - length + 1))
        assert image.read(offset, length) == bytes(model[offset : offset + length])


@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
@pytest.mark.parametrize("block_size", [512 * 1024, 2 * MiB])
def test_random_writes_read_back(tmp_path, rng, kind, block_size):
    size = 12 * MiB + 4096
    path = tmp_path / "disk.vhd"
    model = bytearray(size)
    with vhdcore.create(
        path, size, type=kind, block_size=None if kind == "fixed" else block_size
    ) as image:
        assert image.virtual_size == size
        random_writes(image, model, rng, 40)
        assert_reads_like(image, model, rng)
    with vhdcore.open(path) as image:
        assert image.type == kind
        assert_reads_like(image, model, rng)


def test_size_rounded_up_to_sector_and_reported(tmp_path):
    with vhdcore.create(tmp_path / "odd.vhd", 10 * MiB + 1) as image:
        assert image.virtual_size == 10 * MiB + 512
        assert any("rounded up" in note for note in image.notes)


def test_zero_writes_do_not_allocate(tmp_path):
    with vhdcore.create(tmp_path / "z.vhd", 8 * MiB) as image:
        size_before = os.path.getsize(image.path)
        image.write(0, bytes(3 * MiB))
        assert image.allocated_blocks == 0
        assert os.path.getsize(image.path) == size_before
        image.write(MiB, b"x")
        assert image.allocated_blocks == 1


def test_writes_past_end_refused(tmp_path):
    with vhdcore.create(tmp_path / "e.vhd", 4 * MiB) as image:
        with pytest.raises(errors.OutOfRangeError):
            image.write(4 * MiB - 1, b"ab")
        with pytest.raises(errors.OutOfRangeError):
            image.read(4 * MiB, 1)
        with pytest.raises(errors.OutOfRangeError):
            image.read(-1, 1)


def test_read_only_open_refuses_writes_and_leaves_file_identical(tmp_path, rng):
    path = tmp_path / "ro.vhd"
    model = bytearray(6 * MiB)
    with vhdcore.create(path, len(model)) as image:
        random_writes(image, model, rng, 10)
    before = path.read_bytes()
    with vhdcore.open(path) as image:
        with pytest.raises(errors.ReadOnlyError):
            image.write(0, b"x")
        image.read(0, len(model))
        image.extents()
    assert path.read_bytes() == before


def test_extents_dynamic(tmp_path):
    with vhdcore.create(tmp_path / "m.vhd", 8 * MiB) as image:
        image.write(2 * MiB + 10, b"abc")
        image.write(6 * MiB, b"z" * MiB)
        extents = image.extents()
        states = [(e.offset, e.length, e.state) for e in extents]
        assert states == [
            (0, 2 * MiB, "zero"),
            (2 * MiB, 2 * MiB, "data"),
            (4 * MiB, 2 * MiB, "zero"),
            (6 * MiB, 2 * MiB, "data"),
        ]
        assert sum(e.length for e in image.extents(MiB, 5 * MiB)) == 5 * MiB
        data = [e for e in extents if e.state == "data"]
        for extent in data:
            with open(image.path, "rb") as raw:
                raw.seek(extent.file_offset)
                assert raw.read(extent.length) == image.read(extent.offset, extent.length)


def test_extents_fixed_maps_straight_through(tmp_path):
    with vhdcore.create(tmp_path / "f.vhd", 3 * MiB, type="fixed") as image:
        assert image.extents() == [Extent(0, 3 * MiB, "data", 0, 0)]


def test_differencing_chain_three_deep_matches_model(tmp_path, rng):
    size = 10 * MiB
    model = bytearray(size)
    base = tmp_path / "base.vhd"
    with vhdcore.create(base, size, block_size=MiB) as image:
        random_writes(image, model, rng, 15)
    paths = [base]
    for level in range(3):
        child = tmp_path / f"child{level}.vhd"
        with vhdcore.create(child, parent=paths[-1]) as image:
            assert image.type == "differencing"
            assert image.block_size == MiB
            assert len(image.chain) == level + 2
            assert_reads_like(image, model, rng, reads=10)
            random_writes(image, model, rng, 15, max_len=200_000)
            assert_reads_like(image, model, rng)
        paths.append(child)
    with vhdcore.open(paths[-1]) as leaf:
        assert [m.path for m in leaf.chain] == [str(p) for p in reversed(paths)]
        assert_reads_like(leaf, model, rng)
        covered = sum(e.length for e in leaf.extents())
        assert covered == size
        for extent in leaf.extents():
            assert leaf.read(extent.offset, extent.length) == bytes(
                model[extent.offset : extent.end]
            )
            if extent.state == "zero":
                assert not any(model[extent.offset : extent.end])


def test_differencing_zero_write_hides_parent_data(tmp_path):
    base = tmp_path / "base.vhd"
    with vhdcore.create(base, 4 * MiB) as image:
        image.write(0, b"\xaa" * 8192)
    with vhdcore.create(tmp_path / "child.vhd", parent=base) as child:
        child.write(100, bytes(1000))  # partial sectors, zeros over parent data
        expected = bytearray(b"\xaa" * 8192)
        expected[100:1100] = bytes(1000)
        assert child.read(0, 8192) == bytes(expected)
        # Only the sectors written are the child's; the rest still come from the parent.
        states = [(e.offset, e.length, e.state) for e in child.extents(0, 8192)]
        assert states == [(0, 1536, "data"), (1536, 8192 - 1536, "parent")]


def test_child_is_found_after_moving_the_pair(tmp_path, rng):
    one = tmp_path / "one"
    one.mkdir()
    with vhdcore.create(one / "base.vhd", 2 * MiB) as image:
        image.write(0, b"parent data")
    with vhdcore.create(one / "child.vhd", parent=one / "base.vhd"):
        pass
    two = tmp_path / "two"
    shutil.move(one, two)
    with vhdcore.open(two / "child.vhd") as child:
        assert child.read(0, 11) == b"parent data"
        assert child.parent.path == str(two / "base.vhd")


def test_missing_parent_is_a_clear_error(tmp_path):
    with vhdcore.create(tmp_path / "base.vhd", 2 * MiB):
        pass
    with vhdcore.create(tmp_path / "child.vhd", parent=tmp_path / "base.vhd"):
        pass
    os.unlink(tmp_path / "base.vhd")
    with pytest.raises(errors.ParentNotFoundError, match="base.vhd"):
        vhdcore.open(tmp_path / "child.vhd")


def test_parent_uuid_mismatch_refused(tmp_path):
    with vhdcore.create(tmp_path / "base.vhd", 2 * MiB):
        pass
    with vhdcore.create(tmp_path / "child.vhd", parent=tmp_path / "base.vhd"):
        pass
    os.unlink(tmp_path / "base.vhd")
    with vhdcore.create(tmp_path / "base.vhd", 2 * MiB):  # same name, new UUID
        pass
    with pytest.raises(errors.ParentMismatchError, match="UUID"):
        vhdcore.open(tmp_path / "child.vhd")


def test_chain_loop_refused(tmp_path):
    with vhdcore.create(tmp_path / "a.vhd", 2 * MiB):
        pass
    with vhdcore.create(tmp_path / "b.vhd", parent=tmp_path / "a.vhd"):
        pass
    # Make a.vhd a copy of b.vhd: b's parent is now itself, through a.vhd.
    shutil.copy(tmp_path / "b.vhd", tmp_path / "a.vhd")
    with pytest.raises((errors.ChainLoopError, errors.ParentMismatchError)):
        vhdcore.open(tmp_path / "b.vhd")
    # A child whose locator names itself.
    shutil.copy(tmp_path / "b.vhd", tmp_path / "self.vhd")
    os.replace(tmp_path / "self.vhd", tmp_path / "a.vhd")
    with pytest.raises((errors.ChainLoopError, errors.ParentMismatchError)):
        vhdcore.open(tmp_path / "a.vhd")


def test_chain_depth_limit(tmp_path):
    previous = tmp_path / "d0.vhd"
    with vhdcore.create(previous, MiB):
        pass
    for level in range(1, 5):
        path = tmp_path / f"d{level}.vhd"
        with vhdcore.create(path, parent=previous):
            pass
        previous = path
    with vhdcore.open(previous, max_chain_depth=5) as leaf:
        assert len(leaf.chain) == 5
    with pytest.raises(errors.LimitError, match="deeper"):
        vhdcore.open(previous, max_chain_depth=3)


def test_rawio_view(tmp_path, rng):
    size = 3 * MiB
    model = bytearray(size)
    with vhdcore.create(tmp_path / "io.vhd", size) as image:
        random_writes(image, model, rng, 5)
        stream = image.rawio()
        assert isinstance(stream, io.RawIOBase)
        buffered = io.BufferedReader(stream)
        assert buffered.read() == bytes(model)
        stream.seek(-10, os.SEEK_END)
        assert stream.read(100) == bytes(model[-10:])
        stream.seek(1000)
        stream.write(b"hello")
        model[1000:1005] = b"hello"
        assert stream.tell() == 1005
        assert image.read(0, size) == bytes(model)


def test_existing_file_not_replaced(tmp_path):
    path = tmp_path / "x.vhd"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        vhdcore.create(path, MiB)
    assert path.read_bytes() == b"precious"
    with vhdcore.create(path, MiB, overwrite=True) as image:
        assert image.virtual_size == MiB


def test_limits(tmp_path):
    with pytest.raises(errors.LimitError, match="2190433320960"):
        vhdcore.create(tmp_path / "big.vhd", 2041 * 1024**3)
    with pytest.raises(errors.LimitError, match="block size"):
        vhdcore.create(tmp_path / "bs.vhd", MiB, block_size=3000)
    assert not list(tmp_path.iterdir())


def test_second_writer_is_refused(tmp_path):
    with vhdcore.create(tmp_path / "l.vhd", MiB) as image:
        with pytest.raises(errors.LockedError):
            vhdcore.open(image.path, "r+")
        with vhdcore.open(image.path) as reader:  # readers are not blocked
            assert reader.virtual_size == MiB


def test_damaged_primary_footer_opens_read_only_from_copy(tmp_path):
    path = tmp_path / "d.vhd"
    with vhdcore.create(path, 2 * MiB) as image:
        image.write(0, b"data")
    size = os.path.getsize(path)
    with open(path, "r+b") as raw:
        raw.seek(size - 512 + 70)
        raw.write(b"\x01\x02")  # corrupt the UUID: checksum now wrong
    with pytest.warns(vhdcore.formats.vhd.image.VHDWarning):
        with vhdcore.open(path) as image:
            assert image.read(0, 4) == b"data"
            assert any("copy at offset 0" in n for n in image.notes)
    with pytest.raises(errors.CorruptImageError, match="repair"):
        vhdcore.open(path, "r+")


@pytest.mark.parametrize(
    "damage, error",
    [
        ("truncate", errors.CorruptImageError),
        ("bat_outside", errors.CorruptImageError),
        ("bat_overlap", errors.CorruptImageError),
        ("block_size", errors.FormatError),
        ("tiny", errors.FormatError),
        ("not_vhd", errors.FormatError),
    ],
)
def test_damaged_images_raise_vhd_errors(tmp_path, damage, error):
    path = tmp_path / "bad.vhd"
    with vhdcore.create(path, 8 * MiB) as image:
        image.write(0, b"a" * 512)
        image.write(2 * MiB, b"b" * 512)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:-512 - 1024 * 1024] + data[-512:]
    elif damage == "bat_outside":
        data[1536:1540] = (0x00FFFFFF).to_bytes(4, "big")
    elif damage == "bat_overlap":
        data[1540:1544] = data[1536:1540]
    elif damage == "block_size":
        data[512 + 32 : 512 + 36] = (3000).to_bytes(4, "big")
    elif damage == "tiny":
        data = data[:100]
    elif damage == "not_vhd":
        data = bytearray(b"\x00" * 4096)
    path.write_bytes(bytes(data))
    with pytest.raises(error) as caught:
        vhdcore.open(path)
    assert isinstance(caught.value, errors.VHDError)
    assert str(path) in str(caught.value)
