"""The kernels: both twins meet the specification, and agree with each other.

Three kinds of test, cheapest to strongest:

* worked examples and edge cases, run against each twin through the
  ``kernels`` fixture (so a bug in the reference is caught too);
* hostile arguments, where both twins must raise the same exception type;
* Hypothesis differential tests: for random buffers, offsets and lengths
  (empty, unaligned, odd-length, huge, non-int), the compiled twin returns
  exactly what the reference returns (same types, dtypes and values, and
  the same bytes left in a mutated buffer) or raises the same exception type.

Without the compiled module the compiled half fails under
``VHDCORE_BACKEND=cython`` (CI must never test the reference twice) and is
skipped otherwise, as ``vhdcore._backend`` would decide.
"""

from __future__ import annotations

import array
import ast
import ctypes
import importlib
import inspect
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vhdcore import _reference

NAMES = list(_reference.__all__)
UNUSED = 0xFFFFFFFF


def _import_compiled():
    try:
        return importlib.import_module("vhdcore._kernels")
    except ImportError as exc:
        return exc


COMPILED = _import_compiled()
COMPILED_REQUIRED = os.environ.get("VHDCORE_BACKEND", "auto").strip().lower() == "cython"

# Modest budgets keep the file well under 20 s for both backends' CI runs;
# deadline=None because the first call of a kernel may compile nothing but
# still warm caches unevenly.
DIFF = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="session")
def compiled():
    """The compiled module; fails or skips when it is not built."""
    if isinstance(COMPILED, ImportError):
        message = f"vhdcore._kernels is not built ({COMPILED})"
        if COMPILED_REQUIRED:
            pytest.fail(message + "; VHDCORE_BACKEND=cython requires it")
        pytest.skip(message + "; build it with `python setup.py build_ext --inplace`")
    return COMPILED


@pytest.fixture(params=["reference", "cython"])
def kernels(request):
    """Each twin in turn, for tests with known answers."""
    if request.param == "reference":
        return _reference
    return request.getfixturevalue("compiled")


# ---------------------------------------------------------------------------
# Comparing the twins


def _same(a, b) -> bool:
    """Equal values of identical types, recursively; arrays by dtype and content."""
    if isinstance(a, np.ndarray):
        return (
            type(b) is np.ndarray
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b))
        )
    if isinstance(a, array.array):
        return type(b) is array.array and a.typecode == b.typecode and a == b
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def _snapshot(value):
    """What a call may have changed in an argument: the bytes of a buffer."""
    try:
        return memoryview(value).tobytes()
    except TypeError:
        return None


def _outcome(function, make_args):
    args = make_args()
    try:
        result = function(*args)
    except Exception as exc:  # noqa: BLE001 (the type is what the twins must agree on)
        return ("raised", type(exc), [_snapshot(a) for a in args])
    return ("returned", result, [_snapshot(a) for a in args])


def assert_twins_agree(compiled, name, make_args):
    """Call both twins on fresh arguments from ``make_args``; demand equal outcomes."""
    expected = _outcome(getattr(_reference, name), make_args)
    actual = _outcome(getattr(compiled, name), make_args)
    detail = f"{name}{make_args()!r}: reference {expected[:2]!r}, compiled {actual[:2]!r}"
    assert actual[0] == expected[0], detail
    if expected[0] == "raised":
        assert actual[1] is expected[1], detail
    else:
        assert _same(actual[1], expected[1]), detail
    assert actual[2] == expected[2], "argument bytes differ after " + detail
    return expected[1]


# ---------------------------------------------------------------------------
# Strategies

