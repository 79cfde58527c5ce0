"""``check`` on qcow2 agrees with ``qemu-img check`` on clean and damaged images.

Clean images of every kind qemu-img makes must check clean; damage is
made by patching qemu's own images (a refcount raised: a leak; lowered: an
error; an L2 entry sent past the end of the file; the dirty bit), and our
verdict (exit code 0, 2 or 3) must be qemu-img's.
"""

from __future__ import annotations

import json
import struct

import pytest

from vhdcore.formats.qcow2 import constants as C
from vhdcore.formats.qcow2.check import check
from vhdcore.formats.qcow2.header import parse

MiB = 1 << 20


def _qemu_verdict(peers, path) -> int:
    done = peers.run("qemu-img", "check", "-f", "qcow2", "--output=json", path, check=False)
    report = json.loads(done.stdout)
    if report.get("corruptions", 0):
        return 2
    if report.get("leaks", 0):
        return 3
    return 0


def _header(path):
    data = path.read_bytes()
    return parse(data[: 1 << 16], str(path), len(data))


def _refcount_at(path, cluster):
    """File offset of ``cluster``'s 16-bit refcount (the image's first refcount block)."""
    header = _header(path)
    data = path.read_bytes()
    block = struct.unpack_from(">Q", data, header.refcount_table_offset)[0]
    assert header.refcount_bits == 16 and cluster < header.cluster_size // 2
    return block + 2 * cluster


def _patch(path, offset, data):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def _data_l2_entry(path):
    """File offset of the first L2 entry that points to a data cluster, and its value."""
    header = _header(path)
    data = path.read_bytes()
    l2 = struct.unpack_from(">Q", data, header.l1_table_offset)[0] & C.OFFSET_MASK
    for index in range(header.cluster_size // 8):
        entry = struct.unpack_from(">Q", data, l2 + 8 * index)[0]
        if entry & C.OFFSET_MASK:
            return l2 + 8 * index, entry
    raise AssertionError("no data cluster")


@pytest.fixture
def image(tmp_path, peers):
    path = tmp_path / "disk.qcow2"
    peers.run("qemu-img", "create", "-q", "-f", "qcow2", path, "64M")
    peers.run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c",
              "write -P 0x22 20M 64k", path)
    return path


@pytest.mark.parametrize("options,writes", [
    ("", []),
    ("compat=0.10", ["write -P 1 0 128k"]),
    ("cluster_size=4k", ["write -P 1 0 300k", "write -P 2 9M 4k"]),
    ("cluster_size=2M", ["write -P 1 1M 3M"]),
    ("extended_l2=on,cluster_size=128k", ["write -P 1 4k 8k", "write -z 1M 64k"]),
    ("refcount_bits=1", ["write -P 1 0 1M"]),
    ("refcount_bits=64", ["write -P 1 0 1M"]),
    ("preallocation=metadata", []),
    ("lazy_refcounts=on", ["write -P 3 0 64k"]),
])
def test_qemu_made_images_check_clean(tmp_path, peers, cli, options, writes):
    path = tmp_path / "disk.qcow2"
    args = ["-o", options] if options else []
    peers.run("qemu-img", "create", "-q", "-f", "qcow2", *args, path, "16M")
    for write in writes:
        peers.run("qemu-io", "-f", "qcow2", "-c", write, path)
    report = check(path)
    assert report.exit_code == 0 == _qemu_verdict(peers, path), report.codes
    code, out, _err = cli("check", "--json", path)
    assert code == 0 and json.loads(out)["format"] == "qcow2"


def test_snapshots_and_compressed_clusters_check_clean(tmp_path, peers, image):
    peers.run("qemu-img", "snapshot", "-c", "one", image)
    peers.run("qemu-io", "-f", "qcow2", "-c", "write -P 0x33 0 64k", image)
    packed = tmp_path / "packed.qcow2"
    peers.run("qemu-img", "convert", "-q", "-c", "-f", "qcow2", "-O", "qcow2", image, packed)
    for path in (image, packed):
        assert check(path).exit_code == 0 == _qemu_verdict(peers, path)


def test_a_raised_refcount_is_a_leak_and_a_wrong_copied_flag(image, peers, cli):
    """As qemu-img says: the cluster leaks, and its L2 entry's "copied" flag
    (refcount exactly 1) is now false, which is corruption."""
    _patch(image, _refcount_at(image, 5), struct.pack(">H", 2))
    report = check(image)
    assert report.exit_code == 2 == _qemu_verdict(peers, image), report.codes
    assert report.codes == ["qcow2.leak", "qcow2.copied_flag"]
    assert report.leaked_bytes == 1 << 16
    code, out, _err = cli("check", image)
    assert code == 2 and "leak" in out


def test_a_refcount_of_an_unused_cluster_past_the_data_is_a_leak(image, peers):
    size = image.stat().st_size
    with open(image, "ab") as handle:
        handle.write(bytes(1 << 16))  # one more cluster, counted once
    _patch(image, _refcount_at(image, size >> 16), struct.pack(">H", 1))
    report = check(image)
    assert report.exit_code == 3 == _qemu_verdict(peers, image), report.codes
    assert report.codes == ["qcow2.leak"] and report.leaked_bytes == 1 << 16


