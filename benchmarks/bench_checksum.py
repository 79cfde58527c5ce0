"""vhd_checksum on random bytes: the byte sum is the whole cost.

A real footer is 512 bytes; the large sizes show the loop's throughput,
which is what the 4 KiB call overhead is amortised against.
"""

from __future__ import annotations

import numpy as np
import pytest

OFFSET = 64  # where a footer keeps its checksum

ROWS = [
    ("compiled", "compiled"),
    ("reference", "reference"),
    ("~sum(buf) (stdlib)", "idiom"),
    ("numpy sum(dtype=uint64)", "idiom"),
]


def _stdlib(buf):
    return ~(sum(buf) - sum(buf[OFFSET : OFFSET + 4])) & 0xFFFFFFFF


def _numpy(buf):
    array = np.frombuffer(buf, dtype=np.uint8)
    total = int(array.sum(dtype=np.uint64)) - int(array[OFFSET : OFFSET + 4].sum())
    return ~total & 0xFFFFFFFF


@pytest.mark.kernel_table(ROWS)
def test_vhd_checksum(measure, twins, payloads, size, row, kind):
    buf = payloads.noise(size)
    functions = {
        "compiled": lambda: twins["compiled"].vhd_checksum(buf, OFFSET),
        "reference": lambda: twins["reference"].vhd_checksum(buf, OFFSET),
        "~sum(buf) (stdlib)": lambda: _stdlib(buf),
        "numpy sum(dtype=uint64)": lambda: _numpy(buf),
    }
    result = measure("vhd_checksum", size, row, kind, functions[row])
    assert result == _numpy(buf)
