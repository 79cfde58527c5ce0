"""Reading qcow2: every image qemu makes reads as qemu reads it, and hostile ones are refused.

The referee is ``qemu-img convert -f qcow2 -O raw`` (the bytes) and
``qemu-img map`` (what is allocated). Images are made by qemu-img and
qemu-io in ``tmp_path``; without them the tests skip, and fail in CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

import vhdcore
from vhdcore import formats
from vhdcore.disk.extent import DATA, ENCODED, PARENT, ZERO
from vhdcore.disk.virtual import VirtualDisk
from vhdcore.errors import (
    ChainLoopError,
    CorruptImageError,
    ImageError,
    LimitError,
    UnsafeParentError,
    UnsupportedError,
)
from vhdcore.formats.qcow2 import constants as C
from vhdcore.formats.qcow2 import header as qcow2_header

KiB, MiB = 1 << 10, 1 << 20

pytestmark = pytest.mark.peer


def _open(path, **options):
    return formats.get("qcow2").open(path, **options)


def _qemu_raw(peers, path, tmp_path) -> bytes:
    out = tmp_path / (os.path.basename(path) + ".qemu.raw")
    peers.run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, out,
              cwd=os.path.dirname(path))
    return out.read_bytes()


def _read_all(disk) -> bytes:
    buffer = bytearray(disk.virtual_size)
    step = 3 * MiB + 512  # reads that cross clusters and tables at odd places
    for offset in range(0, disk.virtual_size, step):
        view = memoryview(buffer)[offset : offset + step]
        assert disk.readinto(offset, view) == len(view)
    return bytes(buffer)


def _qemu_io(peers, path, *commands, fmt="qcow2"):
    argv = ["qemu-io", "-f", fmt]
    for command in commands:
        argv += ["-c", command]
    peers.run(*argv, path, cwd=os.path.dirname(path))


def _create(peers, path, size, *options, backing=None, backing_fmt=None):
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if options:
        argv += ["-o", ",".join(options)]
    if backing is not None:
        argv += ["-b", backing, "-F", backing_fmt]
    # qemu opens a relative data file from its working directory (vhdcore
    # from the image's): every qemu tool runs in the image's directory.
    peers.run(*argv, path, str(size), cwd=os.path.dirname(path))


def _writes(peers, path, size, rng, count=24, max_length=200 * KiB, fmt="qcow2"):
    """Patterned writes at random offsets (and a few zero writes and discards)."""
    commands = []
    for index in range(count):
        length = int(rng.integers(1, max_length // 512)) * 512
        offset = int(rng.integers(0, (size - length) // 512)) * 512
        if index % 7 == 5:
            commands.append(f"write -z {offset} {length}")
        elif index % 11 == 10 and fmt == "qcow2":
            commands.append(f"discard {offset} {length}")
        else:
            commands.append(f"write -P {index * 37 % 255 + 1} {offset} {length}")
    _qemu_io(peers, path, *commands, fmt=fmt)


def _assert_reads_like_qemu(peers, path, tmp_path, **options):
    expected = _qemu_raw(peers, path, tmp_path)
    with _open(path, **options) as disk:
        assert isinstance(disk, VirtualDisk) and disk.format == "qcow2"
        assert disk.virtual_size == len(expected)
        assert _read_all(disk) == expected
        _assert_extents_agree(disk, expected)
    return expected


def _assert_extents_agree(disk, expected: bytes) -> None:
    """Extents tile the disk, zero runs are zeros, data runs are the file's bytes."""
    position = 0
    for extent in disk.extents():
        assert extent.offset == position and extent.length > 0
        position = extent.end
        want = expected[extent.offset : extent.end]
        if extent.state == ZERO:
            assert want.count(0) == len(want), extent
        elif extent.state in (DATA, PARENT):
            file = disk.member_file(extent.depth)
            got = file.pread(extent.file_offset, min(extent.length,
                             max(0, file.size() - extent.file_offset)))
            assert want.startswith(got) and want[len(got):].count(0) == len(want) - len(got)
        else:
            assert extent.state == ENCODED
    assert position == disk.virtual_size