# Every way a caller may hand over bytes. The first group is what the
# reference uses as it is; the second makes it cast or refuse the buffer,
# which the compiled twin must mirror exactly.
BYTE_VIEWS = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview": memoryview,
    "numpy": lambda d: np.frombuffer(d, dtype=np.uint8),
    "unaligned numpy": lambda d: np.frombuffer(b"\x00" + d, dtype=np.uint8)[1:],
    "unaligned memoryview": lambda d: memoryview(bytearray(b"\x00" + d))[1:],
    "array": lambda d: array.array("B", d),
    "int8 numpy": lambda d: np.frombuffer(d, dtype=np.int8),
    "2-D numpy": lambda d: np.frombuffer(d, dtype=np.uint8).reshape(1, -1),
    "uint16 numpy": lambda d: np.frombuffer(d[: len(d) // 2 * 2], dtype=np.uint16),
    "big-endian uint16": lambda d: np.frombuffer(d[: len(d) // 2 * 2], dtype=">u2"),
    "strided memoryview": lambda d: memoryview(d + d)[::2],
    "readonly memoryview": lambda d: memoryview(bytearray(d)).toreadonly(),
}
WRITABLE_VIEWS = {
    "bytearray": bytearray,
    "numpy": lambda d: np.frombuffer(bytearray(d), dtype=np.uint8),
    "unaligned memoryview": lambda d: memoryview(bytearray(b"\x00" + d))[1:],
    "int8 numpy": lambda d: np.frombuffer(bytearray(d), dtype=np.int8),
    "bytes (read-only)": bytes,
    "readonly memoryview": lambda d: memoryview(bytearray(d)).toreadonly(),
}
HUGE = [2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, 2**100, -(2**63), -(2**64)]
NOT_INTS = [None, 1.0, 2.5, "1", b"\x01", np.float64(1.0), [1]]


@st.composite
def buffers(draw, max_size=700):
    """Mostly-zero bytes with a few set bytes, or all 0xFF runs: the shapes
    that exercise word loops, their tails and early exits."""
    size = draw(st.one_of(st.integers(0, 40), st.integers(0, max_size)))
    style = draw(st.sampled_from(["sparse", "random", "runs"]))
    if style == "random":
        return draw(st.binary(min_size=size, max_size=size))
    data = bytearray(size)
    if style == "sparse" and size:
        for position in draw(st.lists(st.integers(0, size - 1), max_size=4)):
            data[position] = draw(st.sampled_from([1, 0x80, 0xFF, 0x5A]))
    elif style == "runs":
        position = 0
        while position < size:
            length = draw(st.integers(1, 80))
            fill = draw(st.sampled_from([0x00, 0xFF, 0x0F, 0xF0, 0x81]))
            data[position : position + length] = bytes([fill]) * min(length, size - position)
            position += length
    return bytes(data)


def indices(limit):
    """Mostly valid positions in [0, limit], sometimes a bit outside, huge or not an int."""
    return st.one_of(
        st.integers(0, max(limit, 0)),
        st.integers(0, max(limit, 0)),
        st.integers(-3, limit + 3),
        st.sampled_from(HUGE),
        st.sampled_from(NOT_INTS + [True, np.int64(1), np.uint32(2)]),
    )


@st.composite
def bats(draw, max_size=40):
    """BATs with unused entries, small entries (overlaps and ties), runs of
    entries that continue each other, and arbitrary 32-bit values."""
    entries = []
    size = draw(st.integers(0, max_size))
    while len(entries) < size:
        kind = draw(st.sampled_from(["unused", "small", "any", "sequence"]))
        if kind == "unused":
            entries.append(UNUSED)
        elif kind == "small":
            entries.append(draw(st.integers(0, 64)))
        elif kind == "any":
            entries.append(draw(st.integers(0, UNUSED)))
        else:
            start = draw(st.integers(0, 2**20))
            step = draw(st.sampled_from([1, 2, 4, 8, 9]))
            entries.extend(start + step * i for i in range(draw(st.integers(1, 6))))
    return np.array(entries[:size], dtype=np.uint32)


# ---------------------------------------------------------------------------
# Parity of the two modules


def test_same_names(compiled):
    assert list(compiled.__all__) == NAMES
    for name in NAMES:
        assert callable(getattr(compiled, name)), name


def _parameters(function):
    """(name, kind, default) of each parameter, as callers see them."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def _embedded_parameters(function):
    """(name, default) pairs from the signature line embedsignature puts first
    in a compiled docstring; independent of how inspect treats cyfunctions."""
    first_line = function.__doc__.lstrip().splitlines()[0]
    node = ast.parse(f"def {first_line}: pass").body[0]
    names = [a.arg for a in node.args.args]
    defaults = [ast.literal_eval(d) for d in node.args.defaults]
    padded = [inspect.Parameter.empty] * (len(names) - len(defaults)) + defaults
    return list(zip(names, padded))


@pytest.mark.parametrize("name", NAMES)
def test_same_signature(compiled, name):
    # Cython 3 functions are introspectable ("binding" is on by default);
    # the embedded signature line is checked as well, so a change in either
    # mechanism cannot hide a drift between the twins.
    expected = _parameters(getattr(_reference, name))
    assert _parameters(getattr(compiled, name)) == expected
    assert _embedded_parameters(getattr(compiled, name)) == [(n, d) for n, _, d in expected]


@pytest.mark.parametrize("name", NAMES)
def test_compiled_docstring_points_to_reference(compiled, name):
    assert f"Compiled twin of `_reference.{name}`." in getattr(compiled, name).__doc__


# ---------------------------------------------------------------------------
# Worked examples and edges, against each twin


def test_checksum_examples(kernels):
    footer = bytearray(range(256)) * 2
    total = sum(footer) - sum(footer[64:68])
    assert kernels.vhd_checksum(footer, 64) == ~total & 0xFFFFFFFF
    assert kernels.vhd_checksum(bytes(512), 64) == 0xFFFFFFFF
    assert kernels.vhd_checksum(b"\xff" * 4, 0) == 0xFFFFFFFF  # only the field
    assert kernels.vhd_checksum(b"\x01" * 7, 3) == ~3 & 0xFFFFFFFF  # odd length
    assert type(kernels.vhd_checksum(bytes(8), 0)) is int


def test_zero_detection_edges(kernels):
    assert kernels.is_zero(b"") is True
    assert kernels.find_nonzero(b"") == -1
    assert kernels.find_nonzero(b"\x00\x01", 2) == -1  # start == len
    for size in (1, 7, 8, 9, 255, 256, 257, 4096 + 3):
        assert kernels.is_zero(bytes(size)) is True
        for position in sorted({0, size // 2, size - 1}):
            data = bytearray(size)
            data[position] = 0x80
            assert kernels.is_zero(data) is False
            assert kernels.find_nonzero(data) == position
            assert kernels.find_nonzero(data, position) == position
            assert kernels.find_nonzero(data, position + 1) == -1


def test_zero_chunks_edges(kernels):
    flags = kernels.zero_chunks(b"", 512)
    assert flags.dtype == bool and flags.shape == (0,)
    data = bytearray(1300)  # last chunk is partial
    data[1299] = 1
    assert kernels.zero_chunks(data, 512).tolist() == [True, True, False]
    assert kernels.zero_chunks(data, 1300).tolist() == [False]
    assert kernels.zero_chunks(bytes(5), 2**80).tolist() == [True]
    assert kernels.zero_chunks(b"\x00\x01\x00", 1).tolist() == [True, False, True]


def test_zero_chunks_into_a_caller_buffer(kernels):
    """With ``out`` the flags land in the caller's bytes (1 = all zero); no numpy array."""
    data = bytearray(1300)
    data[600] = 1
    out = bytearray(b"\x07" * 5)
    flags = kernels.zero_chunks(data, 512, out=out)
    assert type(flags) is memoryview and flags.tolist() == [1, 0, 1]
    assert out == b"\x01\x00\x01\x07\x07"  # bytes past the flags untouched
    assert kernels.zero_chunks(b"", 512, out=bytearray()).tolist() == []
    with pytest.raises(ValueError, match="3 flags"):
        kernels.zero_chunks(data, 512, out=bytearray(2))
    with pytest.raises(ValueError, match="writable"):
        kernels.zero_chunks(data, 512, out=bytes(3))


def test_bitmap_single_bits_at_byte_edges(kernels):
    bitmap = b"\x01\x80"  # bits 7 and 8: either side of the byte boundary
    assert kernels.bitmap_count(bitmap, 7, 1) == 1
    assert kernels.bitmap_count(bitmap, 8, 1) == 1
    assert kernels.bitmap_count(bitmap, 7, 2) == 2
    assert kernels.bitmap_count(bitmap, 0, 7) == 0
    assert kernels.bitmap_count(bitmap, 9, 7) == 0
    assert kernels.bitmap_count(bitmap, 16, 0) == 0  # empty range at the end
    assert kernels.bitmap_runs(bitmap, 0, 16) == [(0, 7, False), (7, 2, True), (9, 7, False)]
    assert kernels.bitmap_runs(bitmap, 16, 0) == []
    assert kernels.bitmap_runs(bitmap, 8, 1) == [(8, 1, True)]


def test_bitmap_runs_across_words(kernels):
    bitmap = b"\xff" * 9 + b"\x00" * 9 + b"\xf0"
    assert kernels.bitmap_runs(bitmap, 3, 149) == [
        (3, 69, True),
        (72, 72, False),
        (144, 4, True),
        (148, 4, False),
    ]
    assert kernels.bitmap_count(bitmap, 0, 152) == 76
    assert kernels.bitmap_count(bitmap, 1, 150) == 75


def test_bitmap_long_runs(kernels):
    # Long enough to fill the word loops' lane counters to the brim.
    ones = b"\xff" * 1000
    assert kernels.bitmap_count(ones, 3, 7990) == 7990
    assert kernels.bitmap_runs(ones, 3, 7990) == [(3, 7990, True)]
    assert kernels.bitmap_runs(bytes(1000) + b"\x01", 0, 8008) == [
        (0, 8007, False),
        (8007, 1, True),
    ]


@pytest.mark.parametrize(
    ("start", "count", "after"),
    [
        (0, 0, "00 00 00"),
        (7, 1, "01 00 00"),
        (7, 2, "01 80 00"),
        (3, 2, "18 00 00"),
        (4, 16, "0f ff f0"),
        (0, 24, "ff ff ff"),
    ],
)
def test_bitmap_fill_edges(kernels, start, count, after):
    bitmap = bytearray(3)
    assert kernels.bitmap_fill(bitmap, start, count, True) is None
    assert bitmap.hex(" ") == after
    inverse = bytearray(b"\xff" * 3)
    kernels.bitmap_fill(inverse, start, count, 0)
    assert bytes(b ^ 0xFF for b in inverse).hex(" ") == after


def test_bat_codec(kernels):
    raw = bytes.fromhex("00000003 ffffffff 00001003 80000000")
    bat = kernels.bat_decode(raw)
    assert bat.dtype == np.uint32 and bat.dtype.isnative
    assert bat.tolist() == [3, UNUSED, 0x1003, 0x80000000]
    assert kernels.bat_encode(bat) == raw
    assert kernels.bat_decode(b"").shape == (0,)
    assert kernels.bat_encode(np.zeros(0, np.uint32)) == b""
    assert kernels.bat_encode(array.array("I", [1])) == b"\x00\x00\x00\x01"


def test_bat_extents_examples(kernels):
    # 8 sectors per block. Without bitmaps, entry 11 continues entry 3 in
    # the file, so blocks 0 and 1 merge; neighbouring unused blocks merge.
    bat = np.array([3, 11, UNUSED, UNUSED, 100], dtype=np.uint32)
    assert kernels.bat_extents(bat, 0, 40, 8, 0) == [
        (0, 16, 3 * 512),
        (16, 16, -1),
        (32, 8, 100 * 512),
    ]
    # With 512 bitmap bytes the data areas of 3 and 11 still continue each
    # other (the kernel computes, it does not judge the layout); the range
    # starts inside block 0 and ends inside block 4.
    assert kernels.bat_extents(bat, 5, 30, 8, 512) == [
        (5, 11, 3 * 512 + 512 + 5 * 512),
        (16, 16, -1),
        (32, 3, 100 * 512 + 512),
    ]
    apart = np.array([3, 12, UNUSED, UNUSED, 100], dtype=np.uint32)
    assert kernels.bat_extents(apart, 5, 30, 8, 512) == [
        (5, 3, 3 * 512 + 512 + 5 * 512),
        (8, 8, 12 * 512 + 512),
        (16, 16, -1),
        (32, 3, 100 * 512 + 512),
    ]
    assert kernels.bat_extents(bat, 40, 0, 8, 0) == []
    assert kernels.bat_extents(bat, 39, 1, 8, 0) == [(39, 1, 107 * 512)]
    assert kernels.bat_extents(np.full(3, UNUSED, np.uint32), 1, 22, 8, 512) == [(1, 22, -1)]


def _columns(runs, third="q"):
    """A list kernel's tuples as the three columns of its array variant."""
    return (
        array.array("q", [run[0] for run in runs]),
        array.array("q", [run[1] for run in runs]),
        array.array(third, [int(run[2]) for run in runs]),
    )


def _assert_columns(result, starts, lengths, states, third="B"):
    assert type(result) is tuple and len(result) == 3
    assert [column.typecode for column in result] == ["q", "q", third]
    assert [column.tolist() for column in result] == [starts, lengths, states]


BITMAP_CASES = [
    # (bitmap, start_bit, bit_count, runs as (start, length, state) tuples)
    (b"", 0, 0, []),
    (b"\x01\x80", 16, 0, []),  # empty range at the end
    (b"\x01\x80", 0, 16, [(0, 7, 0), (7, 2, 1), (9, 7, 0)]),
    (b"\x01\x80", 8, 1, [(8, 1, 1)]),
    (b"\xff" * 1000, 3, 7990, [(3, 7990, 1)]),  # all set, unaligned both ends
    (bytes(1000), 0, 8000, [(0, 8000, 0)]),  # all clear
    (bytes(1000), 7, 1, [(7, 1, 0)]),
    (b"\xff" * 9 + b"\x00" * 9 + b"\xf0", 3, 149,
     [(3, 69, 1), (72, 72, 0), (144, 4, 1), (148, 4, 0)]),
    # Changes either side of and on the 64-bit word boundaries.
    (bytes(8) + b"\x80" + bytes(7), 0, 128, [(0, 64, 0), (64, 1, 1), (65, 63, 0)]),
    (bytes(7) + b"\x01" + bytes(8), 1, 126, [(1, 62, 0), (63, 1, 1), (64, 63, 0)]),
    (b"\xff" * 8 + bytes(8), 63, 3, [(63, 1, 1), (64, 2, 0)]),
    # Every bit its own run, an odd count from an odd start.
    (b"\x55" * 20, 1, 157, [(bit, 1, bit % 2) for bit in range(1, 158)]),
    (b"\xaa" * 3, 0, 17, [(bit, 1, 1 - bit % 2) for bit in range(17)]),
]


@pytest.mark.parametrize(
    ("bitmap", "start", "count", "runs"),
    BITMAP_CASES,
    ids=[str(i) for i in range(len(BITMAP_CASES))],
)
def test_bitmap_runs_array_examples(kernels, bitmap, start, count, runs):
    result = kernels.bitmap_runs_array(bitmap, start, count)
    _assert_columns(result, *[[run[i] for run in runs] for i in range(3)])
    # The same runs as the list kernel, whichever view of the bytes.
    for view in (bytes, bytearray, memoryview, lambda d: np.frombuffer(d, np.uint8)):
        assert kernels.bitmap_runs_array(view(bitmap), start, count) == _columns(
            kernels.bitmap_runs(view(bitmap), start, count), "B"
        )


def test_bat_extents_array_examples(kernels):
    bat = np.array([3, 11, UNUSED, UNUSED, 100], dtype=np.uint32)
    _assert_columns(
        kernels.bat_extents_array(bat, 0, 40, 8, 0),
        [0, 16, 32], [16, 16, 8], [3 * 512, -1, 100 * 512], third="q",
    )
    apart = np.array([3, 12, UNUSED, UNUSED, 100], dtype=np.uint32)
    _assert_columns(
        kernels.bat_extents_array(apart, 5, 30, 8, 512),
        [5, 8, 16, 32],
        [3, 8, 16, 3],
        [3 * 512 + 512 + 5 * 512, 12 * 512 + 512, -1, 100 * 512 + 512],
        third="q",
    )
    _assert_columns(kernels.bat_extents_array(bat, 40, 0, 8, 0), [], [], [], third="q")
    _assert_columns(kernels.bat_extents_array(np.zeros(0, np.uint32), 0, 0, 8, 0), [], [], [], "q")
    _assert_columns(
        kernels.bat_extents_array(np.full(3, UNUSED, np.uint32), 1, 22, 8, 512),
        [1], [22], [-1], third="q",
    )
    # Odd block sizes, a range inside one block, and every block its own run.
    for args in [(bat, 39, 1, 8, 0), (bat, 1, 38, 8, 512), (bat, 2, 5, 8, 0),
                 (apart, 0, 45, 9, 0), (np.array([7, 1, 9], np.uint32), 0, 3, 1, 0)]:
        assert kernels.bat_extents_array(*args) == _columns(kernels.bat_extents(*args))


def test_array_variant_memory_follows_the_result(compiled):
    """Columns hold exactly the runs found: a long range of one run costs one item each."""
    one = array.array("q", [0])
    starts, lengths, states = compiled.bitmap_runs_array(bytes(1 << 16), 0, 1 << 19)
    assert len(starts) == 1 and sys.getsizeof(starts) == sys.getsizeof(one)
    sectors, counts, offsets = compiled.bat_extents_array(
        np.full(1 << 16, UNUSED, np.uint32), 0, 4096 << 16, 4096, 512
    )
    assert counts.tolist() == [4096 << 16] and sys.getsizeof(offsets) == sys.getsizeof(one)


def test_bat_scan_examples(kernels):
    span = 512 + 4096
    bat = np.array([UNUSED, 10, 30, 10, 19, 40, UNUSED, 2], dtype=np.uint32)
    count, end, bad = kernels.bat_scan(bat, 4096, 512, 3 * 512, 60 * 512)
    assert count == 6
    assert end == 40 * 512 + span
    # Spans are 9 sectors. 7 starts before the data area and runs into 1;
    # 1 and 3 tie; 4 starts exactly where they end (touching is fine).
    assert bad.typecode == "q" and bad.tolist() == [1, 3, 7]
    count, end, bad = kernels.bat_scan(bat, 4096, 512, 0, 44 * 512)
    assert 5 in bad.tolist()  # 40*512 + span ends past data_end
    empty = kernels.bat_scan(np.full(4, UNUSED, np.uint32), 512, 0, 0, 0)
    assert empty[:2] == (0, 0) and empty[2].typecode == "q" and len(empty[2]) == 0
    assert type(kernels.bat_scan(bat, 2**70, 0, 0, 2**80)[1]) is int


# ---------------------------------------------------------------------------
# Hostile arguments: one exception type, from both twins

BAT = np.array([0, 8, UNUSED], dtype=np.uint32)
HOSTILE = [
    ("vhd_checksum", lambda: (None, 0), TypeError),
    ("vhd_checksum", lambda: ("text", 0), TypeError),
    ("vhd_checksum", lambda: (12, 0), TypeError),
    ("vhd_checksum", lambda: (bytes(8), 5), ValueError),
    ("vhd_checksum", lambda: (bytes(8), -1), ValueError),
    ("vhd_checksum", lambda: (bytes(8), 2**64), ValueError),
    ("vhd_checksum", lambda: (bytes(3), 0), ValueError),
    ("vhd_checksum", lambda: (bytes(8), 1.0), TypeError),
    ("vhd_checksum", lambda: (bytes(8), None), TypeError),
    ("is_zero", lambda: (None,), TypeError),
    ("is_zero", lambda: (object(),), TypeError),
    ("is_zero", lambda: (memoryview(bytes(8))[::2],), ValueError),
    ("is_zero", lambda: (np.zeros((0, 3), np.uint8),), TypeError),
    ("find_nonzero", lambda: (b"ab", 3), ValueError),
    ("find_nonzero", lambda: (b"ab", -1), ValueError),
    ("find_nonzero", lambda: (b"ab", -(2**70)), ValueError),
    ("find_nonzero", lambda: (b"ab", 2.0), TypeError),
    ("find_nonzero", lambda: (b"ab", "1"), TypeError),
    ("zero_chunks", lambda: (b"ab", 0), ValueError),
    ("zero_chunks", lambda: (b"", -(2**64)), ValueError),
    ("zero_chunks", lambda: (b"ab", None), TypeError),
    ("zero_chunks", lambda: (None, 1), TypeError),
    ("zero_chunks", lambda: (b"ab", 1, bytearray(1)), ValueError),
    ("zero_chunks", lambda: (b"ab", 1, b"xx"), ValueError),
    ("zero_chunks", lambda: (b"ab", 1, memoryview(bytearray(2)).toreadonly()), ValueError),
    ("zero_chunks", lambda: (b"ab", 1, 5), TypeError),
    ("zero_chunks", lambda: (b"ab", 1, np.zeros(4, np.uint8)[::2]), ValueError),
    ("zero_chunks", lambda: (b"ab", 0, bytearray(4)), ValueError),
    ("bitmap_count", lambda: (b"\xff", 0, 9), ValueError),
    ("bitmap_count", lambda: (b"\xff", 9, 0), ValueError),
    ("bitmap_count", lambda: (b"\xff", -1, 1), ValueError),
    ("bitmap_count", lambda: (b"\xff", 0, -1), ValueError),
    ("bitmap_count", lambda: (b"\xff", 2**63, 2**63), ValueError),
    ("bitmap_count", lambda: (b"\xff", 1.0, 1), TypeError),
    ("bitmap_count", lambda: (None, 0, 0), TypeError),
    ("bitmap_runs", lambda: (b"\xff", 4, 5), ValueError),
    ("bitmap_runs", lambda: (b"\xff", 0, np.float32(1)), TypeError),
    ("bitmap_fill", lambda: (b"\x00", 0, 1, True), ValueError),
    ("bitmap_fill", lambda: (memoryview(bytearray(2)).toreadonly(), 0, 1, 1), ValueError),
    ("bitmap_fill", lambda: (np.zeros(4, np.uint8)[::2], 0, 1, 1), ValueError),
    ("bitmap_fill", lambda: (np.zeros(4, np.uint8)[::-1], 0, 1, 1), ValueError),
    # The read-only check comes before the integer checks, in both twins.
    ("bitmap_fill", lambda: (b"\x00", None, 0, 1), ValueError),
    ("bitmap_fill", lambda: (bytearray(1), None, 0, 1), TypeError),
    ("bitmap_fill", lambda: (bytearray(1), 0, 9, True), ValueError),
    ("bitmap_fill", lambda: (bytearray(1), 0, 2**64, True), ValueError),
    ("bitmap_fill", lambda: (bytearray(1), 0, 1, np.array([1, 2])), ValueError),
    ("bitmap_fill", lambda: (None, 0, 0, True), TypeError),
    ("bat_decode", lambda: (b"abc",), ValueError),
    ("bat_decode", lambda: (None,), TypeError),
    ("bat_encode", lambda: (np.zeros(2, np.int32),), TypeError),
    ("bat_encode", lambda: (np.zeros(2, np.uint64),), TypeError),
    ("bat_encode", lambda: (np.zeros(2, np.float32),), TypeError),
    ("bat_encode", lambda: (np.zeros(2, ">u4"),), TypeError),
    ("bat_encode", lambda: (b"abcd",), TypeError),
    ("bat_encode", lambda: ([1, 2],), TypeError),
    ("bat_encode", lambda: (None,), TypeError),
    ("bat_encode", lambda: (np.zeros((2, 2), np.uint32),), ValueError),
    ("bat_encode", lambda: (np.zeros(4, np.uint32)[::2],), ValueError),
    ("bat_extents", lambda: (BAT, 0, 1, 0, 512), ValueError),
    ("bat_extents", lambda: (BAT, 0, 1, -8, 512), ValueError),
    ("bat_extents", lambda: (BAT, 0, 1, 8, -1), ValueError),
    ("bat_extents", lambda: (BAT, 0, 25, 8, 0), ValueError),
    ("bat_extents", lambda: (BAT, -1, 1, 8, 0), ValueError),
    ("bat_extents", lambda: (BAT, 0, -1, 8, 0), ValueError),
    ("bat_extents", lambda: (BAT, 2**64, 2**64, 8, 0), ValueError),
    ("bat_extents", lambda: (BAT, 0, 1, 8.0, 0), TypeError),
    ("bat_extents", lambda: (BAT, 0, 1, 8, None), TypeError),
    ("bat_extents", lambda: (BAT.astype(np.int64), 0, 1, 8, 0), TypeError),
    ("bat_extents", lambda: (None, 0, 1, 8, 0), TypeError),
    ("bat_scan", lambda: (BAT, 0, 0, 0, 0), ValueError),
    ("bat_scan", lambda: (BAT, -512, 0, 0, 0), ValueError),
    ("bat_scan", lambda: (BAT, 512, -1, 0, 0), ValueError),
    ("bat_scan", lambda: (BAT, 512, 0, -1, 0), ValueError),
    ("bat_scan", lambda: (BAT, 512, 0, 0, -(2**70)), ValueError),
    ("bat_scan", lambda: (BAT, 512.0, 0, 0, 0), TypeError),
    ("bat_scan", lambda: (BAT, 512, 0, 0, "end"), TypeError),
    ("bat_scan", lambda: (BAT.astype(np.int32), 512, 0, 0, 0), TypeError),
    ("bat_scan", lambda: (np.zeros((1, 3), np.uint32), 512, 0, 0, 0), ValueError),
]
ARRAY_OF = {"bitmap_runs": "bitmap_runs_array", "bat_extents": "bat_extents_array"}
HOSTILE += [(ARRAY_OF[name], make, error) for name, make, error in HOSTILE if name in ARRAY_OF]


@pytest.mark.parametrize(
    ("name", "make_args", "error"),
    HOSTILE,
    ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(HOSTILE)],
)
def test_hostile_arguments(kernels, name, make_args, error):
    with pytest.raises(error):
        getattr(kernels, name)(*make_args())


# Arguments that are odd but valid: the twins must agree on the answer.
ODD_BUT_VALID = [
    ("find_nonzero", lambda: (b"\x00\x01", True)),
    ("find_nonzero", lambda: (b"\x00\x01", np.int64(1))),
    ("zero_chunks", lambda: (np.zeros(3, np.uint32), 5)),
    ("is_zero", lambda: (np.zeros((3, 3), np.float64),)),
    ("is_zero", lambda: (np.zeros(4, ">u2"),)),
    ("is_zero", lambda: ((ctypes.c_ubyte * 4)(),)),
    ("vhd_checksum", lambda: (np.array(7, np.uint32), 0)),
    ("bitmap_count", lambda: (array.array("H", [0x00FF, 0x0F0F]), 3, 20)),
    ("bitmap_fill", lambda: (bytearray(2), 0, 0, object())),
    ("bitmap_fill", lambda: (bytearray(2), 3, 4, None)),
    ("bitmap_fill", lambda: (np.zeros((2, 2), np.uint8), 3, 20, "yes")),
    ("bat_encode", lambda: (memoryview(bytearray(9))[1:].cast("I"),)),
    ("bat_extents", lambda: (BAT, 0, 2**40, 2**40, 2**70)),
    ("bat_extents", lambda: (BAT, 2**41, 2**40, 2**40, 0)),
    ("bat_scan", lambda: (BAT, 2**70, 0, 0, 2**71)),
    ("bat_scan", lambda: (BAT, 512, 2**63, 2**64, 2**80)),
    ("bat_scan", lambda: (np.array([0, 0, UNUSED - 1], np.uint32), 1, 0, 0, 2**64)),
]
# The array variants take the list kernels' arguments and must refuse the
# same bad ones with the same exceptions.
ODD_BUT_VALID += [(f"{name}_array", make) for name, make in ODD_BUT_VALID if name in ARRAY_OF]


@pytest.mark.parametrize(
    ("name", "make_args"),
    ODD_BUT_VALID,
    ids=[f"{name}-{i}" for i, (name, _) in enumerate(ODD_BUT_VALID)],
)
def test_odd_but_valid_arguments_agree(compiled, name, make_args):
    assert_twins_agree(compiled, name, make_args)


@pytest.mark.parametrize(
    ("name", "make_args", "error"),
    HOSTILE,
    ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(HOSTILE)],
)
def test_compiled_error_messages_match(compiled, name, make_args, error):
    # Beyond the contract (which is the type), but a message that changed
    # with the backend would confuse whoever reads it.
    messages = []
    for module in (_reference, compiled):
        with pytest.raises(error) as info:
            getattr(module, name)(*make_args())
        messages.append(str(info.value))
    assert messages[0] == messages[1]


LIST_HOSTILE = [case for case in HOSTILE if case[0] in ARRAY_OF]


@pytest.mark.parametrize(
    ("name", "make_args", "error"),
    LIST_HOSTILE,
    ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(LIST_HOSTILE)],
)
def test_array_variants_refuse_what_the_list_kernels_refuse(kernels, name, make_args, error):
    messages = []
    for kernel in (name, ARRAY_OF[name]):
        with pytest.raises(error) as info:
            getattr(kernels, kernel)(*make_args())
        messages.append((type(info.value), str(info.value)))
    assert messages[0] == messages[1]


