"""Parent locator payloads and the order of parent candidates (no filesystem)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from vhdcore.errors import FormatError, UnsupportedError
from vhdcore.formats.vhd.header import DynamicHeader, ParentLocator
from vhdcore.formats.vhd.locators import (
    candidate_paths,
    decode_locator,
    encode_locator,
    relative_parent_path,
)

NAMES = ["parent.vhd", "my parent.vhd", "père €.vhd", "日本語 disk.vhd", "𝄞 clef.vhd"]


@pytest.mark.parametrize("name", NAMES)
def test_w2ru_round_trip(name):
    data = encode_locator(b"W2ru", name)
    assert data == (".\\" + name).encode("utf-16-le")
    assert decode_locator(b"W2ru", data) == ".\\" + name


def test_w2ru_keeps_relative_prefixes_and_uses_backslashes():
    assert decode_locator("W2ru", encode_locator("W2ru", "../base/p.vhd")) == "..\\base\\p.vhd"
    assert decode_locator("W2ru", encode_locator("W2ru", "sub/p.vhd")) == ".\\sub\\p.vhd"
    assert decode_locator("W2ru", encode_locator("W2ru", ".\\p.vhd")) == ".\\p.vhd"


@pytest.mark.parametrize(
    "path", ["/srv/images/p.vhd", "C:\\VMs\\p.vhd", "\\\\server\\share\\p.vhd"]
)
def test_w2ru_refuses_absolute_paths(path):
    with pytest.raises(ValueError):
        encode_locator(b"W2ru", path)


@pytest.mark.parametrize(
    ("path", "stored"),
    [
        ("/srv/my images/père.vhd", "/srv/my images/père.vhd"),
        ("C:\\VMs\\base disk.vhd", "C:\\VMs\\base disk.vhd"),
        ("C:/VMs/base.vhd", "C:\\VMs\\base.vhd"),
    ],
)
def test_w2ku_round_trip(path, stored):
    data = encode_locator(b"W2ku", path)
    assert data == stored.encode("utf-16-le")
    assert decode_locator(b"W2ku", data) == stored


@pytest.mark.parametrize(
    "path", ["/srv/my images/père €.vhd", "/a/100%.vhd", "./rel.vhd", "/𝄞/x.vhd"]
)
def test_macx_round_trip(path):
    data = encode_locator(b"MacX", path)
    assert data.startswith(b"file://")
    assert data.decode("ascii")  # percent-encoded: pure ASCII
    assert b" " not in data
    assert decode_locator(b"MacX", data) == path


def test_macx_forms_written_by_others():
    assert decode_locator(b"MacX", b"file://./parent.vhd") == "./parent.vhd"  # blktap
    assert decode_locator(b"MacX", b"file:///srv/p.vhd") == "/srv/p.vhd"
    assert decode_locator(b"MacX", b"file://localhost/srv/p.vhd") == "/srv/p.vhd"
    assert decode_locator(b"MacX", "file:///srv/père.vhd".encode()) == "/srv/père.vhd"
    assert decode_locator(b"MacX", b"file:///srv/p.vhd\0\0\0") == "/srv/p.vhd"


def test_trailing_nul_padding_is_ignored():
    data = ".\\p.vhd".encode("utf-16-le") + b"\0\0\0\0"
    assert decode_locator(b"W2ru", data) == ".\\p.vhd"
    assert decode_locator(b"W2ru", data + b"\0") == ".\\p.vhd"  # odd padding


@pytest.mark.parametrize(
    ("code", "data"),
    [
        (b"W2ru", b"\x00\xd8" + "x".encode("utf-16-le")),  # lone high surrogate
        (b"W2ku", "a\0b".encode("utf-16-le")),  # NUL inside
        (b"W2ku", b"abc"),  # odd length
        (b"MacX", b"\xff\xfe"),  # not UTF-8
        (b"MacX", b"/srv/p.vhd"),  # not a URL
        (b"MacX", b"file:///srv/%ff.vhd"),  # escapes invalid UTF-8
        (b"MacX", b"file:///srv/a%00b.vhd"),  # escaped NUL
    ],
)
def test_undecodable_payloads_raise_format_error(code, data):
    with pytest.raises(FormatError):
        decode_locator(code, data)


def test_deprecated_and_unknown_codes():
    assert decode_locator(b"Wi2r", b".\\p.vhd\0") == ".\\p.vhd"
    assert decode_locator(b"Wi2k", "C:\\ä.vhd".encode("latin-1")) == "C:\\ä.vhd"
    with pytest.raises(UnsupportedError):
        decode_locator(b"Mac ", b"alias blob")
    with pytest.raises(UnsupportedError):
        decode_locator(b"ABCD", b"x")
    with pytest.raises(ValueError):
        encode_locator(b"Wi2k", "x")
    with pytest.raises(ValueError):
        encode_locator(b"W2ku", "")
    with pytest.raises(ValueError):
        encode_locator(b"W2ku", "a\0b")


def test_relative_parent_path():
    assert relative_parent_path("/a/b/child.vhd", "/a/b/parent.vhd") == "parent.vhd"
    expected = os.path.join("..", "base", "p.vhd")
    assert relative_parent_path("/a/b/child.vhd", "/a/base/p.vhd") == expected


# -- candidate paths -------------------------------------------------------


def _header(entries, name="base.vhd"):
    """A differencing header with locators for ``entries`` [(code, payload)]."""
    locators = []
    payloads = []
    offset = 4096
    for code, payload in entries:
        locators.append(ParentLocator(code, 1, len(payload), 0, offset))
        payloads.append(payload)
        offset += 512
    header = DynamicHeader.new(
        4, 2 * 1024 * 1024, parent_uuid=uuid.UUID(int=9), parent_name=name, locators=locators
    )
    return header, payloads


def test_candidate_order_and_resolution():
    header, payloads = _header(
        [
            (b"MacX", encode_locator(b"MacX", "/srv/mac dir/base.vhd")),
            (b"W2ku", encode_locator(b"W2ku", "/srv/abs/base.vhd")),
            (b"W2ru", encode_locator(b"W2ru", "../up/base.vhd")),
        ]
    )
    child = Path("/vms/child dir/child.vhd")
    assert candidate_paths(child, header, payloads) == [
        (b"W2ru", Path("/vms/child dir/../up/base.vhd")),
        (b"W2ku", Path("/srv/abs/base.vhd")),
        (b"MacX", Path("/srv/mac dir/base.vhd")),
        (b"name", Path("/vms/child dir/base.vhd")),
    ]


def test_candidates_accept_mappings_by_index_or_code():
    header, payloads = _header([(b"W2ru", encode_locator(b"W2ru", "p.vhd"))], name="p.vhd")
    expected = [(b"W2ru", Path("/d/p.vhd"))]
    assert candidate_paths("/d/c.vhd", header, {0: payloads[0]}) == expected
    assert candidate_paths("/d/c.vhd", header, {b"W2ru": payloads[0]}) == expected
    # The name gives the same path as W2ru, so it is not offered twice.
    assert candidate_paths("/d/c.vhd", header, payloads) == expected


def test_payloads_are_cut_to_the_data_length():
    header, payloads = _header([(b"W2ru", encode_locator(b"W2ru", "p.vhd"))], name="")
    padded = payloads[0] + b"garbage beyond the length"
    assert candidate_paths("/d/c.vhd", header, [padded]) == [(b"W2ru", Path("/d/p.vhd"))]


def test_undecodable_candidates_are_skipped():
    header, payloads = _header(
        [
            (b"W2ru", b"\x00\xd8\x00\xd8"),  # lone surrogates
            (b"W2ku", "/a\0b".encode("utf-16-le")),  # NUL
            (b"MacX", b"http://example.com/p.vhd"),  # not a file URL
            (b"Mac ", b"alias"),  # unsupported
        ]
    )
    assert candidate_paths("/d/c.vhd", header, payloads) == [(b"name", Path("/d/base.vhd"))]


def test_missing_payloads_and_windows_paths():
    header, payloads = _header(
        [
            (b"W2ku", encode_locator(b"W2ku", "C:\\VMs\\base.vhd")),
            (b"W2ru", encode_locator(b"W2ru", "base.vhd")),
        ],
        name="C:\\VMs\\base.vhd",
    )
    result = candidate_paths("/d/c.vhd", header, [payloads[0]])  # W2ru payload missing
    if os.name == "nt":
        assert result[0] == (b"W2ku", Path("C:\\VMs\\base.vhd"))
    else:
        # A drive path cannot name a file here; the name's basename can.
        assert result == [(b"name", Path("/d/base.vhd"))]
    assert candidate_paths("/d/c.vhd", header, None) == [(b"name", Path("/d/base.vhd"))]


def test_blktap_style_relative_locators_resolve_beside_the_child():
    header, payloads = _header(
        [
            (b"MacX", b"file://./base.vhd"),
            (b"W2ku", "./base.vhd".encode("utf-16-le")),
            (b"W2ru", "./base.vhd".encode("utf-16-le")),
        ]
    )
    assert candidate_paths("/d/c.vhd", header, payloads) == [(b"W2ru", Path("/d/base.vhd"))]


def test_parent_name_with_replacement_characters_is_not_offered():
    header, _ = _header([], name="x.vhd")
    raw = "a".encode("utf-16-be") + b"\xdc\x00" + ".vhd".encode("utf-16-be")
    import dataclasses

    broken = dataclasses.replace(header, parent_name_raw=raw.ljust(512, b"\0"))
    assert candidate_paths("/d/c.vhd", broken, []) == []


def test_non_ascii_names_survive_the_whole_trip():
    name = "base 日本 €.vhd"
    header, payloads = _header(
        [
            (b"W2ru", encode_locator(b"W2ru", name)),
            (b"MacX", encode_locator(b"MacX", "/x/" + name)),
        ],
        name=name,
    )
    assert candidate_paths("/d/c.vhd", header, payloads) == [
        (b"W2ru", Path("/d") / name),
        (b"MacX", Path("/x") / name),
    ]


def test_random_payloads_never_crash(rng):
    codes = [b"W2ru", b"W2ku", b"MacX", b"Wi2r", b"Wi2k", b"Mac "]
    for _ in range(300):
        entries = []
        for code in codes[: int(rng.integers(1, len(codes) + 1))]:
            payload = rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
            if rng.integers(0, 2) and code == b"MacX":
                payload = b"file://" + payload
            entries.append((code, payload))
            try:
                decode_locator(code, payload)
            except (FormatError, UnsupportedError):
                pass
        header, payloads = _header([(c, p or b"x") for c, p in entries])
        for code, path in candidate_paths("/d/c.vhd", header, payloads):
            assert isinstance(path, Path) and "\0" not in str(path)