def _qemu_map(peers, path):
    result = peers.run("qemu-img", "map", "-f", "qcow2", "--output=json", path,
                       cwd=os.path.dirname(path))
    return json.loads(result.stdout)


def _assert_map_agrees(peers, path):
    """Our extents say what ``qemu-img map`` says: no data where it has none, and
    data at the same depth (and host offset, where qemu gives one) where it has some."""
    with _open(path) as disk:
        extents = disk.extents()
    for entry in _qemu_map(peers, path):
        start, end = entry["start"], entry["start"] + entry["length"]
        for extent in extents:
            if extent.end <= start or extent.offset >= end:
                continue
            where = (entry, extent)
            if not entry["data"]:
                assert extent.state == ZERO, where
                continue
            assert extent.state != ZERO and extent.depth == entry["depth"], where
            if "offset" in entry and extent.state in (DATA, PARENT):
                at = max(start, extent.offset)
                ours = extent.file_offset + at - extent.offset
                assert ours == entry["offset"] + at - start, where


# -- layouts qemu writes ------------------------------------------------------


@pytest.mark.parametrize("options,size", [
    (("compat=0.10",), 9 * MiB + 4096),
    (("compat=1.1",), 9 * MiB + 4096),
    (("cluster_size=512",), 3 * MiB + 1000 * 512),
    (("cluster_size=4096",), 9 * MiB),
    (("cluster_size=65536", "compat=0.10", "refcount_bits=16"), 17 * MiB),
    (("cluster_size=2M",), 20 * MiB + 12345 * 512),
    (("lazy_refcounts=on",), 9 * MiB),
    (("preallocation=metadata",), 9 * MiB),
    (("cluster_size=4096", "refcount_bits=1"), 9 * MiB),
], ids=lambda value: ",".join(value) if isinstance(value, tuple) else str(value))
def test_layouts_read_like_qemu(tmp_path, peers, rng, options, size):
    path = tmp_path / "disk.qcow2"
    _create(peers, path, size, *options)
    _writes(peers, path, size, rng)
    _assert_reads_like_qemu(peers, path, tmp_path)
    _assert_map_agrees(peers, path)


@pytest.mark.parametrize("cluster", ["16384", "65536", "2M"])
def test_extended_l2_subclusters(tmp_path, peers, rng, cluster):
    path = tmp_path / "ext.qcow2"
    size = 12 * MiB
    _create(peers, path, size, "extended_l2=on", f"cluster_size={cluster}")
    sub = int(cluster.replace("2M", str(2 * MiB))) // 32
    _qemu_io(peers, path, f"write -P 0x5a {sub} {sub}", f"write -P 0x6b {5 * sub} {3 * sub}",
             f"write -z {40 * sub} {2 * sub}", f"write -P 0x7c {7 * MiB + 512} 1024")
    _writes(peers, path, size, rng, count=12, max_length=64 * KiB)
    with _open(path) as disk:
        assert disk.header.extended_l2
    _assert_reads_like_qemu(peers, path, tmp_path)
    _assert_map_agrees(peers, path)


def test_extended_l2_over_a_backing_file(tmp_path, peers):
    base = tmp_path / "base.qcow2"
    _create(peers, base, 4 * MiB, "cluster_size=65536")
    _qemu_io(peers, base, "write -P 0x11 0 4M")
    top = tmp_path / "top.qcow2"
    _create(peers, top, 4 * MiB, "extended_l2=on", backing="base.qcow2", backing_fmt="qcow2")
    _qemu_io(peers, top, "write -P 0x22 2048 2048", "write -z 65536 4096")
    expected = _assert_reads_like_qemu(peers, top, tmp_path)
    _assert_map_agrees(peers, top)
    assert expected[:2048] == b"\x11" * 2048 and expected[2048:4096] == b"\x22" * 2048
    with _open(top) as disk:
        states = {(e.state, e.depth) for e in disk.extents(0, 128 * KiB)}
        assert {(DATA, 0), (PARENT, 1), (ZERO, -1)} <= states


