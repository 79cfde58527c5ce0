"""Write the fuzzing seed corpus: small valid images and damaged variants.

    python fuzz/make_corpus.py OUTDIR

Seeds are tiny (a few KiB: 512-byte and 4 KiB blocks, 64 KiB disks) so the
fuzzer's mutations land in metadata often. They are deterministic (fixed
UUIDs, timestamps and data). The differencing seeds name ``base.vhd``,
which the harness recreates in its work directory with the same UUID
(:func:`fuzz_vhd.make_base`). Damaged variants are made the way
:mod:`vhdcore.testing.samples` damages its larger images: a field or a table
entry changed, with and without the checksum recomputed, a footer or copy
cut or zeroed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid as uuidlib
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fuzz_vhd


def _valid(directory):
    import vhdcore

    ids = {"timestamp": fuzz_vhd.BASE_TIMESTAMP}
    out = {}
    base = os.path.join(directory, "base.vhd")
    fuzz_vhd.make_base(base)
    p = os.path.join(directory, "fixed.vhd")
    with vhdcore.create(p, 8192, type="fixed", uuid=uuidlib.UUID(int=1), **ids) as image:
        image.write(100, b"fixed data" * 10)
    out["fixed"] = p
    # 512-byte blocks, which readers must handle but ``create`` refuses
    # (qemu misreads them), are laid out by hand.
    from vhdcore.testing.samples import build_dynamic

    p = os.path.join(directory, "dyn512.vhd")
    build_dynamic(
        p, name="dyn512", size=16 * 1024, block_size=512, uuid=uuidlib.UUID(int=2),
        blocks={0: [(0, b"A" * 512)], 1: [(0, b"A" * 188)], 16: [(0, b"B" * 512)],
                31: [(0, b"C" * 512)]},
    )
    out["dyn512"] = p
    for name, size, block in (("dyn4k", 64 * 1024, 4096),):
        p = os.path.join(directory, f"{name}.vhd")
        with vhdcore.create(p, size, block_size=block, uuid=uuidlib.UUID(int=2), **ids) as image:
            image.write(0, b"A" * 700)
            image.write(size // 2 + 3, b"B" * 1500)
            image.write(size - 512, b"C" * 512)
        out[name] = p
    p = os.path.join(directory, "child.vhd")
    with vhdcore.create(p, parent=base, block_size=4096, uuid=uuidlib.UUID(int=3), **ids) as image:
        image.write(1000, b"child" * 300)
        image.write(40000, b"Z" * 512)
    out["child"] = p
    p = os.path.join(directory, "child512.vhd")
    build_dynamic(
        p, name="child512", size=fuzz_vhd.BASE_SIZE, block_size=512, uuid=uuidlib.UUID(int=4),
        parent=Path(base), blocks={block: [(0, b"c" * 512)] for block in range(10, 16)},
    )
    out["child512"] = p
    return out


def _damaged(name, raw):
    from vhdcore.formats.vhd.footer import Footer
    from vhdcore.formats.vhd.header import DynamicHeader

    size = len(raw)
    variants = {}

    def fixed_footer(data, at):
        data[at : at + 512] = Footer.from_bytes(bytes(data[at : at + 512])).to_bytes()

    def fixed_header(data):
        data[512:1536] = DynamicHeader.from_bytes(bytes(data[512:1536])).to_bytes()

    def footer_field(label, offset, value, width):
        for fix in (False, True):
            data = bytearray(raw)
            for at in ((size - 512, 0) if name != "fixed" else (size - 512,)):
                data[at + offset : at + offset + width] = value.to_bytes(width, "big")
                if fix:
                    fixed_footer(data, at)
            variants[f"{label}{'-fixed' if fix else ''}"] = bytes(data)

    footer_field("size-2040g", 48, 0xFF000000 * 512, 8)
    footer_field("size-60t", 48, 60 << 40, 8)
    footer_field("type7", 60, 7, 4)
    footer_field("data-offset-eof", 16, size - 512, 8)
    variants["truncated-1"] = raw[:-1]
    variants["truncated-512"] = raw[:-512]
    variants["copy-only"] = raw[:-512] + bytes(512)
    if name != "fixed":
        for label, offset, value, width in (
            ("max-entries-ffffffff", 28, 0xFFFFFFFF, 4), ("block-size-0", 32, 0, 4),
            ("block-size-huge", 32, 1 << 28, 4), ("table-at-0", 16, 0, 8),
            ("table-past-eof", 16, size, 8), ("loc-offset-huge", 64 + 512 + 16, 1 << 62, 8),
            ("loc-length-huge", 64 + 512 + 8, 0xFFFFFFFF, 4),
        ):
            data = bytearray(raw)
            data[512 + offset : 512 + offset + width] = value.to_bytes(width, "big")
            fixed_header(data)
            variants[label] = bytes(data)
        for label, value in (("bat-zero", 0), ("bat-into-bat", 3), ("bat-eof", size // 512)):
            data = bytearray(raw)
            data[1536:1540] = value.to_bytes(4, "big")
            variants[label] = bytes(data)
    return variants


def build(outdir):
    os.makedirs(outdir, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="vhdcore-corpus-")
    try:
        count = 0
        for name, path in _valid(scratch).items():
            with open(path, "rb") as f:
                raw = f.read()
            entries = {name: raw}
            entries.update({f"{name}-{k}": v for k, v in _damaged(name, raw).items()})
            for label, data in entries.items():
                with open(os.path.join(outdir, label), "wb") as f:
                    f.write(data)
                count += 1
        return count
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python fuzz/make_corpus.py OUTDIR")
    print(f"{build(sys.argv[1])} seeds written to {sys.argv[1]}")
