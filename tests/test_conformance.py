"""Conformance: every registered format, every subformat it writes, one set of tests.

A format proves itself by registering in :mod:`vhdcore.formats`; these
tests then build an image of each of its subformats through its sink from
a raw twin (deterministic bytes with holes and data), open it through the
registry, and hold it to the :class:`~vhdcore.disk.virtual.VirtualDisk`
contract: detection, extents that tile the disk and agree with the bytes,
``readinto`` equal to the twin anywhere, a conversion back to raw equal to
the twin, and truncated or overwritten files refused with an ``ImageError``
(never another exception).
"""

from __future__ import annotations

import random
import warnings

import pytest

import vhdcore
from vhdcore import formats
from vhdcore.disk.extent import DATA, PARENT, STATES, ZERO
from vhdcore.disk.virtual import Sink, VirtualDisk
from vhdcore.errors import ImageError
from vhdcore.io.imagefile import open_image_file

MiB = 1 << 20
SIZE = 6 * MiB
#: (offset, length) of the twin's data; everything else is zeros, and the
#: runs straddle 2 MiB block edges, sector edges and 4 KiB hole edges.
DATA_RUNS = [(0, 4096), (700_000, 1000), (2 * MiB - 512, 1536), (3 * MiB, 1 * MiB), (SIZE - 512, 512)]

CASES = [
    pytest.param((fmt.name, sub), id=f"{fmt.name}-{sub}")
    for fmt in formats.formats()
    for sub in fmt.subformats
]


def twin_bytes() -> bytes:
    rng = random.Random(11)
    data = bytearray(SIZE)
    for offset, length in DATA_RUNS:
        data[offset : offset + length] = rng.randbytes(length).replace(b"\0", b"\1")
    return bytes(data)


def write_through_sink(fmt, subformat, path, content: bytes) -> None:
    """Build an image by handing the sink the twin's stored runs, in order."""
    out = open_image_file(path, writable=True, create=True)
    try:
        sink = fmt.writer(subformat, out)
        assert isinstance(sink, Sink)
        sink.begin(len(content))
        view = memoryview(content)
        for offset, length in DATA_RUNS:
            position, end = offset, offset + length
            while position < end:
                count = min(end - position, sink.unit - position % sink.unit)
                sink.data(position, view[position : position + count])
                position += count
        sink.finish(len(content))
        out.flush()
    finally:
        out.close()


@pytest.fixture(scope="module")
def twin():
    return twin_bytes()


@pytest.fixture(params=CASES)
def image(request, tmp_path, twin):
    name, subformat = request.param
    fmt = formats.get(name)
    path = tmp_path / f"disk.{subformat}"
    write_through_sink(fmt, subformat, path, twin)
    return fmt, path


def test_the_registry_lists_its_formats_with_their_aliases():
    assert formats.names() == ("raw", "vhd", "vpc", "qcow2")
    assert formats.output("qcow2") == (formats.get("qcow2"), "qcow2")
    assert formats.get("vpc") is formats.get("vhd")
    assert formats.output("vpc") == (formats.get("vhd"), "dynamic")
    assert formats.output("fixed") == (formats.get("vhd"), "fixed")
    assert formats.output("raw") == (formats.get("raw"), "raw")
    with pytest.raises(ImageError, match="unknown input format 'qcow3': use raw, vhd or qcow2"):
        formats.get("qcow3")
    with pytest.raises(ImageError, match="use raw, fixed, dynamic or qcow2"):
        formats.output("qcow3")


def test_detection_names_the_format(image):
    fmt, path = image
    with open_image_file(path) as file:
        assert formats.detect(file) is fmt


def test_open_gives_a_virtual_disk(image, twin):
    fmt, path = image
    with fmt.open(path) as disk:
        assert isinstance(disk, VirtualDisk)
        assert disk.format == fmt.name
        assert disk.virtual_size == len(twin)
        assert disk.logical_sector_size in (512, 4096)
        assert list(disk.files) == [str(path)]


def test_extents_tile_the_disk_and_agree_with_the_bytes(image, twin):
    fmt, path = image
    with fmt.open(path) as disk:
        extents = disk.extents()
        position = 0
        for extent in extents:
            assert extent.offset == position and extent.length > 0
            assert extent.state in STATES
            position = extent.end
            wanted = twin[extent.offset : extent.end]
            if extent.state == ZERO:
                assert wanted == bytes(extent.length), extent
            elif extent.state in (DATA, PARENT):
                stored = disk.member_file(extent.depth).pread(extent.file_offset, extent.length)
                assert stored == wanted, extent
        assert position == len(twin)
        # every data byte of the twin lies in stored extents
        stored = [e for e in extents if e.state != ZERO]
        for offset, length in DATA_RUNS:
            end = offset + length
            covered = sum(max(0, min(e.end, end) - max(e.offset, offset)) for e in stored)
            assert covered == length, (offset, length)
        # a window agrees with the whole map
        window = disk.extents(2 * MiB - 4096, 8192)
        assert window[0].offset == 2 * MiB - 4096 and window[-1].end == 2 * MiB + 4096


def test_readinto_equals_the_raw_twin(image, twin):
    fmt, path = image
    rng = random.Random(5)
    with fmt.open(path) as disk:
        whole = bytearray(len(twin))
        assert disk.readinto(0, whole) == len(twin)
        assert whole == twin
        for _ in range(200):
            offset = rng.randrange(len(twin))
            length = rng.randrange(min(len(twin) - offset, 3 * MiB) + 1)
            buffer = bytearray(length)
            assert disk.readinto(offset, memoryview(buffer)) == length
            assert buffer == twin[offset : offset + length]
        with pytest.raises(ImageError):
            disk.readinto(len(twin) - 10, bytearray(11))


def test_round_trip_to_raw_through_convert(image, twin, tmp_path):
    fmt, path = image
    out = tmp_path / "back.raw"
    result = vhdcore.convert(path, out, src_format=fmt.name, out_format="raw", digest=True)
    assert out.read_bytes() == twin
    assert result.virtual_size == len(twin)


def _refused_or_readable(fmt, path):
    """Opening and reading everything either works or raises an ImageError.

    A warning (a VHD read through its footer copy) is an answer too.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with fmt.open(path) as disk:
                buffer = bytearray(disk.virtual_size)
                disk.readinto(0, buffer)
                disk.extents()
    except ImageError:
        return "refused"
    return "read"


@pytest.mark.parametrize("cut", [0, 1, 511, SIZE // 2, -1])
def test_truncated_files_are_refused_or_read_never_crash(image, cut):
    fmt, path = image
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size - 1 if cut == -1 else min(cut, size))
    outcome = _refused_or_readable(fmt, path)
    if fmt.detect is not None and cut in (0, 1, 511):
        assert outcome == "refused"


def test_overwritten_magic_is_refused_and_detects_as_raw(image):
    fmt, path = image
    if fmt.detect is None:
        pytest.skip(f"{fmt.name} has no magic")
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        for offset in (0, size - 4096):
            handle.seek(offset)
            handle.write(b"\xff" * 4096)
    with open_image_file(path) as file:
        assert formats.detect(file).name == "raw"
    assert _refused_or_readable(fmt, path) == "refused"
