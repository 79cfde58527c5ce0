"""The qcow2 header: qemu-img's headers parse and pack back byte for byte;
hostile fields are refused by name."""

from __future__ import annotations

import struct

import pytest

from vhdcore.errors import FormatError, ImageError, LimitError, UnsupportedError
from vhdcore.formats.qcow2 import constants as C
from vhdcore.formats.qcow2.header import Header, parse

CREATE_OPTIONS = [
    ("compat=0.10", 2),
    ("compat=1.1", 3),
    ("cluster_size=4096", 3),
    ("cluster_size=2M", 3),
    ("extended_l2=on,cluster_size=128k", 3),
    ("compression_type=zstd", 3),
    ("lazy_refcounts=on", 3),
    ("refcount_bits=64", 3),
]


@pytest.mark.parametrize("options,version", CREATE_OPTIONS)
def test_qemu_headers_parse_and_pack_back(peers, tmp_path, options, version):
    path = tmp_path / "disk.qcow2"
    peers.run("qemu-img", "create", "-q", "-f", "qcow2", "-o", options, str(path), "3G")
    data = path.read_bytes()
    header = parse(data[: 2 << 20], str(path), len(data))
    assert header.version == version
    assert header.size == 3 << 30
    assert header.l1_size >= header.l1_needed
    assert header.pack() == data[: len(header.pack())]


def test_backing_name_and_format(peers, tmp_path):
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(1 << 20))
    child = tmp_path / "child.qcow2"
    peers.run("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", str(child))
    header = parse(child.read_bytes()[:65536], str(child))
    assert (header.backing_file, header.backing_format) == ("base.raw", "raw")


def _image(**changes) -> bytearray:
    header = Header(size=1 << 30, l1_size=2, l1_table_offset=3 << 16,
                    refcount_table_offset=1 << 16, refcount_table_clusters=1, **changes)
    data = bytearray(header.pack())
    return data + bytearray(4 * 65536 - len(data))


def _set(data: bytearray, offset: int, fmt: str, value) -> bytearray:
    struct.pack_into(fmt, data, offset, value)
    return data


HOSTILE = [
    ("magic", lambda d: d.__setitem__(slice(0, 4), b"QFI\0"), FormatError, "magic"),
    ("version", lambda d: _set(d, 4, ">I", 4), UnsupportedError, "version 4"),
    ("cluster bits", lambda d: _set(d, 20, ">I", 30), FormatError, "cluster_bits"),
    ("aes", lambda d: _set(d, 32, ">I", 1), UnsupportedError, "encrypted (AES)"),
    ("luks", lambda d: _set(d, 32, ">I", 2), UnsupportedError, "encrypted (LUKS)"),
    ("huge l1", lambda d: _set(d, 36, ">I", 0xFFFFFFFF), LimitError, "L1 table"),
    ("short l1", lambda d: _set(d, 36, ">I", 1), FormatError, "too few"),
    ("l1 past end", lambda d: _set(d, 40, ">Q", 1 << 40), FormatError, "beyond the end"),
    ("l1 misaligned", lambda d: _set(d, 40, ">Q", 3 << 16 | 8), FormatError, "multiple"),
    ("huge reftable", lambda d: _set(d, 56, ">I", 0xFFFFFFFF), LimitError, "refcount table"),
    ("snapshots", lambda d: _set(d, 60, ">I", 1 << 20), LimitError, "snapshots"),
    ("unknown incompat", lambda d: _set(d, 72, ">Q", 1 << 40), UnsupportedError, "bit 40"),
    ("refcount order", lambda d: _set(d, 96, ">I", 7), FormatError, "refcount_order"),
    ("header length", lambda d: _set(d, 100, ">I", 100), FormatError, "header_length"),
    ("virtual size", lambda d: _set(d, 24, ">Q", 1 << 62), LimitError, "virtual size"),
    ("no end marker", lambda d: d.__setitem__(slice(112, 65536), b"\1" * (65536 - 112)),
     FormatError, "extension"),
]


@pytest.mark.parametrize("label,damage,error,words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_fields_are_refused_by_name(label, damage, error, words):
    data = _image()
    parse(bytes(data), "disk.qcow2", len(data))  # the undamaged image parses
    damage(data)
    with pytest.raises(error) as caught:
        parse(bytes(data), "disk.qcow2", len(data))
    assert isinstance(caught.value, ImageError)
    message = str(caught.value)
    assert message.startswith("disk.qcow2: ") and words in message


def test_feature_table_names_an_unknown_feature():
    table = bytes([0, 40]) + b"future thing".ljust(46, b"\0")
    data = _image(extensions=[(C.EXT_FEATURE_TABLE, table)], incompatible_features=1 << 40)
    with pytest.raises(UnsupportedError, match="future thing"):
        parse(bytes(data), "disk.qcow2", len(data))
