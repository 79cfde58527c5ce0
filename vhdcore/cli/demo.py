"""``vhdcore demo``: the main job on a built-in sample, verified end to end.

Generates a sample raw disk that looks like a real one (a boot sector,
incompressible data such as compressed files, text, zeroed free space and
never-written holes), then converts it raw -> dynamic VHD -> fixed VHD ->
raw with ``--digest`` at each step, and checks every digest against a
plain SHA-256 of the sample file (what ``sha256sum`` prints). It prints
what each step did and its throughput. The sample is deterministic (fixed
seed), so two runs print the same digests.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile

from ..errors import VHDError
from ._common import size_argument

HELP = "generate a sample disk and convert it raw -> dynamic -> fixed -> raw, verifying digests"

MIB = 1 << 20
SECTOR = 512
DEFAULT_SIZE = 256 * MIB
SEED = 20261125


def add_arguments(parser):
    parser.add_argument(
        "--dir",
        metavar="DIR",
        help="put the files in DIR (created if missing; its parent must exist) and keep "
             "them (default: a temporary directory, removed)",
    )
    parser.add_argument(
        "--size",
        type=sample_size_argument,
        default=DEFAULT_SIZE,
        metavar="SIZE",
        help="virtual size of the sample disk: whole sectors (512 bytes), at least 1M "
             "(default 256M)",
    )


def sample_size_argument(text: str) -> int:
    """argparse type for ``--size``: a size the demo uses exactly, or a clear refusal.

    Whole sectors, so every step keeps the same virtual size and digest
    (a VHD pads its disk to a sector); at least 1 MiB, the sample's
    boot sector and the gap after it, as a partitioned disk begins.
    """
    size = size_argument(text)
    if size < MIB or size % SECTOR:
        raise argparse.ArgumentTypeError(
            f"invalid sample size {text!r}: whole sectors (a multiple of 512 bytes), "
            f"at least 1M"
        )
    return size


#: The files a run makes, in order; DIR must not hold them already.
FILES = ("sample.raw", "sample.vhd", "sample-fixed.vhd", "roundtrip.raw")


def _directory(where: str) -> str:
    """DIR, made if missing; a missing parent or a leftover demo file is an error naming it."""
    parent = os.path.dirname(os.path.abspath(where))
    if not os.path.isdir(parent):
        raise VHDError(f"{where}: cannot create the directory: {parent} does not exist")
    try:
        os.mkdir(where)
    except FileExistsError:
        if not os.path.isdir(where):
            raise VHDError(f"{where}: exists and is not a directory") from None
    for name in FILES:
        if os.path.lexists(os.path.join(where, name)):
            raise VHDError(
                f"{os.path.join(where, name)}: exists from an earlier run; remove it or "
                f"choose another --dir"
            )
    return where


def make_sample(path: str, size: int, seed: int = SEED) -> dict:
    """Write a deterministic sample raw disk of ``size`` bytes; returns its make-up.

    The disk is cut into extents of 64 KiB to 2 MiB, each random data
    (about 30%), text (10%), written zeros (10%) or a hole (the rest); the
    first sector is a boot sector with the 0x55AA signature.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    words = (
        b"the quick brown fox jumps over the lazy dog while vhdcore converts "
        b"sparse disks without reading their holes "
    )
    text_pattern = (words * (MIB // len(words) + 1))[:MIB]
    zeros = bytes(2 * MIB)
    made = {"random": 0, "text": 0, "zeros": 0, "holes": 0}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
        boot = bytearray(rng.bytes(446)) + bytes(64) + b"\x55\xaa"
        os.pwrite(fd, boot, 0)
        made["random"] += 512
        position = MIB  # the rest of the first MiB stays a hole, as after a partition table
        made["holes"] += min(MIB, size) - 512
        while position < size:
            length = min(int(rng.integers(1, 33)) * 64 * 1024, size - position)
            kind = rng.random()
            if kind < 0.30:
                os.pwrite(fd, rng.bytes(length), position)
                made["random"] += length
            elif kind < 0.40:
                start = int(rng.integers(0, len(words)))
                chunk = (text_pattern * 3)[start : start + length]
                os.pwrite(fd, chunk, position)
                made["text"] += length
            elif kind < 0.50:
                os.pwrite(fd, zeros[:length], position)
                made["zeros"] += length
            else:
                made["holes"] += length
            position += length
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return made


def _sha256_of_file(path: str) -> str:
    """SHA-256 of the file's bytes, read plainly (what sha256sum computes)."""
    digest = hashlib.sha256()
    buffer = bytearray(4 * MIB)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while True:
            count = handle.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
    return digest.hexdigest()


def run(args) -> int:
    from .. import BACKEND
    from ..ops.convert import convert
    from ..sizes import format_size

    size = args.size
    keep = args.dir is not None
    if keep:
        directory = _directory(args.dir)
    else:
        directory = tempfile.mkdtemp(prefix="vhdcore-demo-")
    out = sys.stdout
    try:
        sample = os.path.join(directory, "sample.raw")
        print(f"vhdcore demo (kernels: {BACKEND})", file=out)
        made = make_sample(sample, size)
        print(f"sample disk: {sample}", file=out)
        print(
            f"  {format_size(size)} virtual: "
            + ", ".join(
                f"{format_size(made[k])} {label}"
                for k, label in (
                    ("random", "random data"),
                    ("text", "text"),
                    ("zeros", "written zeros"),
                    ("holes", "holes"),
                )
            ),
            file=out,
        )
        expected = _sha256_of_file(sample)
        print(f"  sha256 of the file (as sha256sum): {expected}", file=out)
        print(file=out)
        steps = [
            ("raw -> dynamic", "sample.raw", "sample.vhd", "dynamic"),
            ("dynamic -> fixed", "sample.vhd", "sample-fixed.vhd", "fixed"),
            ("fixed -> raw", "sample-fixed.vhd", "roundtrip.raw", "raw"),
        ]
        header = (
            f"{'step':<17} {'output':<17} {'file size':>10} {'on disk':>10} "
            f"{'read':>10} {'written':>10} {'time':>8} {'throughput':>12}  sha256"
        )
        print(header, file=out)
        ok = True
        for label, src, dst, fmt in steps:
            src_path = os.path.join(directory, src)
            dst_path = os.path.join(directory, dst)
            result = convert(src_path, dst_path, out_format=fmt, digest=True)
            stat = os.stat(dst_path)
            match = result.digest == expected
            ok = ok and match
            print(
                f"{label:<17} {dst:<17} {format_size(stat.st_size):>10} "
                f"{format_size(stat.st_blocks * 512):>10} {format_size(result.bytes_read):>10} "
                f"{format_size(result.bytes_written):>10} {result.seconds:>6.2f} s "
                f"{format_size(int(result.throughput)) + '/s':>12}  "
                f"{result.digest[:16]}... {'ok' if match else 'MISMATCH'}",
                file=out,
            )
        final = _sha256_of_file(os.path.join(directory, "roundtrip.raw"))
        ok = ok and final == expected
        print(
            "(each time includes the SHA-256 of the whole virtual disk, computed in the same "
            "pass, and the fsync of the output)",
            file=out,
        )
        print(file=out)
        if ok:
            print(
                "every digest equals the sha256 of sample.raw, and roundtrip.raw is "
                "byte-identical to it",
                file=out,
            )
        else:
            print("MISMATCH: a digest differs from the sample's sha256", file=out)
        print(
            f"files kept in {directory}" if keep else "files removed (use --dir DIR to keep them)",
            file=out,
        )
        return 0 if ok else 1
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