def _compressed(peers, tmp_path, rng, kind):
    plain = tmp_path / "plain.qcow2"
    _create(peers, plain, 8 * MiB)
    _writes(peers, plain, 8 * MiB, rng, count=16)
    path = tmp_path / f"{kind}.qcow2"
    peers.run("qemu-img", "convert", "-c", "-f", "qcow2", "-O", "qcow2",
              "-o", f"compression_type={kind}", plain, path)
    return path


def test_zlib_compressed_clusters(tmp_path, peers, rng):
    path = _compressed(peers, tmp_path, rng, "zlib")
    _assert_reads_like_qemu(peers, path, tmp_path)
    _assert_map_agrees(peers, path)
    with _open(path) as disk:
        assert any(e.state == ENCODED and e.depth == 0 for e in disk.extents())


def test_zstd_compressed_clusters(tmp_path, peers, rng, monkeypatch):
    path = _compressed(peers, tmp_path, rng, "zstd")
    try:
        import zstandard  # noqa: F401
    except ImportError:
        with _open(path) as disk, pytest.raises(UnsupportedError, match=r"vhdcore\[zstd\]"):
            _read_all(disk)
        # The reader's plumbing, with the zstd tool standing in for the package.
        zstd = shutil.which("zstd")
        if zstd is None:
            pytest.skip("neither the zstandard package nor the zstd tool is installed")
        monkeypatch.setitem(sys.modules, "zstandard", _ZstdToolModule(zstd))
    _assert_reads_like_qemu(peers, path, tmp_path)


class _ZstdToolModule:
    """The part of the ``zstandard`` package the reader uses, done by the zstd tool."""

    class ZstdError(Exception):
        pass

    def __init__(self, tool):
        self.tool = tool

    def ZstdDecompressor(self):  # noqa: N802 - the package's name
        tool, error = self.tool, self.ZstdError

        class Reader:
            def __init__(self, stream, read_across_frames=False):
                self.data = stream.read()

            def read(self, size):
                # The tool goes on past the first frame (into the next cluster's
                # data, or fails on padding): the first frame's bytes come first.
                out = subprocess.run([tool, "-d", "-c", "-q"], input=self.data,
                                     capture_output=True).stdout
                if not out:
                    raise error("no zstd frame")
                return out[:size]

        class Decompressor:
            def stream_reader(self, stream, read_across_frames=False):
                return Reader(stream, read_across_frames)

        return Decompressor()


def test_internal_snapshot_then_writes(tmp_path, peers, rng):
    path = tmp_path / "snap.qcow2"
    _create(peers, path, 9 * MiB)
    _writes(peers, path, 9 * MiB, rng, count=10)
    peers.run("qemu-img", "snapshot", "-c", "before", path)
    _writes(peers, path, 9 * MiB, rng, count=10)
    peers.run("qemu-img", "snapshot", "-c", "second", path)
    _assert_reads_like_qemu(peers, path, tmp_path)
    with _open(path) as disk:
        assert [s.name for s in disk.snapshots] == ["before", "second"]
        assert [s.id for s in disk.snapshots] == ["1", "2"]
        assert all(s.virtual_size == 9 * MiB and s.date > 1e9 for s in disk.snapshots)


