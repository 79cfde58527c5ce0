"""Zero detection: is_zero, find_nonzero, zero_chunks.

The worst case is timed: an all-zero buffer, which every row must read to
the end. The idioms are what one would write without vhdcore; "numpy copy"
is not an idiom but a yardstick: scanning for zeros should cost less than
copying the same bytes once.
"""

from __future__ import annotations

import numpy as np
import pytest

CHUNK = 512  # zero_chunks at sector granularity, as convert uses it


def _array(buf):
    return np.frombuffer(buf, dtype=np.uint8)


IS_ZERO_ROWS = [
    ("compiled", "compiled"),
    ("reference", "reference"),
    ("buf == bytes(len(buf))", "idiom"),
    ("buf.count(0) == len(buf)", "idiom"),
    ("not np.any", "idiom"),
    ("np.count_nonzero == 0", "idiom"),
    ("numpy copy", "baseline"),
]


@pytest.mark.kernel_table(IS_ZERO_ROWS)
def test_is_zero(measure, twins, payloads, size, row, kind):
    buf = payloads.zeros(size)
    array = _array(buf)
    functions = {
        "compiled": lambda: twins["compiled"].is_zero(buf),
        "reference": lambda: twins["reference"].is_zero(buf),
        "buf == bytes(len(buf))": lambda: buf == bytes(len(buf)),
        "buf.count(0) == len(buf)": lambda: buf.count(0) == len(buf),
        "not np.any": lambda: not np.any(array),
        "np.count_nonzero == 0": lambda: np.count_nonzero(array) == 0,
        "numpy copy": lambda: array.copy(),
    }
    result = measure("is_zero", size, row, kind, functions[row])
    if kind != "baseline":
        assert result is True or result == True  # numpy bools are not True


FIND_ROWS = [
    ("compiled", "compiled"),
    ("reference", "reference"),
    ("len(buf) - len(buf.lstrip(b'\\0'))", "idiom"),
    ("np.flatnonzero", "idiom"),
]


@pytest.mark.kernel_table(FIND_ROWS)
def test_find_nonzero(measure, twins, payloads, size, row, kind):
    buf = payloads.zeros(size)
    array = _array(buf)
    functions = {
        "compiled": lambda: twins["compiled"].find_nonzero(buf),
        "reference": lambda: twins["reference"].find_nonzero(buf),
        "len(buf) - len(buf.lstrip(b'\\0'))": lambda: len(buf) - len(buf.lstrip(b"\0")),
        "np.flatnonzero": lambda: np.flatnonzero(array)[:1],
    }
    measure("find_nonzero", size, row, kind, functions[row])


CHUNK_ROWS = [
    ("compiled", "compiled"),
    ("reference", "reference"),
    ("numpy reshape(-1, 512).any(axis=1)", "idiom"),
    ("slices == bytes(512)", "idiom"),
]


@pytest.mark.kernel_table(CHUNK_ROWS)
def test_zero_chunks(measure, twins, payloads, size, row, kind):
    buf = payloads.zeros(size)
    array = _array(buf)
    zero_chunk = bytes(CHUNK)
    functions = {
        "compiled": lambda: twins["compiled"].zero_chunks(buf, CHUNK),
        "reference": lambda: twins["reference"].zero_chunks(buf, CHUNK),
        "numpy reshape(-1, 512).any(axis=1)": lambda: ~array.reshape(-1, CHUNK).any(axis=1),
        "slices == bytes(512)": lambda: [
            buf[i : i + CHUNK] == zero_chunk for i in range(0, len(buf), CHUNK)
        ],
    }
    result = measure("zero_chunks", size, row, kind, functions[row])
    assert len(result) == len(buf) // CHUNK