# ---------------------------------------------------------------------------
# Differential tests: compiled == reference


@DIFF
@given(data=buffers(), view=st.sampled_from(sorted(BYTE_VIEWS)), st_data=st.data())
def test_diff_byte_kernels(compiled, data, view, st_data):
    make = BYTE_VIEWS[view]
    offset = st_data.draw(indices(len(data)), label="offset")
    chunk = st_data.draw(
        st.one_of(st.integers(-1, 70), st.sampled_from([256, 512, 4096] + HUGE)), label="chunk"
    )
    assert_twins_agree(compiled, "vhd_checksum", lambda: (make(data), offset))
    assert_twins_agree(compiled, "is_zero", lambda: (make(data),))
    assert_twins_agree(compiled, "find_nonzero", lambda: (make(data), offset))
    assert_twins_agree(compiled, "zero_chunks", lambda: (make(data), chunk))
    assert_twins_agree(
        compiled, "zero_chunks", lambda: (make(data), chunk, bytearray(len(data) + 1))
    )


@DIFF
@given(data=buffers(max_size=90), view=st.sampled_from(sorted(BYTE_VIEWS)), st_data=st.data())
def test_diff_bitmap_readers(compiled, data, view, st_data):
    make = BYTE_VIEWS[view]
    bits = len(data) * 8
    start = st_data.draw(indices(bits), label="start_bit")
    room = bits - start if isinstance(start, int) and 0 <= start <= bits else bits
    count = st_data.draw(indices(room), label="bit_count")
    assert_twins_agree(compiled, "bitmap_count", lambda: (make(data), start, count))
    assert_twins_agree(compiled, "bitmap_runs", lambda: (make(data), start, count))
    assert_twins_agree(compiled, "bitmap_runs_array", lambda: (make(data), start, count))