def test_qcow2_over_qcow2_over_raw(tmp_path, peers, rng):
    size = 6 * MiB
    raw = tmp_path / "base.raw"
    raw.write_bytes(bytes(range(256)) * (size // 256 // 2))  # shorter than the disk
    middle = tmp_path / "middle.qcow2"
    _create(peers, middle, size, backing="base.raw", backing_fmt="raw")
    _writes(peers, middle, size, rng, count=8)
    top = tmp_path / "top.qcow2"
    _create(peers, top, size, "cluster_size=4096", backing="middle.qcow2", backing_fmt="qcow2")
    _writes(peers, top, size, rng, count=8)
    _assert_reads_like_qemu(peers, top, tmp_path)
    _assert_map_agrees(peers, top)
    with _open(top) as disk:
        assert disk.files == [str(top), str(middle), str(raw)]
        depths = {e.depth for e in disk.extents() if e.state == PARENT}
        assert depths == {1, 2}
        assert disk.member_file(2).name == str(raw)


def test_qcow2_over_vhd(tmp_path, peers, rng):
    size = 8 * MiB
    vhd = tmp_path / "base.vhd"
    peers.run("qemu-img", "create", "-q", "-f", "vpc", vhd, str(size))
    _writes(peers, vhd, size, rng, count=8, fmt="vpc")
    top = tmp_path / "top.qcow2"
    with vhdcore.open(vhd) as base:
        virtual = base.virtual_size
    _create(peers, top, virtual, backing="base.vhd", backing_fmt="vpc")
    _writes(peers, top, virtual, rng, count=8)
    _assert_reads_like_qemu(peers, top, tmp_path)
    _assert_map_agrees(peers, top)
    with _open(top) as disk:
        assert disk.backing.format == "vhd" and disk.files == [str(top), str(vhd)]


def test_backing_without_format_is_detected(tmp_path, peers):
    base = tmp_path / "base.qcow2"
    _create(peers, base, 2 * MiB)
    _qemu_io(peers, base, "write -P 0x33 0 1M")
    top = tmp_path / "top.qcow2"
    _create(peers, top, 2 * MiB, backing="base.qcow2", backing_fmt="qcow2")
    _rewrite_header(top, lambda h: h.with_changes(
        extensions=[e for e in h.extensions if e[0] != C.EXT_BACKING_FORMAT]))
    with _open(top) as disk:
        assert disk.header.backing_format is None and disk.backing.format == "qcow2"
        assert _read_all(disk)[:MiB] == b"\x33" * MiB


def test_external_data_file(tmp_path, peers, rng):
    path = tmp_path / "meta.qcow2"
    _create(peers, path, 8 * MiB, "data_file=data.raw")
    _writes(peers, path, 8 * MiB, rng, count=10)
    _assert_reads_like_qemu(peers, path, tmp_path)
    _assert_map_agrees(peers, path)
    with _open(path) as disk:
        data = str(tmp_path / "data.raw")
        assert disk.files == [str(path), data] and disk.member_file(0).name == data


def test_dirty_image_opens(tmp_path, peers):
    path = tmp_path / "dirty.qcow2"
    _create(peers, path, MiB)
    _qemu_io(peers, path, "write -P 0x44 0 64k")
    _rewrite_header(path, lambda h: h.with_changes(
        incompatible_features=h.incompatible_features | C.INCOMPAT_DIRTY))
    with _open(path) as disk:
        assert disk.header.dirty and disk.notes
        assert _read_all(disk)[:65536] == b"\x44" * 65536


def test_the_registry_detects_and_the_engine_reads(tmp_path, peers, rng):
    path = tmp_path / "disk.qcow2"
    _create(peers, path, 5 * MiB)
    _writes(peers, path, 5 * MiB, rng, count=8)
    expected = _qemu_raw(peers, path, tmp_path)
    with open(path, "rb"):
        pass
    from vhdcore.io.imagefile import open_image_file

    with open_image_file(path) as file:
        assert formats.detect(file) is formats.get("qcow2")
    out = tmp_path / "out.raw"
    result = vhdcore.convert(path, out, out_format="raw", digest=True)
    assert out.read_bytes() == expected
    assert result.input_format == "qcow2"
    assert result.digest == hashlib.sha256(expected).hexdigest()


def test_cli_convert_reads_qcow2_and_writes_it_by_its_suffix(tmp_path, peers, cli):
    path = _plain(peers, tmp_path)
    code, out, err = cli("convert", path, tmp_path / "copy.qcow2")
    assert code == 0 and "(qcow2) -> " in out and out.split("\n")[0].endswith("(qcow2)"), err
    peers.run("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", path, tmp_path / "copy.qcow2")
    code, out, err = cli("convert", path, tmp_path / "out.vhd")
    assert code == 0 and f"{path} (qcow2) -> " in out, err
    code, out, err = cli("compare", path, tmp_path / "out.vhd")
    assert code == 0, err
    code, out, err = cli("convert", "-O", "raw", path, tmp_path / "out.qcow2")
    assert code == 0, err
    assert (tmp_path / "out.qcow2").read_bytes() == _qemu_raw(peers, path, tmp_path)


def test_convert_of_a_chain_to_raw(tmp_path, peers, rng):
    base = tmp_path / "base.qcow2"
    _create(peers, base, 4 * MiB)
    _writes(peers, base, 4 * MiB, rng, count=6)
    top = tmp_path / "top.qcow2"
    _create(peers, top, 4 * MiB, "cluster_size=512", backing="base.qcow2", backing_fmt="qcow2")
    _writes(peers, top, 4 * MiB, rng, count=6)
    out = tmp_path / "out.raw"
    vhdcore.convert(top, out, out_format="raw")
    assert out.read_bytes() == _qemu_raw(peers, top, tmp_path)


def test_info_json(tmp_path, peers, cli):
    base = tmp_path / "base.qcow2"
    _create(peers, base, 2 * MiB)
    top = tmp_path / "top.qcow2"
    _create(peers, top, 2 * MiB, "cluster_size=4096", backing="base.qcow2", backing_fmt="qcow2")
    peers.run("qemu-img", "snapshot", "-c", "s1", top)
    code, out, err = cli("info", "--json", top)
    assert code == 0, err
    data = json.loads(out)
    assert data["format"] == "qcow2" and data["virtual_size"] == 2 * MiB
    extra = data["qcow2"]
    assert extra["cluster_size"] == 4096 and extra["backing_file"] == "base.qcow2"
    assert extra["backing_format"] == "qcow2" and data["parent_name"] == "base.qcow2"
    assert [s["name"] for s in extra["snapshots"]] == ["s1"]
    assert [m["filename"] for m in data["chain"]] == [str(top), str(base)]
    code, out, err = cli("info", top)
    assert code == 0 and "qcow2" in out and "base.qcow2" in out, err
    vhd = tmp_path / "same.vhd"
    vhdcore.create(vhd, 2 * MiB).close()
    code, out, err = cli("info", "--json", vhd)
    assert code == 0, err
    shape = _keys(data)
    assert {k for k in shape if not k.startswith("qcow2.")} == _keys(json.loads(out))


def _keys(data, prefix=""):
    out = set()
    for key, value in data.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _keys(value, f"{prefix}{key}.")
    return out


# -- hostile images -------------------------------------------------------------


def _rewrite_header(path, change) -> None:
    """Rewrite the header (extensions and backing name included) in place."""
    with open(path, "r+b") as handle:
        data = handle.read(64 * KiB)
        header = qcow2_header.parse(data, str(path))
        packed = change(header).pack()
        handle.seek(0)
        handle.write(packed + bytes(max(0, header.header_length + 512 - len(packed))))


def _plain(peers, tmp_path, name="x.qcow2", *options):
    path = tmp_path / name
    _create(peers, path, 4 * MiB, *options)
    _qemu_io(peers, path, "write -P 0x55 0 256k")
    return path


def test_backing_file_outside_the_directory_is_refused(tmp_path, peers):
    path = _plain(peers, tmp_path)
    _rewrite_header(path, lambda h: h.with_changes(backing_file="/etc/passwd"))
    with pytest.raises(UnsafeParentError, match=str(path)) as caught:
        _open(path)
    assert "/etc/passwd" in str(caught.value)
    _rewrite_header(path, lambda h: h.with_changes(backing_file="../../../../etc/passwd"))
    with pytest.raises(UnsafeParentError):
        _open(path)


def test_backing_through_a_symlink_is_refused_unless_allowed(tmp_path, peers):
    base = _plain(peers, tmp_path, "base.qcow2")
    (tmp_path / "link.qcow2").symlink_to(base)
    top = tmp_path / "top.qcow2"
    _create(peers, top, 4 * MiB, backing="link.qcow2", backing_fmt="qcow2")
    with pytest.raises(UnsafeParentError, match="symbolic link"):
        _open(top)
    with _open(top, allow_symlinks=True) as disk:
        assert disk.backing is not None


def test_backing_in_another_directory_needs_allowing(tmp_path, peers):
    other = tmp_path / "images"
    other.mkdir()
    base = _plain(peers, other, "base.qcow2")
    (tmp_path / "vm").mkdir()
    top = tmp_path / "vm" / "top.qcow2"
    _create(peers, top, 4 * MiB, backing=str(base), backing_fmt="qcow2")
    with pytest.raises(UnsafeParentError, match="allow-parent-dir"):
        _open(top)
    with _open(top, allow_parent_dirs=[other]) as disk:
        assert disk.files == [str(top), str(base)]


def test_chain_loops_and_depth(tmp_path, peers):
    a = _plain(peers, tmp_path, "a.qcow2")
    _rewrite_header(a, lambda h: h.with_changes(backing_file="a.qcow2",
                                                extensions=h.extensions))
    with pytest.raises(ChainLoopError):
        _open(a)
    previous = None
    for index in range(4):
        path = tmp_path / f"c{index}.qcow2"
        if previous is None:
            _create(peers, path, MiB)
        else:
            _create(peers, path, MiB, backing=previous.name, backing_fmt="qcow2")
        previous = path
    with _open(previous, max_chain_depth=4) as disk:
        assert len(disk.files) == 4
    with pytest.raises(LimitError, match="deeper than the limit of 3"):
        _open(previous, max_chain_depth=3)


def test_data_file_outside_the_directory_is_refused(tmp_path, peers):
    path = tmp_path / "meta.qcow2"
    _create(peers, path, 4 * MiB, "data_file=data.raw")

    def elsewhere(header):
        extensions = [(k, b"/etc/passwd" if k == C.EXT_DATA_FILE else p)
                      for k, p in header.extensions]
        return header.with_changes(extensions=extensions)

    _rewrite_header(path, elsewhere)
    with pytest.raises(UnsafeParentError, match="external data file") as caught:
        _open(path)
    assert str(path) in str(caught.value) and "/etc/passwd" in str(caught.value)


def test_encryption_is_refused(tmp_path, peers):
    path = tmp_path / "enc.qcow2"
    peers.run("qemu-img", "create", "-q", "-f", "qcow2", "--object",
              "secret,id=sec0,data=password", "-o", "encrypt.format=luks,encrypt.key-secret=sec0",
              path, "4M")
    with pytest.raises(UnsupportedError, match="encrypted") as caught:
        _open(path)
    assert str(path) in str(caught.value)


def test_corrupt_bit_is_refused(tmp_path, peers):
    path = _plain(peers, tmp_path)
    _rewrite_header(path, lambda h: h.with_changes(
        incompatible_features=h.incompatible_features | C.INCOMPAT_CORRUPT))
    with pytest.raises(CorruptImageError, match="marked corrupt"):
        _open(path)


def test_unknown_incompatible_feature_is_refused(tmp_path, peers):
    path = _plain(peers, tmp_path)
    _rewrite_header(path, lambda h: h.with_changes(
        incompatible_features=h.incompatible_features | 1 << 40))
    with pytest.raises(UnsupportedError, match="incompatible features"):
        _open(path)


def test_huge_l1_is_an_error_not_memory_error(tmp_path, peers):
    path = _plain(peers, tmp_path)
    original = path.read_bytes()
    _rewrite_header(path, lambda h: h.with_changes(l1_size=0xFFFFFFFF))
    with pytest.raises(LimitError, match="L1 table"):
        _open(path)
    path.write_bytes(original)
    _rewrite_header(path, lambda h: h.with_changes(l1_size=(C.MAX_L1_BYTES // 8)))
    with pytest.raises(ImageError, match="L1 table"):
        _open(path)


def _l1_offset(path):
    with open(path, "rb") as handle:
        return qcow2_header.parse(handle.read(64 * KiB), str(path)).l1_table_offset


def test_l2_table_past_the_end_names_the_file(tmp_path, peers):
    path = _plain(peers, tmp_path)
    with open(path, "r+b") as handle:
        handle.seek(_l1_offset(path))
        handle.write(struct.pack(">Q", C.COPIED | (1 << 40)))
    with pytest.raises(CorruptImageError, match="L2 table") as caught:
        _open(path)
    assert str(caught.value).startswith(str(path))


def test_data_cluster_past_the_end_names_the_file(tmp_path, peers):
    path = _plain(peers, tmp_path)
    with open(path, "rb") as handle:
        handle.seek(_l1_offset(path))
        l2 = struct.unpack(">Q", handle.read(8))[0] & C.OFFSET_MASK
    with open(path, "r+b") as handle:
        handle.seek(l2)
        handle.write(struct.pack(">Q", C.COPIED | (1 << 45)))
    with _open(path) as disk:
        for call in (disk.extents, lambda: _read_all(disk)):
            with pytest.raises(CorruptImageError, match="beyond the end") as caught:
                call()
            assert str(caught.value).startswith(str(path))


def test_unaligned_data_cluster_is_corrupt(tmp_path, peers):
    path = _plain(peers, tmp_path)
    with open(path, "rb") as handle:
        handle.seek(_l1_offset(path))
        l2 = struct.unpack(">Q", handle.read(8))[0] & C.OFFSET_MASK
        handle.seek(l2)
        entry = struct.unpack(">Q", handle.read(8))[0]
    with open(path, "r+b") as handle:
        handle.seek(l2)
        handle.write(struct.pack(">Q", entry + 512))
    with _open(path) as disk, pytest.raises(CorruptImageError, match="unaligned"):
        disk.extents()


def test_garbage_compressed_cluster_is_corrupt(tmp_path, peers, rng):
    path = _compressed(peers, tmp_path, rng, "zlib")
    with _open(path) as disk:
        encoded = next(e for e in disk.extents() if e.state == ENCODED)
        run = next(disk._runs(encoded.offset, 512))
    with open(path, "r+b") as handle:
        handle.seek(run[3])
        handle.write(b"\xff" * 64)
    with _open(path) as disk, pytest.raises(CorruptImageError, match="compressed cluster"):
        disk.readinto(encoded.offset, bytearray(512))


def test_truncated_images_raise_image_errors(tmp_path, peers, rng):
    path = tmp_path / "disk.qcow2"
    _create(peers, path, 4 * MiB)
    _writes(peers, path, 4 * MiB, rng, count=8)
    data = path.read_bytes()
    for cut in (8, 100, 4096, 65536 + 100, len(data) // 2, len(data) - 1000):
        path.write_bytes(data[:cut])
        try:
            with _open(path) as disk:
                _read_all(disk)
                disk.extents()
        except ImageError:
            pass


def test_threads_read_the_same_bytes(tmp_path, peers, rng):
    from concurrent.futures import ThreadPoolExecutor

    path = _compressed(peers, tmp_path, rng, "zlib")
    expected = _qemu_raw(peers, path, tmp_path)
    pieces = [(int(o), int(n)) for o, n in zip(rng.integers(0, 7 * MiB, 200),
                                               rng.integers(1, MiB, 200))]
    with _open(path) as disk:
        def read(piece):
            offset, length = piece
            buffer = bytearray(length)
            disk.readinto(offset, buffer)
            return bytes(buffer) == expected[offset : offset + length]

        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(read, pieces))


def test_windows_of_extents_tile_like_the_whole(tmp_path, peers, rng):
    path = tmp_path / "disk.qcow2"
    _create(peers, path, 9 * MiB, "cluster_size=4096")
    _writes(peers, path, 9 * MiB, rng, count=30)
    with _open(path) as disk:
        whole = disk.extents()
        for offset, length in [(0, 1), (511, 4097), (4096 * 7 + 3, MiB + 5), (9 * MiB - 1, 1)]:
            part = disk.extents(offset, length)
            assert part[0].offset == offset and part[-1].end == offset + length
            for extent in part:
                covering = next(w for w in whole if w.offset <= extent.offset < w.end)
                assert covering.state == extent.state and extent.end <= covering.end
                if extent.file_offset >= 0:
                    assert extent.file_offset == covering.file_offset + (
                        extent.offset - covering.offset)


def test_out_of_range_reads_are_refused(tmp_path, peers):
    path = _plain(peers, tmp_path)
    with _open(path) as disk:
        with pytest.raises(ImageError):
            disk.readinto(4 * MiB - 10, bytearray(20))
        with pytest.raises(ImageError):
            disk.extents(-1, 5)


def _first_l2_entry(path):
    """``(offset of the first L2 table, its first 16 bytes)``."""
    with open(path, "rb") as handle:
        handle.seek(_l1_offset(path))
        l2 = struct.unpack(">Q", handle.read(8))[0] & C.OFFSET_MASK
        handle.seek(l2)
        return l2, handle.read(16)


def test_subcluster_both_allocated_and_zero_is_corrupt(tmp_path, peers):
    path = tmp_path / "ext.qcow2"
    _create(peers, path, 4 * MiB, "extended_l2=on")
    _qemu_io(peers, path, "write -P 0x12 0 2k")
    l2, entry = _first_l2_entry(path)
    bitmap = struct.unpack_from(">Q", entry, 8)[0]
    assert bitmap & 1  # the first subcluster is allocated
    with open(path, "r+b") as handle:
        handle.seek(l2 + 8)
        handle.write(struct.pack(">Q", bitmap | 1 << 32))
    with _open(path) as disk, pytest.raises(CorruptImageError, match="both allocated and zero"):
        disk.extents()


def test_compressed_cluster_past_the_end_is_corrupt(tmp_path, peers, rng):
    path = _compressed(peers, tmp_path, rng, "zlib")
    with _open(path) as disk:
        encoded = next(e for e in disk.extents() if e.state == ENCODED)
        l1_index = encoded.offset // (disk.cluster_size * disk.header.l2_entries)
        l2 = int(disk._tables._l1[l1_index])
        entry_at = l2 + 8 * (encoded.offset // disk.cluster_size % disk.header.l2_entries)
    with open(path, "r+b") as handle:
        handle.seek(entry_at)
        handle.write(struct.pack(">Q", C.COMPRESSED | (1 << 40)))
    with _open(path) as disk, pytest.raises(CorruptImageError, match="compressed cluster"):
        disk.readinto(encoded.offset, bytearray(512))


def test_snapshot_table_past_the_end_is_corrupt(tmp_path, peers):
    path = _plain(peers, tmp_path)
    peers.run("qemu-img", "snapshot", "-c", "one", path)
    size = path.stat().st_size
    _rewrite_header(path, lambda h: h.with_changes(nb_snapshots=5000))
    with pytest.raises(CorruptImageError, match="snapshot") as caught:
        _open(path)
    assert str(caught.value).startswith(str(path)) and path.stat().st_size == size


def test_mutated_images_raise_only_image_errors(tmp_path, peers):
    """Random bytes and words over a chain's metadata: an ImageError or a read, nothing else."""
    import random

    base = tmp_path / "base.qcow2"
    _create(peers, base, 2 * MiB, "cluster_size=4096")
    _qemu_io(peers, base, "write -P 1 0 512k")
    top = tmp_path / "top.qcow2"
    _create(peers, top, 2 * MiB, "cluster_size=4096", backing="base.qcow2", backing_fmt="qcow2")
    _qemu_io(peers, top, "write -P 2 256k 512k", "write -z 1M 64k")
    peers.run("qemu-img", "snapshot", "-c", "s", top)
    original = top.read_bytes()
    chooser = random.Random(12)
    mutant = tmp_path / "mutant.qcow2"
    for _trial in range(150):
        data = bytearray(original)
        for _ in range(chooser.randint(1, 6)):
            at = chooser.randrange(min(len(data), 64 * KiB)) & ~7
            data[at : at + 8] = chooser.getrandbits(64).to_bytes(8, "big")
        mutant.write_bytes(bytes(data[: len(original)]))
        try:
            with _open(mutant) as disk:
                disk.extents()
                disk.readinto(0, bytearray(min(disk.virtual_size, 8 * MiB)))
        except ImageError:
            pass
