"""Helpers several test files share (importable because pyproject puts tests/ on pythonpath).

Fixtures live in conftest.py; plain functions that tests call with their
own arguments live here.
"""

from __future__ import annotations

import numpy as np

from vhdcore.formats.vhd.check import check


def random_writes(image, model, rng, count, max_len=200_000, zero_fraction=0.2):
    """Apply ``count`` random writes (a share of them all-zero) to ``image`` and ``model``.

    ``model`` is a bytearray of the virtual disk; every write must report
    its full length. With ``zero_fraction`` 0 no randomness is spent on
    choosing zeros, so seeded workloads stay as they were.
    """
    size = len(model)
    for _ in range(count):
        length = int(rng.integers(1, max_len))
        offset = int(rng.integers(0, size - length))
        if zero_fraction and rng.random() < zero_fraction:
            data = bytes(length)
        else:
            data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        assert image.write(offset, data) == length
        model[offset : offset + length] = data


def assert_checks_clean(path, allowed=(), deep=True):
    """``vhdcore check`` finds nothing worse than leaked space (plus ``allowed`` codes).

    Right after a crash, ``deep=False`` keeps the check to metadata: a
    dynamic block whose data was written but whose bitmap bits were not yet
    set reads correctly (readers ignore dynamic bitmaps), and ``--deep``
    would warn about it.
    """
    report = check(path, deep=deep)
    bad = [p for p in report.problems if p.severity == "error" and p.code not in allowed]
    assert not bad, [p.message for p in bad]
