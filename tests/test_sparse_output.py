"""Output occupies on disk the data written plus metadata, never whole blocks (issue 10).

Each test measures ``st_blocks`` (what ``du`` shows). Before the fix a
dynamic conversion reserved space 64 MiB ahead of its writes and stored
every allocated block whole, so a disk holding 4 KiB every 2 MiB took its
full size on disk where qemu-img's copy takes a few MiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import vhdcore
from vhdcore import convert
from vhdcore.ops.compare import compare_images
from vhdcore.formats.vhd.compact import compact
from vhdcore.formats.vhd.resize import resize

KiB = 1024
MiB = 1024 * KiB
BLOCK = 2 * MiB
#: Per allocated block, at most: its bitmap sector and each 4 KiB of data
#: may each straddle a file-system block (data starts 512 bytes into one).
PER_BLOCK = 8 * KiB
#: Footer copy, header, table, footer, each rounded to file-system blocks.
METADATA = 64 * KiB


def on_disk(path) -> int:
    return os.stat(path).st_blocks * 512


def sparse_raw(path, size, rng, every=BLOCK, chunk=4 * KiB):
    """A raw file holding ``chunk`` random bytes at the start of every ``every`` bytes."""
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset in range(0, size, every):
            handle.seek(offset)
            handle.write(rng.bytes(chunk))
    return path


def test_dynamic_output_takes_data_plus_metadata(tmp_path, rng):
    src = sparse_raw(tmp_path / "s.raw", 128 * MiB, rng)
    out = tmp_path / "s.vhd"
    result = convert(src, out)
    assert result.blocks_allocated == 64
    assert result.bytes_written == 64 * 4 * KiB
    assert on_disk(out) <= 64 * PER_BLOCK + METADATA, on_disk(out)
    assert result.disk_usage == on_disk(out)
    assert compare_images(out, src)["identical"]


def test_zero_stretches_inside_a_block_stay_holes(tmp_path, rng):
    # One stored (not sparse) block: data, 1 MiB of written zeros, data, zeros.
    block = bytearray(BLOCK)
    block[: 4 * KiB] = rng.bytes(4 * KiB)
    block[MiB + 4 * KiB : MiB + 8 * KiB] = rng.bytes(4 * KiB)
    src = tmp_path / "b.raw"
    src.write_bytes(bytes(block) * 2)
    for fmt in ("dynamic", "fixed"):
        out = tmp_path / f"b.{fmt}.vhd"
        result = convert(src, out, out_format=fmt)
        assert result.bytes_written == 4 * 4 * KiB, fmt
        assert on_disk(out) <= 2 * 2 * PER_BLOCK + METADATA, (fmt, on_disk(out))
        assert compare_images(out, src)["identical"]


def test_dynamic_to_dynamic_is_no_larger_than_its_source(tmp_path, rng):
    first = tmp_path / "a.vhd"
    convert(sparse_raw(tmp_path / "a.raw", 64 * MiB, rng, every=MiB), first)
    second = tmp_path / "b.vhd"
    result = convert(first, second)
    assert on_disk(second) <= on_disk(first) + 8 * KiB
    assert result.disk_usage == on_disk(second)


def test_as_sparse_as_qemu_img(tmp_path, rng, peers):
    src = sparse_raw(tmp_path / "q.raw", 256 * MiB, rng)
    ours, theirs = tmp_path / "ours.vhd", tmp_path / "qemu.vhd"
    convert(src, ours)
    peers.run("qemu-img", "convert", "-f", "raw", "-O", "vpc", src, theirs)
    assert on_disk(ours) <= on_disk(theirs) + 16 * KiB, (on_disk(ours), on_disk(theirs))
    fixed_ours, fixed_theirs = tmp_path / "ours-f.vhd", tmp_path / "qemu-f.vhd"
    convert(src, fixed_ours, out_format="fixed")
    peers.run(
        "qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed",
        src, fixed_theirs,
    )
    assert on_disk(fixed_ours) <= on_disk(fixed_theirs) + 16 * KiB


def test_report_says_what_is_on_disk(tmp_path, rng, cli):
    src = sparse_raw(tmp_path / "r.raw", 32 * MiB, rng)
    code, out, err = cli("convert", src, tmp_path / "r.vhd", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["disk_usage"] == on_disk(tmp_path / "r.vhd")
    code, out, err = cli("convert", src, tmp_path / "t.vhd")
    assert code == 0, err
    line = next(line for line in out.splitlines() if "wrote" in line)
    assert "on disk" in line


def written_image(path, size, rng, every=BLOCK):
    """A dynamic image built by library writes: 4 KiB at the start of every block."""
    with vhdcore.create(path, size) as image:
        for offset in range(0, size, every):
            image.write(offset, rng.bytes(4 * KiB))
    return path


def test_compact_to_a_new_file_keeps_holes(tmp_path, rng):
    image = written_image(tmp_path / "c.vhd", 64 * MiB, rng)
    copy = tmp_path / "copy.vhd"
    compact(image, output=copy)
    assert on_disk(copy) <= on_disk(image) + 8 * KiB, (on_disk(copy), on_disk(image))
    assert compare_images(copy, image)["identical"]


def test_grow_that_moves_blocks_keeps_holes(tmp_path, rng):
    # 64 MiB has a one-sector table; 1 GiB needs four, so the first block moves.
    image = written_image(tmp_path / "g.vhd", 64 * MiB, rng)
    before = on_disk(image)
    resize(image, 1 << 30)
    assert on_disk(image) <= before + 8 * KiB, (on_disk(image), before)


def test_stdout_redirected_to_a_file_keeps_holes(tmp_path, rng):
    src = sparse_raw(tmp_path / "p.src", 64 * MiB, rng)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for fmt in ("raw", "fixed", "dynamic"):
        out = tmp_path / f"p.{fmt}"
        with open(out, "wb") as handle:
            subprocess.run(
                [sys.executable, "-m", "vhdcore", "convert", src, "-", "-O", fmt],
                stdout=handle, stderr=subprocess.DEVNULL, check=True, env=env,
            )
        assert on_disk(out) <= 32 * PER_BLOCK + METADATA, (fmt, on_disk(out))
        assert compare_images(out, src)["identical"]


def test_stdout_over_existing_bytes_writes_its_zeros(tmp_path, rng):
    # "1<> file" does not truncate: a gap over old bytes must become zeros.
    src = sparse_raw(tmp_path / "o.raw", 8 * MiB, rng)
    out = tmp_path / "o.out"
    out.write_bytes(b"\xaa" * (8 * MiB))
    fd = os.open(out, os.O_RDWR)
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        subprocess.run(
            [sys.executable, "-m", "vhdcore", "convert", src, "-", "-O", "raw"],
            stdout=fd, stderr=subprocess.DEVNULL, check=True, env=env,
        )
    finally:
        os.close(fd)
    assert out.read_bytes() == src.read_bytes()


def test_a_writer_copy_stores_what_data_would(tmp_path):
    """Writer.copy (the sink's file-range entry) reads the range and keeps zeros as holes."""
    from vhdcore.disk.writers import RawWriter
    from vhdcore.io.imagefile import open_image_file

    payload = bytearray(1 << 20)
    payload[4096:8192] = b"\x7f" * 4096
    source = tmp_path / "src.bin"
    source.write_bytes(bytes(payload))
    out_path = tmp_path / "out.raw"
    out_path.touch()
    out = open_image_file(out_path, writable=True)
    writer = RawWriter(out)
    writer.begin(len(payload))
    with open_image_file(source) as handle:
        stored = writer.copy(0, len(payload), handle, 0)
    writer.finish(len(payload))
    out.close()
    assert stored == 4096
    assert out_path.read_bytes() == bytes(payload)
    assert os.stat(out_path).st_blocks * 512 <= 64 * 1024
