"""The conversion engine: round trips, layouts, peers, streams, refusals.

Images are small (a few MiB of virtual disk, well under 1 MiB of data) so
the suite stays fast with the pure-Python reference kernels; big virtual
sizes come from sparse files. Safety under crashes and signals lives in
``test_convert_safety.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import uuid as uuidlib

import pytest

import vhdcore
from vhdcore.disk.sources import RawFileSource, Source, VHDSource
from vhdcore.errors import ConversionError, LimitError, UnsupportedError, VHDError
from vhdcore.formats.vhd.constants import BAT_UNUSED, FOOTER_COOKIE
from vhdcore.formats.vhd.footer import Footer
from vhdcore.formats.vhd.header import DynamicHeader
from vhdcore.ops.convert import convert

KiB = 1024
MiB = 1024 * KiB
FIXED_UUID = uuidlib.UUID("0123abcd-0000-4000-8000-00000000c0de")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_raw(path, size, pieces):
    """A sparse raw file of ``size`` bytes holding ``pieces`` [(offset, bytes)]."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, data in pieces:
            handle.seek(offset)
            handle.write(data)
    return path


def sha256_file(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def virtual_bytes(path) -> bytes:
    with vhdcore.open(path) as image:
        return image.read(0, image.virtual_size)


def layout(rng):
    """Data of a realistic little disk: random, text, written zeros, unaligned ends."""
    return [
        (0, rng.bytes(64 * KiB)),  # boot area: data
        (MiB + 1000, b"text on the disk " * 3000),  # unaligned text, crosses 4 KiB pages
        (3 * MiB, bytes(512 * KiB)),  # written zeros: read, then skipped
        (5 * MiB - 300, rng.bytes(600)),  # unaligned, inside the third block
        (
            6 * MiB + 2 * KiB,
            rng.bytes(4 * KiB) + bytes(8 * KiB) + rng.bytes(4 * KiB),
        ),  # zero page inside
    ]


@pytest.fixture
def sample(tmp_path, rng):
    """An 8 MiB sparse raw disk with ~130 KiB of data."""
    return write_raw(tmp_path / "sample.raw", 8 * MiB, layout(rng))


# ---------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("fmt", ["raw", "fixed", "dynamic"])
def test_raw_round_trip_is_byte_identical(tmp_path, sample, fmt):
    expected = sha256_file(sample)
    middle = tmp_path / f"middle.{fmt}"
    first = convert(sample, middle, out_format=fmt, digest=True)
    assert first.digest == expected
    assert first.output_format == fmt
    back = convert(middle, tmp_path / "back.raw", digest=True)
    assert back.output_format == "raw"
    assert back.input_format == ("raw" if fmt == "raw" else "vhd")
    assert back.digest == expected
    assert (tmp_path / "back.raw").read_bytes() == sample.read_bytes()


@pytest.mark.parametrize(
    "route",
    [("dynamic", "fixed"), ("fixed", "dynamic"), ("dynamic", "dynamic"), ("fixed", "fixed")],
)
def test_vhd_to_vhd_round_trips(tmp_path, sample, route):
    expected = sha256_file(sample)
    first, second = route
    a = tmp_path / "a.vhd"
    b = tmp_path / "b.vhd"
    convert(sample, a, out_format=first)
    result = convert(a, b, out_format=second, digest=True)
    assert result.input_type == first
    assert result.digest == expected
    assert virtual_bytes(b) == sample.read_bytes()


def test_outputs_accepted_by_qemu_and_libvhdi(tmp_path, sample, peers):
    for fmt in ("fixed", "dynamic"):
        out = tmp_path / f"out-{fmt}.vhd"
        convert(sample, out, out_format=fmt)
        info = json.loads(peers.run("qemu-img", "info", "-f", "vpc", "--output=json", out).stdout)
        assert info["virtual-size"] == 8 * MiB
        peers.run("qemu-img", "compare", "-f", "vpc", "-F", "raw", out, sample)
        text = peers.run("vhdiinfo", out).stdout
        assert f"({8 * MiB} bytes)" in text
        assert ("Dynamic" if fmt == "dynamic" else "Fixed") in text


def test_qemu_made_images_convert_back(tmp_path, sample, peers):
    """Images written by qemu-img (dynamic and fixed) read back exactly."""
    expected = sample.read_bytes()
    for options in ([], ["-o", "subformat=fixed,force_size=on"]):
        made = tmp_path / "qemu.vhd"
        peers.run("qemu-img", "convert", "-f", "raw", "-O", "vpc", *options, sample, made)
        out = tmp_path / "from-qemu.raw"
        result = convert(made, out, force=True)
        assert result.input_format == "vhd"
        data = out.read_bytes()
        # qemu may round the size up to a CHS geometry: the extra part is zeros.
        assert data[: len(expected)] == expected
        assert not data[len(expected) :].strip(b"\0")
        made.unlink()


def test_unaligned_source_is_padded_to_a_sector(tmp_path, rng, peers):
    src = write_raw(tmp_path / "odd.raw", 3 * MiB + 100, [(3 * MiB, rng.bytes(100))])
    out = tmp_path / "odd.vhd"
    result = convert(src, out, digest=True)
    assert result.virtual_size == 3 * MiB + 512
    assert result.source_size == 3 * MiB + 100
    assert any("padded" in note for note in result.notes)
    assert result.source_digest == sha256_file(src)
    assert result.digest == hashlib.sha256(src.read_bytes() + bytes(412)).hexdigest()
    peers.run("qemu-img", "compare", "-f", "vpc", "-F", "raw", out, src)


# ---------------------------------------------------------------------------
# the dynamic layout


def _parse_dynamic(path):
    data = path.read_bytes()
    footer = Footer.from_bytes(data[-512:])
    header = DynamicHeader.from_bytes(data[512:1536])
    entries = header.max_table_entries
    bat = struct.unpack(
        f">{entries}I", data[header.table_offset : header.table_offset + 4 * entries]
    )
    return data, footer, header, bat


def test_dynamic_layout(tmp_path, sample):
    out = tmp_path / "out.vhd"
    result = convert(sample, out, timestamp=12345, uuid=FIXED_UUID)
    data, footer, header, bat = _parse_dynamic(out)
    assert data[:512] == data[-512:], "footer copy at 0 equals the footer"
    assert footer.creator_app == b"win " and footer.uuid == FIXED_UUID and footer.timestamp == 12345
    assert footer.current_size == 8 * MiB and footer.disk_type == 3
    assert header.table_offset == 1536 and header.block_size == 2 * MiB
    assert not [
        p for p in footer.validate(out, len(data) - 512, len(data)) if p.severity == "error"
    ]
    assert not [
        p for p in header.validate(out, 512, len(data), 3, 8 * MiB) if p.severity == "error"
    ]
    # Block 0 holds the boot area and the text, block 2 (4..6 MiB) the 600
    # bytes at 5 MiB - 300, block 3 the data at 6 MiB + 2 KiB. Block 1
    # (2..4 MiB) holds only written zeros: not allocated.
    allocated = [i for i, entry in enumerate(bat) if entry != BAT_UNUSED]
    assert allocated == [0, 2, 3]
    assert result.blocks_allocated == 3
    # Laid out in virtual order, back to back after the BAT, bitmaps all ones.
    span = 512 + 2 * MiB
    first = 1536 + 512
    assert [bat[i] * 512 for i in allocated] == [first + k * span for k in range(3)]
    for i in allocated:
        assert data[bat[i] * 512 : bat[i] * 512 + 512] == b"\xff" * 512
    assert len(data) == first + 3 * span + 512
    # The BAT's padding to a sector is 0xFF, as qemu writes it.
    assert data[1536 + 4 * len(bat) : 2048] == b"\xff" * (512 - 4 * len(bat))


def test_block_size_option(tmp_path, sample, peers, cli):
    out = tmp_path / "small-blocks.vhd"
    code, _, err = cli("convert", sample, out, "--block-size", "512K")
    assert code == 0, err
    _, _, header, bat = _parse_dynamic(out)
    assert header.block_size == 512 * KiB and len(bat) == 16
    peers.run("qemu-img", "compare", "-f", "vpc", "-F", "raw", out, sample)
    code, _, err = cli("convert", sample, tmp_path / "bad.vhd", "--block-size", "3000")
    assert code == 64 and "power of two" in err  # a bad value is a usage error


def test_outputs_check_clean(tmp_path, sample, cli, cli_process):
    pytest.importorskip("vhdcore.formats.vhd.check")
    outputs = []
    for fmt in ("fixed", "dynamic"):
        outputs.append(tmp_path / f"{fmt}.vhd")
        convert(sample, outputs[-1], out_format=fmt)
    outputs.append(tmp_path / "from-pipe.vhd")
    done = cli_process("convert", "-", outputs[-1], input=sample.read_bytes())
    assert done.returncode == 0, done.stderr
    for out in outputs:
        code, text, err = cli("check", out)
        assert code == 0, text + err


def test_block_table_size_is_bounded(tmp_path):
    with pytest.raises(LimitError, match="block size of at least"):
        convert(HugeZeroSource(2000 << 30), tmp_path / "x.vhd", block_size=4096)
    assert os.listdir(tmp_path) == []


def test_output_format_from_extension(tmp_path, sample):
    assert convert(sample, tmp_path / "x.vhd").output_format == "dynamic"
    assert convert(sample, tmp_path / "x.VHD.img").output_format == "raw"
    assert convert(sample, tmp_path / "x.img").output_format == "raw"
    assert convert(sample, tmp_path / "y.vhd", azure=True).output_format == "fixed"
    assert convert(sample, tmp_path / "z.vhd", out_format="vpc").output_format == "dynamic"


# ---------------------------------------------------------------------------
# what is read and what is written


class Recording:
    """Wraps a Source's readinto to record every range read."""

    def __init__(self, monkeypatch, cls):
        self.ranges = []
        original = cls.readinto
        recorder = self

        def readinto(source, offset, view):
            recorder.ranges.append((offset, offset + len(view)))
            return original(source, offset, view)

        monkeypatch.setattr(cls, "readinto", readinto)

    def overlaps(self, start, end):
        return [r for r in self.ranges if r[0] < end and start < r[1]]


def test_holes_are_never_read(tmp_path, rng, monkeypatch):
    src = write_raw(
        tmp_path / "holey.raw",
        32 * MiB,
        [(4 * MiB, rng.bytes(8 * KiB)), (20 * MiB, rng.bytes(4 * KiB))],
    )
    reads = Recording(monkeypatch, RawFileSource)
    result = convert(src, tmp_path / "out.vhd")
    assert result.bytes_read == 12 * KiB
    assert result.bytes_unread == 32 * MiB - 12 * KiB
    assert not reads.overlaps(0, 4 * MiB)
    assert not reads.overlaps(4 * MiB + 8 * KiB, 20 * MiB)
    assert sum(b - a for a, b in reads.ranges) == 12 * KiB


def test_unallocated_vhd_blocks_are_never_read(tmp_path, rng, monkeypatch):
    src = write_raw(tmp_path / "src.raw", 16 * MiB, [(6 * MiB, rng.bytes(MiB))])
    vhd = tmp_path / "src.vhd"
    convert(src, vhd)
    reads = Recording(monkeypatch, VHDSource)
    result = convert(vhd, tmp_path / "out.raw", digest=True)
    assert result.digest == sha256_file(src)
    # Only the one allocated block (6..8 MiB) is read; within it, holes of the
    # VHD file are skipped too (its tail shares a 4 KiB page with the footer).
    assert reads.ranges and all(6 * MiB <= a and b <= 8 * MiB for a, b in reads.ranges)
    assert sum(b - a for a, b in reads.ranges) < MiB + 8 * KiB


def test_written_zeros_are_not_stored(tmp_path, rng):
    src = write_raw(tmp_path / "zeros.raw", 8 * MiB, [(0, bytes(8 * MiB))])
    for fmt in ("raw", "fixed", "dynamic"):
        out = tmp_path / f"out.{fmt}"
        result = convert(src, out, out_format=fmt)
        assert result.bytes_read == 8 * MiB and result.bytes_written == 0
        assert os.stat(out).st_blocks * 512 <= 64 * KiB, f"{fmt} output is not sparse"


def test_zero_pages_inside_data_become_holes(tmp_path, rng):
    page = 4 * KiB
    src = write_raw(
        tmp_path / "mixed.raw", MiB, [(0, rng.bytes(page) + bytes(64 * page) + rng.bytes(page))]
    )
    result = convert(src, tmp_path / "out.raw", out_format="raw")
    assert result.bytes_written == 2 * page
    assert (tmp_path / "out.raw").read_bytes() == src.read_bytes()


# ---------------------------------------------------------------------------
# differencing chains


def test_differencing_chain_is_flattened(tmp_path, rng, peers):
    base = tmp_path / "base.vhd"
    child = tmp_path / "child.vhd"
    grandchild = tmp_path / "grandchild.vhd"
    expected = bytearray(6 * MiB)

    def put(image, offset, data):
        image.write(offset, data)
        expected[offset : offset + len(data)] = data

    with vhdcore.create(base, 6 * MiB, block_size=512 * KiB) as image:
        put(image, 0, rng.bytes(300 * KiB))
        put(image, 2 * MiB, rng.bytes(5000))
    with vhdcore.create(child, parent=base) as image:
        put(image, 1000, rng.bytes(1024))  # sectors inside a parent block
        put(image, 4 * MiB, rng.bytes(2 * KiB))  # a block only the child has
    with vhdcore.create(grandchild, parent=child) as image:
        put(image, 2 * MiB + 512, bytes(1024))  # zeros over parent data: must win
        put(image, 5 * MiB, rng.bytes(512))
    out = tmp_path / "flat.raw"
    result = convert(grandchild, out, digest=True)
    assert result.input_type == "differencing"
    assert out.read_bytes() == bytes(expected)
    assert result.digest == hashlib.sha256(expected).hexdigest()
    flat_vhd = tmp_path / "flat.vhd"
    convert(grandchild, flat_vhd)
    peers.run("qemu-img", "compare", "-f", "vpc", "-F", "raw", flat_vhd, out)


# ---------------------------------------------------------------------------
# --azure


def test_azure_rounds_up_to_a_whole_mib(tmp_path, rng, peers, cli):
    src = write_raw(tmp_path / "a.raw", 20 * MiB + 1000, [(20 * MiB, rng.bytes(1000))])
    out = tmp_path / "azure.vhd"
    code, text, err = cli("convert", src, out, "--azure", "--json")
    assert code == 0, err
    report = json.loads(text)
    assert report["output_format"] == "fixed"
    assert report["virtual_size"] == 21 * MiB
    assert any("rounded up" in note and "MiB" in note for note in report["notes"])
    data = out.read_bytes()
    assert len(data) == 21 * MiB + 512
    footer = Footer.from_bytes(data[-512:])
    assert footer.cookie == FOOTER_COOKIE and footer.disk_type == 2
    assert footer.current_size == footer.original_size == 21 * MiB
    assert footer.data_offset == 0xFFFFFFFFFFFFFFFF
    assert footer.checksum == footer.computed_checksum
    assert not [
        p for p in footer.validate(out, len(data) - 512, len(data)) if p.severity == "error"
    ]
    info = json.loads(peers.run("qemu-img", "info", "-f", "vpc", "--output=json", out).stdout)
    assert info["virtual-size"] == 21 * MiB
    peers.run("qemu-img", "compare", "-f", "vpc", "-F", "raw", out, src)


def test_azure_whole_mib_is_not_rounded(tmp_path, rng):
    src = write_raw(tmp_path / "a.raw", 32 * MiB, [(0, rng.bytes(512))])
    result = convert(src, tmp_path / "azure.vhd", azure=True)
    assert result.virtual_size == 32 * MiB
    assert not any("rounded" in note for note in result.notes)


class HugeZeroSource(Source):
    """A virtual disk of any size that is all zeros (no file needed)."""

    def __init__(self, size):
        self.name = "huge"
        self.virtual_size = size
        self.files = []
        self.notes = []

    def runs(self):
        yield 0, self.virtual_size, False


def test_azure_refuses_more_than_32_tib(tmp_path):
    with pytest.raises(LimitError, match="32 TiB"):
        convert(HugeZeroSource((32 << 40) + 512), tmp_path / "big.vhd", azure=True)
    assert os.listdir(tmp_path) == []


def test_azure_accepts_32_tib_and_says_which_tools_will_not_open_it():
    # ext4 cannot hold a 32 TiB file (its limit is 16 TiB), so check the sizing step.
    from vhdcore.ops.convert import _output_size

    notes = []
    assert _output_size(32 << 40, "fixed", True, notes) == 32 << 40
    assert any("qemu-img" in note and "2040 GiB" in note for note in notes)


def test_azure_conflicts_with_other_formats(tmp_path, sample):
    with pytest.raises(UnsupportedError, match="fixed"):
        convert(sample, tmp_path / "x.vhd", azure=True, out_format="dynamic")


def test_dynamic_larger_than_2040_gib_is_refused(tmp_path):
    with pytest.raises(LimitError, match="2040 GiB"):
        convert(HugeZeroSource(2041 << 30), tmp_path / "big.vhd")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# big virtual sizes cost time in proportion to the data


def test_large_sparse_image_converts_in_time_of_its_data(tmp_path, rng):
    size = 64 << 30
    src = write_raw(
        tmp_path / "big.raw", size, [(0, rng.bytes(64 * KiB)), (size - MiB, rng.bytes(4096))]
    )
    vhd = tmp_path / "big.vhd"
    first = convert(src, vhd)
    assert first.bytes_read == 68 * KiB and first.blocks_allocated == 2
    back = tmp_path / "back.raw"
    second = convert(vhd, back)
    assert os.stat(back).st_size == size
    assert os.stat(back).st_blocks * 512 < 4 * MiB
    assert second.bytes_written == 68 * KiB
    assert first.seconds < 10 and second.seconds < 10


# ---------------------------------------------------------------------------
# input format detection


def test_raw_format_never_probes(tmp_path, sample):
    """A raw disk that ends in a VHD footer (here: a whole fixed VHD) stays raw with -f raw."""
    fixed = tmp_path / "disk.vhd"
    convert(sample, fixed, out_format="fixed")
    out = tmp_path / "as-raw.raw"
    result = convert(fixed, out, src_format="raw")
    assert result.input_format == "raw"
    assert out.read_bytes() == fixed.read_bytes()
    detected = convert(fixed, tmp_path / "detected.raw")
    assert detected.input_format == "vhd"
    assert (tmp_path / "detected.raw").read_bytes() == sample.read_bytes()


def test_legacy_511_byte_footer_is_detected(tmp_path, sample):
    fixed = tmp_path / "disk.vhd"
    convert(sample, fixed, out_format="fixed")
    with open(fixed, "r+b") as handle:  # drop the last (reserved, zero) byte
        handle.truncate(os.path.getsize(fixed) - 1)
    out = tmp_path / "out.raw"
    result = convert(fixed, out)
    assert result.input_format == "vhd" and result.input_type == "fixed"
    assert out.read_bytes() == sample.read_bytes()


def test_damaged_primary_footer_still_detected_from_the_copy(tmp_path, sample):
    vhd = tmp_path / "disk.vhd"
    convert(sample, vhd)
    with open(vhd, "r+b") as handle:
        handle.seek(-512, os.SEEK_END)
        handle.write(b"garbage!")
    with pytest.warns(UserWarning):
        result = convert(vhd, tmp_path / "out.raw")
    assert result.input_format == "vhd"
    assert (tmp_path / "out.raw").read_bytes() == sample.read_bytes()


def test_empty_source(tmp_path, cli):
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    assert convert(empty, tmp_path / "e.raw").output_size == 0
    for fmt in ("fixed", "dynamic"):
        code, _, err = cli("convert", empty, tmp_path / f"e.{fmt}", "-O", fmt)
        assert code == 1 and "empty" in err
    assert sorted(os.listdir(tmp_path)) == ["e.raw", "empty.raw"]
    assert convert(empty, tmp_path / "e.vhd", azure=True).virtual_size == MiB


def test_directory_source_is_refused(tmp_path, cli):
    code, _, err = cli("convert", tmp_path, tmp_path / "x.raw")
    assert code == 1 and "directory" in err and str(tmp_path) in err


def test_vhd_format_on_a_non_vhd_is_an_error(tmp_path, sample):
    with pytest.raises(VHDError):
        convert(sample, tmp_path / "out.raw", src_format="vhd")
    assert not (tmp_path / "out.raw").exists()


# ---------------------------------------------------------------------------
# refusals


def test_existing_destination_is_refused_without_force(tmp_path, sample, cli):
    dst = tmp_path / "exists.vhd"
    dst.write_bytes(b"precious")
    code, _, err = cli("convert", sample, dst)
    assert code == 1 and "exists" in err and "--force" in err
    assert dst.read_bytes() == b"precious"
    code, _, err = cli("convert", sample, dst, "--force")
    assert code == 0, err
    assert virtual_bytes(dst) == sample.read_bytes()


def test_same_file_is_refused(tmp_path, sample, cli):
    before = sample.read_bytes()
    code, _, err = cli("convert", sample, sample, "--force")
    assert code == 1 and "source" in err
    link = tmp_path / "hardlink.raw"
    os.link(sample, link)
    code, _, err = cli("convert", sample, link, "-O", "raw", "--force")
    assert code == 1 and "source" in err
    assert sample.read_bytes() == before


def test_chain_member_as_destination_is_refused(tmp_path, sample):
    base = tmp_path / "base.vhd"
    convert(sample, base)
    child = tmp_path / "child.vhd"
    vhdcore.create(child, parent=base).close()
    before = base.read_bytes()
    with pytest.raises(ConversionError, match="chain"):
        convert(child, base, force=True)
    assert base.read_bytes() == before


def test_bad_output_format_is_a_usage_error(tmp_path, sample, cli):
    code, _, err = cli("convert", sample, tmp_path / "x", "-O", "vdi")
    assert code == 64 and "invalid choice" in err
    with pytest.raises(UnsupportedError):
        convert(sample, tmp_path / "x", out_format="vdi")


def test_missing_directory_leaves_nothing(tmp_path, sample, cli):
    code, _, err = cli("convert", sample, tmp_path / "nowhere" / "x.vhd")
    assert code == 1 and err.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["sample.raw"]


def test_source_is_never_modified(tmp_path, sample):
    vhd = tmp_path / "src.vhd"
    convert(sample, vhd)
    before = (vhd.read_bytes(), os.stat(vhd).st_mtime_ns)
    for fmt in ("raw", "fixed", "dynamic"):
        convert(vhd, tmp_path / f"o.{fmt}", out_format=fmt)
    assert (vhd.read_bytes(), os.stat(vhd).st_mtime_ns) == before


# ---------------------------------------------------------------------------
# streams


class _FakeStdout:
    def __init__(self, fd):
        self._fd = fd

    def fileno(self):
        return self._fd

    def isatty(self):
        return False

    def write(self, text):  # pragma: no cover - nothing prints here
        return len(text)

    def flush(self):
        pass


@pytest.mark.parametrize("fmt", ["raw", "fixed", "dynamic"])
def test_stream_output_is_identical_to_file_output(tmp_path, sample, fmt, monkeypatch):
    options = {"out_format": fmt, "uuid": FIXED_UUID, "timestamp": 777}
    to_file = tmp_path / "file.out"
    convert(sample, to_file, **options)
    streamed = tmp_path / "stream.out"
    fd = os.open(streamed, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        monkeypatch.setattr(sys, "stdout", _FakeStdout(fd))
        result = convert(sample, "-", **options)
    finally:
        os.close(fd)
    assert result.destination == "-"
    assert streamed.read_bytes() == to_file.read_bytes()


def test_stream_output_through_the_cli(tmp_path, sample, cli_process, peers):
    for fmt in ("dynamic", "fixed", "raw"):
        done = cli_process("convert", sample, "-", "-O", fmt, "--json")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stderr)  # the image owns stdout; the report goes to stderr
        assert report["destination"] == "-" and report["output_size"] == len(done.stdout)
        out = tmp_path / f"streamed.{fmt}"
        out.write_bytes(done.stdout)
        if fmt == "raw":
            assert done.stdout == sample.read_bytes()
        else:
            peers.run("qemu-img", "compare", "-f", "vpc", "-F", "raw", out, sample)
            filed = tmp_path / f"filed.{fmt}"
            convert(sample, filed, out_format=fmt)
            # Identical apart from the footer's timestamp, UUID and checksum.
            a, b = bytearray(done.stdout), bytearray(filed.read_bytes())
            for data in (a, b):
                for base in (0, len(data) - 512) if fmt == "dynamic" else (len(data) - 512,):
                    data[base + 24 : base + 28] = bytes(4)
                    data[base + 64 : base + 84] = bytes(20)
            assert a == b


def test_stdin_pipe_source(tmp_path, sample, cli_process, peers):
    data = sample.read_bytes()
    out = tmp_path / "from-pipe.vhd"
    done = cli_process("convert", "-", out, "--digest", input=data)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(data).hexdigest().encode() in done.stdout
    assert virtual_bytes(out) == data
    # The size was unknown while reading, so the BAT had room for the
    # largest disk; peers read the result all the same.
    peers.run("qemu-img", "compare", "-f", "vpc", "-F", "raw", out, sample)
    header = DynamicHeader.from_bytes(out.read_bytes()[512:1536])
    assert header.max_table_entries == 1044480  # room for 2040 GiB, declared as table (no gap)
    done = cli_process("convert", "-", "-", "-O", "fixed", input=data)
    assert done.returncode == 0 and done.stdout[:-512] == data
    assert Footer.from_bytes(done.stdout[-512:]).current_size == len(data)


def test_dynamic_to_stdout_from_a_pipe_is_refused(tmp_path, sample, cli_process):
    done = cli_process("convert", "-", "-", "-O", "dynamic", input=sample.read_bytes())
    assert done.returncode == 1 and done.stdout == b""
    assert b"pipe" in done.stderr and b"first pass" in done.stderr
    assert done.stderr.count(b"\n") == 1


def test_stdin_regular_file_is_read_as_a_file(tmp_path, sample, cli_process):
    vhd = tmp_path / "src.vhd"
    convert(sample, vhd)
    out = tmp_path / "out.raw"
    with open(vhd, "rb") as handle:  # stdin is the file itself, not a pipe
        done = subprocess.run(
            [sys.executable, "-m", "vhdcore", "convert", "-", str(out), "--json"],
            stdin=handle,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": REPO_ROOT},
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["input_format"] == "vhd"
    assert out.read_bytes() == sample.read_bytes()


def test_output_to_a_terminal_is_refused(tmp_path, sample, monkeypatch):
    class Tty(_FakeStdout):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Tty(1))
    with pytest.raises(ConversionError, match="terminal"):
        convert(sample, "-")


# ---------------------------------------------------------------------------
# CLI report and progress


def test_cli_json_report_shape(tmp_path, sample, cli):
    code, out, err = cli("convert", sample, tmp_path / "x.vhd", "--json", "--digest")
    assert code == 0, err
    report = json.loads(out)
    assert set(report) >= {
        "source",
        "destination",
        "input_format",
        "input_type",
        "output_format",
        "source_size",
        "virtual_size",
        "bytes_read",
        "bytes_unread",
        "bytes_written",
        "bytes_zero",
        "output_size",
        "blocks_allocated",
        "block_size",
        "digest",
        "source_digest",
        "seconds",
        "throughput",
        "notes",
    }
    assert report["digest"] == sha256_file(sample)
    assert report["bytes_written"] + report["bytes_zero"] == report["virtual_size"]
    assert report["output_size"] == os.path.getsize(tmp_path / "x.vhd")


def test_cli_text_report(tmp_path, sample, cli):
    code, out, err = cli("convert", sample, tmp_path / "x.vhd", "--digest")
    assert code == 0, err
    assert "converted" in out and "dynamic" in out
    assert f"sha256: {sha256_file(sample)}" in out


def test_progress_on_a_non_terminal_prints_a_final_line(tmp_path, sample, cli):
    code, _, err = cli("convert", sample, tmp_path / "x.vhd", "-p")
    assert code == 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "100.0%" in lines[0] and "/s" in lines[0]


def test_progress_meter_on_a_terminal():
    from vhdcore.progress import Progress

    class Terminal:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    now = [0.0]
    stream = Terminal()
    meter = Progress(100 * MiB, label="raw", stream=stream, clock=lambda: now[0])
    for step in range(1, 11):
        now[0] = step * 0.5
        meter.update(step * 10 * MiB)
    meter.finish()
    frames = stream.text.split("\r")[1:]
    assert len(frames) == 11 and stream.text.endswith("\n")
    assert "50.0%" in frames[4] and "20 MiB/s" in frames[4] and "0:03 left" in frames[4]
    assert "100.0%" in frames[-1] and "in 0:05" in frames[-1]


def test_progress_plain_lines_are_rate_limited():
    from vhdcore.progress import PLAIN_INTERVAL, Progress

    class Log:
        def __init__(self):
            self.lines = []

        def isatty(self):
            return False

        def write(self, text):
            self.lines.append(text)

        def flush(self):
            pass

    now = [0.0]
    log = Log()
    meter = Progress(None, stream=log, clock=lambda: now[0])
    for step in range(100):
        now[0] = step * PLAIN_INTERVAL / 10
        meter.update(step * MiB)
    meter.finish()
    assert 9 <= len(log.lines) <= 11
    assert all(line.endswith("\n") and "\r" not in line for line in log.lines)


def test_library_result_is_dict_like(tmp_path, sample):
    result = convert(sample, tmp_path / "x.raw")
    assert result["output_format"] == "raw"
    assert result.to_dict()["bytes_read"] == result.bytes_read
    assert vhdcore.convert is convert