def test_a_lowered_refcount_is_corruption(image, peers):
    at, entry = _data_l2_entry(image)
    cluster = (entry & C.OFFSET_MASK) >> 16
    _patch(image, _refcount_at(image, cluster), struct.pack(">H", 0))
    report = check(image)
    assert report.exit_code == 2 == _qemu_verdict(peers, image)
    assert "qcow2.refcount_low" in report.codes
    low = next(p for p in report.problems if p.code == "qcow2.refcount_low")
    assert str(image) in low.message and f"cluster {cluster}" in low.message


def test_an_l2_entry_past_the_end_of_the_file_is_corruption(image, peers):
    at, entry = _data_l2_entry(image)
    far = (entry & ~C.OFFSET_MASK) | (1 << 40)
    _patch(image, at, struct.pack(">Q", far))
    report = check(image)
    assert report.exit_code == 2 == _qemu_verdict(peers, image)
    outside = next(p for p in report.problems if p.code == "qcow2.outside")
    assert outside.offset == at and "outside the file" in outside.message


def test_the_dirty_bit_is_reported(image):
    with open(image, "r+b") as handle:
        handle.seek(72)
        features = struct.unpack(">Q", handle.read(8))[0]
        handle.seek(72)
        handle.write(struct.pack(">Q", features | C.INCOMPAT_DIRTY))
    report = check(image)
    assert "qcow2.dirty" in report.codes and report.exit_code == 0


def test_a_table_cluster_used_twice_is_an_overlap(image, peers):
    header = _header(image)
    at, entry = _data_l2_entry(image)
    # The data cluster now points at the L1 table: metadata used as data.
    _patch(image, at, struct.pack(">Q", (entry & ~C.OFFSET_MASK) | header.l1_table_offset))
    report = check(image)
    assert report.exit_code == 2 == _qemu_verdict(peers, image)
    assert "qcow2.overlap" in report.codes


def test_a_snapshot_with_an_absurd_l1_size_is_reported_not_read(image, peers):
    peers.run("qemu-img", "snapshot", "-c", "one", image)
    header = _header(image)
    _patch(image, header.snapshots_offset + 8, struct.pack(">I", 0xFFFFFFFF))
    report = check(image)
    assert report.exit_code == 2 and "qcow2.table_size" in report.codes
    assert str(image) in next(p.message for p in report.problems if p.code == "qcow2.table_size")


def test_an_l2_table_past_the_end_of_the_file_is_reported(image, peers):
    header = _header(image)
    entry = struct.unpack_from(">Q", image.read_bytes(), header.l1_table_offset)[0]
    size = image.stat().st_size
    # The L1 entry now names a cluster-aligned table that starts inside the
    # file's last cluster-sized stretch but runs past its end.
    target = (size // header.cluster_size) * header.cluster_size
    if target + header.cluster_size <= size:
        target += header.cluster_size
    _patch(image, header.l1_table_offset, struct.pack(">Q", (entry & ~C.OFFSET_MASK) | target))
    report = check(image)
    assert report.exit_code == 2 == _qemu_verdict(peers, image)
    assert "qcow2.outside" in report.codes


def test_a_snapshot_sharing_every_table_checks_clean(image, peers):
    """Right after a snapshot the active L1 and the snapshot's name the same L2
    tables (refcount 2): shared tables are no overlap."""
    peers.run("qemu-img", "snapshot", "-c", "one", image)
    peers.run("qemu-img", "snapshot", "-c", "two", image)
    report = check(image)
    assert report.exit_code == 0 == _qemu_verdict(peers, image), report.codes


def test_reserved_bits_in_the_refcount_table_are_corruption(image, peers):
    header = _header(image)
    entry = struct.unpack_from(">Q", image.read_bytes(), header.refcount_table_offset)[0]
    _patch(image, header.refcount_table_offset, struct.pack(">Q", entry | 0x100))
    report = check(image)
    assert report.exit_code == 2 == _qemu_verdict(peers, image)
    assert "qcow2.reserved_bits" in report.codes


def test_random_damage_gets_qemu_img_checks_verdict(tmp_path, peers, image):
    """Bytes flipped at random in the metadata of a snapshotted image: check never
    crashes, names the file when it cannot check, and grades as qemu-img does."""
    import random

    from vhdcore.errors import ImageError

    peers.run("qemu-img", "snapshot", "-c", "one", image)
    base = image.read_bytes()
    metadata_end = min(len(base), 0x60000)
    rng = random.Random(7)
    damaged = tmp_path / "damaged.qcow2"
    for _round in range(100):
        data = bytearray(base)
        for _flip in range(rng.randint(1, 4)):
            data[rng.randrange(metadata_end)] = rng.randrange(256)
        damaged.write_bytes(bytes(data))
        try:
            ours = check(damaged).exit_code
        except ImageError as exc:
            assert str(damaged) in str(exc)
            ours = 1
        theirs = peers.run("qemu-img", "check", "-f", "qcow2", damaged, check=False).returncode
        assert ours == theirs, (ours, theirs)
