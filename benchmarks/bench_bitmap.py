"""Sector-bitmap kernels: bitmap_count, bitmap_runs(_array), bitmap_fill.

Ranges start and end mid-byte (bit 3 to 5 bits before the end), so the
edge handling is in every timing. Idioms work on whole bytes only, which
flatters them slightly. The run kernels are also timed on 64 KiB of random
bits (the bitmap of a 256 MiB block written sector by sector at random): a
run every two bits, so building the result is nearly all of the work.
"""

from __future__ import annotations

import numpy as np
import pytest

HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")  # numpy >= 2.0
HAS_BIT_COUNT = hasattr(int, "bit_count")  # Python >= 3.10


def _span(buf):
    return 3, len(buf) * 8 - 8


COUNT_ROWS = [("compiled", "compiled"), ("reference", "reference")]
if HAS_BIT_COUNT:
    COUNT_ROWS.append(("int.from_bytes(..).bit_count()", "idiom"))
if HAS_BITWISE_COUNT:
    COUNT_ROWS.append(("np.bitwise_count(..).sum()", "idiom"))


@pytest.mark.kernel_table(COUNT_ROWS)
def test_bitmap_count(measure, twins, payloads, size, row, kind):
    buf = payloads.noise(size)
    array = np.frombuffer(buf, dtype=np.uint8)
    start, count = _span(buf)
    functions = {
        "compiled": lambda: twins["compiled"].bitmap_count(buf, start, count),
        "reference": lambda: twins["reference"].bitmap_count(buf, start, count),
        "int.from_bytes(..).bit_count()": lambda: int.from_bytes(buf, "big").bit_count(),
        "np.bitwise_count(..).sum()": lambda: int(np.bitwise_count(array).sum()),
    }
    measure("bitmap_count", size, row, kind, functions[row])


RUNS_ROWS = [
    ("compiled", "compiled"),
    ("reference", "reference"),
    # Finds the run boundaries only; building the list of tuples the
    # kernel returns would add a Python loop on top.
    ("np.flatnonzero(np.diff(unpackbits)) (bounds only)", "idiom"),
]


RUNS_SIZES = ("4KiB", "64KiB-random", "2MiB", "64MiB")


def _runs_input(payloads, size):
    return payloads.random_bitmap(size) if size.endswith("random") else payloads.runs_bitmap(size)


@pytest.mark.kernel_table(RUNS_ROWS, sizes=RUNS_SIZES)
def test_bitmap_runs(measure, twins, payloads, size, row, kind):
    buf = _runs_input(payloads, size)
    array = np.frombuffer(buf, dtype=np.uint8)
    start, count = _span(buf)
    functions = {
        "compiled": lambda: twins["compiled"].bitmap_runs(buf, start, count),
        "reference": lambda: twins["reference"].bitmap_runs(buf, start, count),
        "np.flatnonzero(np.diff(unpackbits)) (bounds only)": lambda: np.flatnonzero(
            np.diff(np.unpackbits(array)[start : start + count])
        ),
    }
    measure("bitmap_runs", size, row, kind, functions[row])


RUNS_ARRAY_ROWS = [
    ("compiled", "compiled"),
    ("reference", "reference"),
    ("np.flatnonzero(np.diff(unpackbits)) (bounds only)", "idiom"),
    # What the array variant is for: the same runs without a tuple each.
    ("bitmap_runs, compiled (list of tuples)", "baseline"),
]


@pytest.mark.kernel_table(RUNS_ARRAY_ROWS, sizes=RUNS_SIZES)
def test_bitmap_runs_array(measure, twins, payloads, size, row, kind):
    buf = _runs_input(payloads, size)
    array = np.frombuffer(buf, dtype=np.uint8)
    start, count = _span(buf)
    functions = {
        "compiled": lambda: twins["compiled"].bitmap_runs_array(buf, start, count),
        "reference": lambda: twins["reference"].bitmap_runs_array(buf, start, count),
        "np.flatnonzero(np.diff(unpackbits)) (bounds only)": lambda: np.flatnonzero(
            np.diff(np.unpackbits(array)[start : start + count])
        ),
        "bitmap_runs, compiled (list of tuples)": lambda: twins["compiled"].bitmap_runs(
            buf, start, count
        ),
    }
    measure("bitmap_runs_array", size, row, kind, functions[row])


FILL_ROWS = [
    ("compiled", "compiled"),
    ("reference", "reference"),
    ("numpy slice fill (whole bytes)", "idiom"),
    ("bytearray slice assignment (whole bytes)", "idiom"),
]


@pytest.mark.kernel_table(FILL_ROWS)
def test_bitmap_fill(measure, twins, payloads, size, row, kind):
    bitmap = bytearray(payloads.noise(size))
    array = np.frombuffer(bitmap, dtype=np.uint8)
    start, count = _span(bitmap)
    ones = b"\xff" * (len(bitmap) - 2)

    def assign():
        bitmap[1:-1] = ones

    def fill():
        array[1:-1] = 0xFF

    functions = {
        "compiled": lambda: twins["compiled"].bitmap_fill(bitmap, start, count, True),
        "reference": lambda: twins["reference"].bitmap_fill(bitmap, start, count, True),
        "numpy slice fill (whole bytes)": fill,
        "bytearray slice assignment (whole bytes)": assign,
    }
    measure("bitmap_fill", size, row, kind, functions[row])
