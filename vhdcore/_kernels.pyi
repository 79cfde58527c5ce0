"""Typing for the compiled kernels: the signatures of ``_reference``.

The reference twin has the documentation; these stubs only let type
checkers see the compiled module, which they cannot read.
"""

import array
import sys

import numpy as np
import numpy.typing as npt

if sys.version_info >= (3, 12):
    from collections.abc import Buffer
else:
    from typing_extensions import Buffer

from typing import SupportsIndex

__all__ = [  # noqa: RUF022 (the reference's order)
    "vhd_checksum",
    "is_zero",
    "find_nonzero",
    "zero_chunks",
    "bitmap_count",
    "bitmap_runs",
    "bitmap_runs_array",
    "bitmap_fill",
    "bat_decode",
    "bat_encode",
    "bat_extents",
    "bat_extents_array",
    "bat_scan",
]

def vhd_checksum(buf: Buffer, checksum_offset: SupportsIndex) -> int: ...
def is_zero(buf: Buffer) -> bool: ...
def find_nonzero(buf: Buffer, start: SupportsIndex = 0) -> int: ...
def zero_chunks(
    buf: Buffer, chunk_size: SupportsIndex, out: Buffer | None = None
) -> npt.NDArray[np.bool_] | memoryview: ...
def bitmap_count(bitmap: Buffer, start_bit: SupportsIndex, bit_count: SupportsIndex) -> int: ...
def bitmap_runs(
    bitmap: Buffer, start_bit: SupportsIndex, bit_count: SupportsIndex
) -> list[tuple[int, int, bool]]: ...
def bitmap_runs_array(
    bitmap: Buffer, start_bit: SupportsIndex, bit_count: SupportsIndex
) -> tuple[array.array[int], array.array[int], array.array[int]]: ...
def bitmap_fill(
    bitmap: Buffer, start_bit: SupportsIndex, bit_count: SupportsIndex, value: object
) -> None: ...
def bat_decode(raw: Buffer) -> npt.NDArray[np.uint32]: ...
def bat_encode(bat: Buffer) -> bytes: ...
def bat_extents(
    bat: Buffer,
    first_sector: SupportsIndex,
    sector_count: SupportsIndex,
    sectors_per_block: SupportsIndex,
    bitmap_bytes: SupportsIndex,
) -> list[tuple[int, int, int]]: ...
def bat_extents_array(
    bat: Buffer,
    first_sector: SupportsIndex,
    sector_count: SupportsIndex,
    sectors_per_block: SupportsIndex,
    bitmap_bytes: SupportsIndex,
) -> tuple[array.array[int], array.array[int], array.array[int]]: ...
def bat_scan(
    bat: Buffer,
    block_bytes: SupportsIndex,
    bitmap_bytes: SupportsIndex,
    data_start: SupportsIndex,
    data_end: SupportsIndex,
) -> tuple[int, int, array.array[int]]: ...
