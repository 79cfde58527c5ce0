"""Conversion, digest, compare and map take any VirtualDisk and never name a format.

``MemoryDisk`` is a format no module of vhdcore knows: a disk in memory
with a data run, a zero run and an encoded run (stored compressed, say,
so readable only through ``readinto``). The engine must read it through
the protocol alone.
"""

from __future__ import annotations

import hashlib
import uuid

import pytest

import vhdcore
from vhdcore.disk.extent import DATA, ENCODED, ZERO, Extent
from vhdcore.ops.compare import compare_images
from vhdcore.ops.map import allocation_map
from vhdcore.disk.sources import DiskSource
from vhdcore.disk.virtual import VirtualDisk
from vhdcore.ops.digest import digest

MiB = 1 << 20


class MemoryDisk:
    format = "memory"
    logical_sector_size = 4096

    def __init__(self):
        self.virtual_size = 3 * MiB
        self.files = ["<memory>"]
        self.content = bytearray(self.virtual_size)
        self.content[:MiB] = bytes(range(256)) * (MiB // 256)
        self.content[2 * MiB :] = b"\x5a" * MiB
        self.closed = False
        self.reads = []

    def extents(self, offset=0, length=None):
        if length is None:
            length = self.virtual_size - offset
        runs = [(0, MiB, DATA), (MiB, MiB, ZERO), (2 * MiB, MiB, ENCODED)]
        out = []
        for start, size, state in runs:
            lo, hi = max(start, offset), min(start + size, offset + length)
            if lo < hi:
                stored = state != ZERO
                out.append(Extent(lo, hi - lo, state, 0 if stored else -1, lo if stored else -1))
        return out

    def readinto(self, offset, buffer):
        view = memoryview(buffer).cast("B")
        self.reads.append((offset, len(view)))
        view[:] = self.content[offset : offset + len(view)]
        return len(view)

    def member_file(self, depth):
        return None  # nothing to copy file to file, no holes to ask about

    def close(self):
        self.closed = True


@pytest.fixture
def disk():
    made = MemoryDisk()
    assert isinstance(made, VirtualDisk)
    return made


def test_convert_reads_an_unknown_format_through_the_protocol(disk, tmp_path):
    for out_format in ("raw", "fixed", "dynamic"):
        out = tmp_path / f"out.{out_format}"
        result = vhdcore.convert(disk, out, out_format=out_format, digest=True)
        assert result.input_format == "memory"
        assert result.digest == hashlib.sha256(disk.content).hexdigest()
        assert result.bytes_unread == MiB  # the zero extent is never read
        assert not disk.closed  # the caller's disk stays open
        if out_format == "raw":
            assert out.read_bytes() == disk.content
        else:
            with vhdcore.open(out) as image:
                assert image.read(0, disk.virtual_size) == disk.content
    assert all(not (MiB <= offset < 2 * MiB) for offset, _ in disk.reads)


def test_digest_compare_and_map_take_any_disk(disk, tmp_path):
    assert digest(disk) == hashlib.sha256(disk.content).hexdigest()
    raw = tmp_path / "same.raw"
    raw.write_bytes(disk.content)
    assert compare_images(disk, raw)["identical"]
    raw.write_bytes(disk.content[:-1] + b"\0")
    assert compare_images(disk, raw)["first_difference"] == disk.virtual_size - 1
    states = [(e["offset"], e["state"], e["file"]) for e in allocation_map(disk)]
    assert states == [(0, "data", "<memory>"), (MiB, "zero", None), (2 * MiB, "encoded", "<memory>")]


@pytest.mark.parametrize("readers", [1, 2, 8])
def test_prefetch_keeps_reads_in_flight_and_delivers_in_order(readers):
    """With ``readers`` > 1 the reads run on a pool, several at once, yet come out in order."""
    import threading
    import time

    from vhdcore.disk.prefetch import Prefetch
    from vhdcore.disk.sources import DiskSource

    disk = MemoryDisk()
    lock = threading.Lock()
    active = {"now": 0, "most": 0}
    plain = disk.readinto

    def slow_readinto(offset, buffer):
        with lock:
            active["now"] += 1
            active["most"] = max(active["most"], active["now"])
        time.sleep(0.01)  # a cold disk: the request waits, the GIL is free
        try:
            return plain(offset, buffer)
        finally:
            with lock:
                active["now"] -= 1

    disk.readinto = slow_readinto
    source = DiskSource(disk, owned=False)
    got = bytearray()
    offsets = []
    with Prefetch(source, 64 << 10, 64 << 10, count=4, readers=readers) as pieces:
        for offset, length, view in pieces:
            offsets.append(offset)
            got += bytes(length) if view is None else bytes(view)
    assert got == disk.content
    assert offsets == sorted(offsets)
    assert active["most"] == readers  # exactly as many reads in flight as asked


def test_prefetch_raises_a_reader_error_in_the_consumer():
    from vhdcore.disk.prefetch import Prefetch
    from vhdcore.disk.sources import DiskSource
    from vhdcore.errors import FormatError

    disk = MemoryDisk()

    def broken(offset, buffer):
        if offset >= 2 * MiB:
            raise FormatError("<memory>: cluster at 0x200000 is damaged")
        return MemoryDisk.readinto(disk, offset, buffer)

    disk.readinto = broken
    with pytest.raises(FormatError, match="damaged"):
        with Prefetch(DiskSource(disk, owned=False), 1 << 20, 1 << 20, readers=4) as pieces:
            for _ in pieces:
                pass


def test_convert_with_reads_in_flight_writes_the_same_image(tmp_path):
    """``convert(readers=N)`` reads on a pool; the output is byte-identical to one reader's."""
    disk = MemoryDisk()
    outputs = []
    for readers in (1, 4):
        out = tmp_path / f"out{readers}.vhd"
        result = vhdcore.convert(DiskSource(disk, owned=False), out, readers=readers,
                                 digest=True, uuid=uuid.UUID(int=1), timestamp=0)
        assert result.digest == hashlib.sha256(disk.content).hexdigest()
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_vhdcore_open_reads_every_registered_format_by_its_magic(tmp_path, peers):
    """One ``vhdcore.open`` for every format: the same file-like methods, the
    format's own object for VHD (writable), read-only for the others."""
    import io

    from vhdcore.errors import NotVHDError, ReadOnlyError, UnsupportedError
    from vhdcore.formats.qcow2.image import Qcow2Disk
    from vhdcore.formats.raw import RawDisk

    raw = tmp_path / "disk.raw"
    payload = bytes(range(256)) * (MiB // 256)
    raw.write_bytes(payload)
    vhd = tmp_path / "disk.vhd"
    vhdcore.convert(raw, vhd, out_format="dynamic")
    with vhdcore.open(vhd, "r+") as image:
        assert isinstance(image, vhdcore.VHD) and image.mode == "r+"
        image.write(0, b"\1" * 512)
    # A raw disk has no magic: named, never guessed.
    with pytest.raises(NotVHDError):
        vhdcore.open(raw)
    with vhdcore.open(raw, format="raw") as image:
        assert isinstance(image, RawDisk) and image.read(0, 256) == payload[:256]
        assert io.BufferedReader(image.rawio()).read() == payload
        with pytest.raises(ReadOnlyError):
            image.write(0, b"x")
    with pytest.raises(UnsupportedError, match="read-only"):
        vhdcore.open(raw, "r+", format="raw")
    with pytest.raises(ValueError):
        vhdcore.open(vhd, "w")
    # qcow2 by its magic.
    qcow = tmp_path / "disk.qcow2"
    peers.run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, qcow)
    with vhdcore.open(qcow) as image:
        assert isinstance(image, Qcow2Disk) and image.read(0, MiB) == payload
    with pytest.raises(UnsupportedError, match="read-only"):
        vhdcore.open(qcow, "r+")


def test_info_has_one_key_set_for_every_format(tmp_path, peers):
    """``info --json`` is read by scripts that do not know the format first."""
    from vhdcore import formats as registry
    from vhdcore.disk.description import KEYS

    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\x11" * MiB)
    vhd = tmp_path / "disk.vhd"
    vhdcore.convert(raw, vhd, out_format="dynamic")
    qcow = tmp_path / "disk.qcow2"
    peers.run("qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, qcow)
    for name, path in (("raw", raw), ("vhd", vhd), ("qcow2", qcow)):
        data = registry.get(name).describe(path)
        assert tuple(data) == KEYS, name
        assert data["format"] == name and data["virtual_size"] == MiB
