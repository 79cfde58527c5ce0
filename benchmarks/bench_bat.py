"""Block allocation table kernels on the full 1,048,576-entry table.

Half the blocks are allocated, in shuffled file order (a guest that wrote
all over its disk): every allocated block is its own run for bat_extents,
and bat_scan has a million-entry sort to do. bat_extents is also timed on
a sparse table (1/16 of the blocks, in clusters of 64), where far fewer
runs come out; its cost is dominated by building the result tuples, so
the number of runs decides the ratio. bat_extents_array returns the same
runs as three int64 columns, so only the walk and the merging are left.
"""

from __future__ import annotations

import array as array_module
import sys

import numpy as np
import pytest

BAT_ENTRIES = 1 << 20  # the full table of a 2 TiB disk with 2 MiB blocks
BAT_UNUSED = 0xFFFFFFFF
SECTORS_PER_BLOCK = 4096  # 2 MiB blocks
BITMAP_BYTES = 512
BLOCK_BYTES = 2 * 1024 * 1024
DATA_START = 1536 + 4 * BAT_ENTRIES
TABLE = ("BAT1M",)


def _stdlib_decode(raw):
    table = array_module.array("I", raw)
    if sys.byteorder == "little":
        table.byteswap()
    return table


def _stdlib_encode(bat):
    table = array_module.array("I", bat.tobytes())
    if sys.byteorder == "little":
        table.byteswap()
    return table.tobytes()


DECODE_ROWS = [
    ("compiled", "compiled"),
    ("reference", "reference"),
    ("np.frombuffer('>u4').astype(uint32)", "idiom"),
    ("array('I').byteswap()", "idiom"),
]


@pytest.mark.kernel_table(DECODE_ROWS, sizes=TABLE)
def test_bat_decode(measure, twins, payloads, size, row, kind):
    raw = payloads.bat(BAT_ENTRIES).astype(">u4").tobytes()
    functions = {
        "compiled": lambda: twins["compiled"].bat_decode(raw),
        "reference": lambda: twins["reference"].bat_decode(raw),
        "np.frombuffer('>u4').astype(uint32)": lambda: np.frombuffer(raw, ">u4").astype(np.uint32),
        "array('I').byteswap()": lambda: _stdlib_decode(raw),
    }
    result = measure("bat_decode", size, row, kind, functions[row])
    assert len(result) == BAT_ENTRIES


ENCODE_ROWS = [
    ("compiled", "compiled"),
    ("reference", "reference"),
    ("bat.astype('>u4').tobytes()", "idiom"),
    ("array('I').byteswap().tobytes()", "idiom"),
]


@pytest.mark.kernel_table(ENCODE_ROWS, sizes=TABLE)
def test_bat_encode(measure, twins, payloads, size, row, kind):
    bat = payloads.bat(BAT_ENTRIES)
    functions = {
        "compiled": lambda: twins["compiled"].bat_encode(bat),
        "reference": lambda: twins["reference"].bat_encode(bat),
        "bat.astype('>u4').tobytes()": lambda: bat.astype(">u4").tobytes(),
        "array('I').byteswap().tobytes()": lambda: _stdlib_encode(bat),
    }
    result = measure("bat_encode", size, row, kind, functions[row])
    assert len(result) == 4 * BAT_ENTRIES


EXTENT_ROWS = [("compiled", "compiled"), ("reference", "reference")]  # no idiom does this


@pytest.mark.kernel_table(EXTENT_ROWS, sizes=("BAT1M", "BAT1M-sparse"))
def test_bat_extents(measure, twins, payloads, size, row, kind):
    bat = (
        payloads.bat(BAT_ENTRIES, 1 / 16, 64)
        if size.endswith("sparse")
        else payloads.bat(BAT_ENTRIES)
    )
    function = twins[kind].bat_extents
    measure(
        "bat_extents",
        size,
        row,
        kind,
        function,
        bat,
        0,
        BAT_ENTRIES * SECTORS_PER_BLOCK,
        SECTORS_PER_BLOCK,
        BITMAP_BYTES,
    )


EXTENT_ARRAY_ROWS = [
    ("compiled", "compiled"),
    ("reference", "reference"),
    ("bat_extents, compiled (list of tuples)", "baseline"),
]


@pytest.mark.kernel_table(EXTENT_ARRAY_ROWS, sizes=("BAT1M", "BAT1M-sparse"))
def test_bat_extents_array(measure, twins, payloads, size, row, kind):
    bat = (
        payloads.bat(BAT_ENTRIES, 1 / 16, 64)
        if size.endswith("sparse")
        else payloads.bat(BAT_ENTRIES)
    )
    function = {
        "compiled": twins["compiled"].bat_extents_array,
        "reference": twins["reference"].bat_extents_array,
        "bat_extents, compiled (list of tuples)": twins["compiled"].bat_extents,
    }[row]
    measure(
        "bat_extents_array",
        size,
        row,
        kind,
        function,
        bat,
        0,
        BAT_ENTRIES * SECTORS_PER_BLOCK,
        SECTORS_PER_BLOCK,
        BITMAP_BYTES,
    )


SCAN_ROWS = [
    ("compiled", "compiled"),
    ("reference", "reference"),
    # Only the sort that the scan is built on, without the checks.
    ("np.argsort(kind='stable') of allocated (sort only)", "idiom"),
]


@pytest.mark.kernel_table(SCAN_ROWS, sizes=TABLE)
def test_bat_scan(measure, twins, payloads, size, row, kind):
    bat = payloads.bat(BAT_ENTRIES)
    end = DATA_START + BAT_ENTRIES * (BLOCK_BYTES + BITMAP_BYTES)
    functions = {
        "compiled": lambda: twins["compiled"].bat_scan(
            bat, BLOCK_BYTES, BITMAP_BYTES, DATA_START, end
        ),
        "reference": lambda: twins["reference"].bat_scan(
            bat, BLOCK_BYTES, BITMAP_BYTES, DATA_START, end
        ),
        "np.argsort(kind='stable') of allocated (sort only)": lambda: np.argsort(
            bat[bat != BAT_UNUSED], kind="stable"
        ),
    }
    measure("bat_scan", size, row, kind, functions[row])
