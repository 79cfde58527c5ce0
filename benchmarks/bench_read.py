"""Read speed of the engine against the Python peers and the raw-file limit.

One generated dynamic VHD (4 GiB virtual, a quarter of its 2 MiB blocks
holding random data) and the equivalent raw file, read four ways in one
run: vhdcore (``readinto``), dissect.hypervisor, libvhdi-python (pyvhdi)
and ``os.pread`` on the raw file. Two workloads: the whole image in 1 MiB
chunks, and random 4 KiB reads. Compare the rows of a group: the ratios
are what the README reports, because this machine's absolute speed varies.

Under ``--benchmark-disable`` (CI's smoke run) the image is 64 MiB so the
file runs in seconds; peers that are not installed are skipped (they are
in the ``bench`` extra).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import vhdcore

MiB = 1024 * 1024
CHUNK = MiB
RANDOM_READS = 20_000


@pytest.fixture(scope="module")
def images(tmp_path_factory, request):
    smoke = request.config.getoption("benchmark_disable", False)
    size = 64 * MiB if smoke else 4096 * MiB
    root = tmp_path_factory.mktemp("read")
    vhd_path = root / "quarter.vhd"
    raw_path = root / "quarter.raw"
    rng = np.random.default_rng(7)
    blocks = size // (2 * MiB)
    chosen = sorted(rng.choice(blocks, blocks // 4, replace=False).tolist())
    with vhdcore.create(vhd_path, size) as image, open(raw_path, "wb") as raw:
        raw.truncate(size)
        for block in chosen:
            data = rng.integers(0, 256, 2 * MiB, dtype=np.uint8).tobytes()
            image.write(block * 2 * MiB, data)
            raw.seek(block * 2 * MiB)
            raw.write(data)
    offsets = (rng.integers(0, size // 4096, RANDOM_READS) * 4096).tolist()
    return {"vhd": str(vhd_path), "raw": str(raw_path), "size": size, "offsets": offsets}


def _readers(images):
    """name -> (open, read_into(handle, offset, buffer), close)."""
    readers = {}

    def vhd_open():
        return vhdcore.open(images["vhd"])

    readers["vhdcore"] = (vhd_open, lambda h, off, buf: h.readinto(off, buf), lambda h: h.close())

    def raw_open():
        return os.open(images["raw"], os.O_RDONLY)

    readers["os.pread raw"] = (
        raw_open, lambda fd, off, buf: os.preadv(fd, [buf], off), os.close,
    )
    try:
        from dissect.hypervisor.disk.vhd import VHD as DissectVHD

        def dissect_open():
            fh = open(images["vhd"], "rb")  # noqa: SIM115 - closed by the reader
            return (fh, DissectVHD(fh))

        def dissect_read(handle, off, buf):
            stream = handle[1]
            stream.seek(off)
            buf[:] = stream.read(len(buf))

        readers["dissect.hypervisor"] = (dissect_open, dissect_read, lambda h: h[0].close())
    except ImportError:
        pass
    try:
        import pyvhdi

        def vhdi_open():
            handle = pyvhdi.file()
            handle.open(images["vhd"])
            return handle

        def vhdi_read(handle, off, buf):
            buf[:] = handle.read_buffer_at_offset(len(buf), off)

        readers["libvhdi-python"] = (vhdi_open, vhdi_read, lambda h: h.close())
    except ImportError:
        pass
    return readers


READERS = ["vhdcore", "os.pread raw", "dissect.hypervisor", "libvhdi-python"]


def _get(images, name):
    readers = _readers(images)
    if name not in readers:
        pytest.skip(f"{name} is not installed (pip install '.[bench]')")
    return readers[name]


@pytest.mark.parametrize("reader", READERS)
def test_whole_image_1mib(benchmark, images, reader):
    opener, read_into, closer = _get(images, reader)
    handle = opener()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    size = images["size"]

    def whole():
        for offset in range(0, size, CHUNK):
            read_into(handle, offset, view)

    benchmark.group = "read whole image, 1 MiB chunks"
    benchmark.extra_info["bytes"] = size
    benchmark.pedantic(whole, rounds=3, iterations=1, warmup_rounds=1)
    closer(handle)


@pytest.mark.parametrize("reader", READERS)
def test_random_4k(benchmark, images, reader):
    opener, read_into, closer = _get(images, reader)
    handle = opener()
    buffer = bytearray(4096)
    view = memoryview(buffer)
    offsets = images["offsets"]

    def scattered():
        for offset in offsets:
            read_into(handle, offset, view)

    benchmark.group = f"random 4 KiB reads x{len(offsets)}"
    benchmark.extra_info["reads"] = len(offsets)
    benchmark.pedantic(scattered, rounds=5, iterations=1, warmup_rounds=1)
    closer(handle)


def test_readers_agree(images):
    """The rows above measure the same bytes: every reader returns them."""
    readers = _readers(images)
    expected = bytearray(4096)
    raw_open, raw_read, raw_close = readers.pop("os.pread raw")
    fd = raw_open()
    for offset in images["offsets"][:200]:
        raw_read(fd, offset, expected)
        for name, (opener, read_into, closer) in readers.items():
            handle = opener()
            got = bytearray(4096)
            read_into(handle, offset, memoryview(got))
            closer(handle)
            assert got == expected, (name, offset)
    raw_close(fd)