@DIFF
@given(data=buffers(max_size=90), view=st.sampled_from(sorted(WRITABLE_VIEWS)), st_data=st.data())
def test_diff_bitmap_fill(compiled, data, view, st_data):
    make = WRITABLE_VIEWS[view]
    bits = len(data) * 8
    start = st_data.draw(indices(bits), label="start_bit")
    room = bits - start if isinstance(start, int) and 0 <= start <= bits else bits
    count = st_data.draw(indices(room), label="bit_count")
    value = st_data.draw(st.sampled_from([True, False, 1, 0, None, "x"]), label="value")
    assert_twins_agree(compiled, "bitmap_fill", lambda: (make(data), start, count, value))


@DIFF
@given(data=buffers(max_size=120), view=st.sampled_from(sorted(BYTE_VIEWS)))
def test_diff_bat_decode(compiled, data, view):
    make = BYTE_VIEWS[view]
    assert_twins_agree(compiled, "bat_decode", lambda: (make(data),))
    assert_twins_agree(compiled, "bat_decode", lambda: (make(data[: len(data) // 4 * 4]),))


@DIFF
@given(bat=bats(), unaligned=st.booleans())
def test_diff_bat_encode(compiled, bat, unaligned):
    if unaligned:
        raw = bytearray(b"\x00" + bat.tobytes())
        assert_twins_agree(compiled, "bat_encode", lambda: (memoryview(raw)[1:].cast("I"),))
    else:
        assert_twins_agree(compiled, "bat_encode", lambda: (bat,))


@DIFF
@given(bat=bats(), st_data=st.data())
def test_diff_bat_extents(compiled, bat, st_data):
    per_block = st_data.draw(
        st.one_of(
            st.sampled_from([1, 2, 4, 8, 9, 4096]), st.integers(-2, 20), st.sampled_from(HUGE)
        ),
        label="sectors_per_block",
    )
    bitmap = st_data.draw(
        st.one_of(st.sampled_from([0, 512, 4 * 512]), st.integers(-2, 3000), st.sampled_from(HUGE)),
        label="bitmap_bytes",
    )
    limit = len(bat) * per_block if isinstance(per_block, int) and per_block > 0 else 50
    limit = min(limit, 2**64)
    first = st_data.draw(indices(limit), label="first_sector")
    room = limit - first if isinstance(first, int) and 0 <= first <= limit else limit
    count = st_data.draw(indices(room), label="sector_count")
    assert_twins_agree(compiled, "bat_extents", lambda: (bat, first, count, per_block, bitmap))
    assert_twins_agree(
        compiled, "bat_extents_array", lambda: (bat, first, count, per_block, bitmap)
    )


@DIFF
@given(bat=bats(), st_data=st.data())
def test_diff_bat_scan(compiled, bat, st_data):
    sizes = st.one_of(
        st.sampled_from([512, 4096, 2**21]), st.integers(-2, 9000), st.sampled_from(HUGE)
    )
    block = st_data.draw(sizes, label="block_bytes")
    bitmap = st_data.draw(st.one_of(st.sampled_from([0, 512]), sizes), label="bitmap_bytes")
    start = st_data.draw(st.one_of(st.integers(-1, 40000), st.sampled_from(HUGE)), label="start")
    end = st_data.draw(
        st.one_of(st.integers(-1, 2**42), st.integers(0, 40000), st.sampled_from(HUGE)), label="end"
    )
    assert_twins_agree(compiled, "bat_scan", lambda: (bat, block, bitmap, start, end))


@DIFF
@given(
    bat=bats(max_size=8),
    arguments=st.tuples(*[st.sampled_from(NOT_INTS + [0, 1, 512, -1]) for _ in range(4)]),
)
def test_diff_bat_argument_types(compiled, bat, arguments):
    assert_twins_agree(compiled, "bat_extents", lambda: (bat, *arguments))
    assert_twins_agree(compiled, "bat_extents_array", lambda: (bat, *arguments))
    assert_twins_agree(compiled, "bat_scan", lambda: (bat, *arguments))


# ---------------------------------------------------------------------------
# Sizes the random tests do not reach


def test_diff_large_buffers(compiled):
    rng = np.random.default_rng(7)
    size = 1 << 16
    for position in (0, 255, 256, 4095, size - 9, size - 1):
        data = bytearray(size)
        data[position] = 1
        for name, args in [
            ("is_zero", (data,)),
            ("find_nonzero", (data, 0)),
            ("find_nonzero", (data, min(position + 1, size))),
            ("zero_chunks", (data, 4096)),
        ]:
            assert_twins_agree(compiled, name, lambda args=args: args)
    noise = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    assert_twins_agree(compiled, "vhd_checksum", lambda: (noise, 36))
    assert_twins_agree(compiled, "bitmap_count", lambda: (noise, 5, size * 8 - 12))
    runs = np.repeat(rng.integers(0, 2, 600), rng.integers(1, 300, 600))
    bitmap = np.packbits(runs).tobytes()
    assert_twins_agree(compiled, "bitmap_runs", lambda: (bitmap, 3, len(bitmap) * 8 - 3))
    assert_twins_agree(compiled, "bitmap_runs_array", lambda: (bitmap, 3, len(bitmap) * 8 - 3))
    # Random bits: a run boundary every other bit, several in most words.
    assert_twins_agree(compiled, "bitmap_runs_array", lambda: (noise, 5, size * 8 - 12))
    assert_twins_agree(compiled, "bitmap_fill", lambda: (bytearray(noise), 13, size * 8 - 20, 1))


def test_diff_large_bat(compiled):
    # Entries over the whole 32-bit range make every radix pass run; a
    # second table of small entries makes the high passes be skipped.
    rng = np.random.default_rng(11)
    count = 1 << 15
    wide = rng.integers(0, UNUSED, count, dtype=np.uint32)
    wide[rng.random(count) < 0.3] = UNUSED
    wide[::97] = wide[1::97]  # ties
    narrow = rng.permutation(count).astype(np.uint32) * 9
    narrow[rng.random(count) < 0.2] = UNUSED
    narrow[5::50] = narrow[6::50] + 3  # overlaps
    for bat in (wide, narrow):
        assert_twins_agree(compiled, "bat_scan", lambda bat=bat: (bat, 4096, 512, 4096, 2**40))
        assert_twins_agree(compiled, "bat_decode", lambda bat=bat: (bat.astype(">u4").tobytes(),))
        assert_twins_agree(compiled, "bat_encode", lambda bat=bat: (bat,))
        assert_twins_agree(compiled, "bat_extents", lambda bat=bat: (bat, 3, count * 8 - 5, 8, 512))
        assert_twins_agree(
            compiled, "bat_extents_array", lambda bat=bat: (bat, 3, count * 8 - 5, 8, 512)
        )
    # Blocks laid out one after another: one run over the whole table.
    laid_out = (np.arange(count, dtype=np.uint32) * 8 + 100).astype(np.uint32)
    assert_twins_agree(compiled, "bat_extents_array", lambda: (laid_out, 1, count * 8 - 2, 8, 0))
