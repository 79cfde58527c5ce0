"""Pure-Python reference kernels: the specification of every hot loop.

Each function here has a compiled twin of the same name, parameters,
results and exception types in ``_kernels.pyx``. These are written for
clarity, not speed: the tests prove the twins equal and the benchmarks
measure how much the compiled ones gain.

Conventions shared by every kernel:

* Buffers are any object with the buffer protocol (``bytes``,
  ``bytearray``, ``memoryview``, numpy arrays); a non-buffer such as
  ``None`` raises ``TypeError``.
* Integer arguments must be ``int``-like (``operator.index``); anything
  else raises ``TypeError``. Negative or out-of-range values raise
  ``ValueError``.
* Bitmaps are MSB-first, as VHD sector bitmaps are: bit 0 is the 0x80 bit
  of byte 0.
* Kernels named ``*_array`` return their runs as three ``array.array``
  columns rather than a list of tuples: filling three C arrays costs a
  fraction of building a tuple per run, and the stdlib type keeps them
  usable on the start-up path that never imports numpy
  (``numpy.frombuffer(column, numpy.int64)`` views one without a copy).
* numpy is imported only by the kernels that return numpy arrays
  (``zero_chunks`` without ``out``, ``bat_decode``), when first called:
  opening and converting an image never needs it, and importing it is
  most of a short command's start-up.
"""

from __future__ import annotations

import array
import operator

__all__ = [
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

_BAT_UNUSED = 0xFFFFFFFF
_SECTOR = 512


def _bytes_view(buf, name="buf"):
    """A flat unsigned-byte view of ``buf`` (TypeError if it has no buffer)."""
    if buf is None:
        raise TypeError(f"{name} must support the buffer protocol, not None")
    try:
        view = memoryview(buf)
    except TypeError:
        raise TypeError(
            f"{name} must support the buffer protocol, not {type(buf).__name__}"
        ) from None
    if not view.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _uint32_view(bat, name="bat"):
    """A view of a 1-D native uint32 buffer (TypeError for any other dtype)."""
    if bat is None:
        raise TypeError(f"{name} must be a uint32 buffer, not None")
    try:
        view = memoryview(bat)
    except TypeError:
        raise TypeError(f"{name} must be a uint32 buffer, not {type(bat).__name__}") from None
    if view.itemsize != 4 or view.format.lstrip("@=") not in ("I", "L"):
        raise TypeError(f"{name} must hold native uint32 items, not format {view.format!r}")
    if view.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if not view.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return view


def _index(value, name):
    """``operator.index`` with a message naming the argument."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None


def _check_range(start, count, limit, what):
    if start < 0:
        raise ValueError(f"{what}: start {start} is negative")
    if count < 0:
        raise ValueError(f"{what}: count {count} is negative")
    if start + count > limit:
        raise ValueError(f"{what}: range {start}+{count} runs past the end ({limit})")


def vhd_checksum(buf, checksum_offset):
    """The VHD checksum of a footer or dynamic header.

    One's complement, as an unsigned 32-bit value, of the sum of every byte
    of ``buf``, with the 4 bytes at ``checksum_offset`` counted as zero
    (64 for a 512-byte footer, 36 for a 1024-byte dynamic header).

    Raises:
        ValueError: the checksum field does not lie wholly inside ``buf``.
    """
    view = _bytes_view(buf)
    checksum_offset = _index(checksum_offset, "checksum_offset")
    if checksum_offset < 0 or checksum_offset + 4 > len(view):
        raise ValueError(
            f"checksum field at {checksum_offset} does not fit in {len(view)} bytes"
        )
    total = 0
    for position, byte in enumerate(view):
        if not checksum_offset <= position < checksum_offset + 4:
            total += byte
    return ~total & 0xFFFFFFFF


def is_zero(buf):
    """Whether every byte of ``buf`` is zero (True for an empty buffer)."""
    view = _bytes_view(buf)
    for byte in view:
        if byte:
            return False
    return True


def find_nonzero(buf, start=0):
    """Offset of the first non-zero byte at or after ``start``, or -1.

    Raises:
        ValueError: ``start`` is negative or past the end of ``buf``.
    """
    view = _bytes_view(buf)
    start = _index(start, "start")
    if start < 0 or start > len(view):
        raise ValueError(f"start {start} outside buffer of {len(view)} bytes")
    for position in range(start, len(view)):
        if view[position]:
            return position
    return -1


def zero_chunks(buf, chunk_size, out=None):
    """One flag per ``chunk_size`` chunk of ``buf``: True where it is all zero.

    The last chunk may be shorter. An empty buffer gives no flags.

    Returns:
        A numpy bool array; or, when ``out`` (a writable byte buffer of at
        least as many bytes as there are chunks) is given, the flags as
        bytes 1 (all zero) / 0 in its first bytes, and a memoryview of
        those bytes.

    Raises:
        ValueError: ``chunk_size`` is not positive; ``out`` is read-only
            or too short.
    """
    view = _bytes_view(buf)
    chunk_size = _index(chunk_size, "chunk_size")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size}")
    count = (len(view) + chunk_size - 1) // chunk_size
    flags = [True] * count
    for position, byte in enumerate(view):
        if byte:
            flags[position // chunk_size] = False
    if out is None:
        import numpy as np

        return np.array(flags, dtype=bool)
    target = _bytes_view(out, "out")
    if target.readonly:
        raise ValueError("out must be a writable buffer")
    if len(target) < count:
        raise ValueError(f"out holds {len(target)} bytes; {count} flags need as many")
    target[:count] = bytes(flags)
    return target[:count]


def _bit(view, bit):
    return (view[bit >> 3] >> (7 - (bit & 7))) & 1


def bitmap_count(bitmap, start_bit, bit_count):
    """How many bits are set in ``[start_bit, start_bit + bit_count)``.

    Raises:
        ValueError: the range is negative or runs past the bitmap.
    """
    view = _bytes_view(bitmap, "bitmap")
    start_bit = _index(start_bit, "start_bit")
    bit_count = _index(bit_count, "bit_count")
    _check_range(start_bit, bit_count, len(view) * 8, "bitmap_count")
    return sum(_bit(view, bit) for bit in range(start_bit, start_bit + bit_count))


def bitmap_runs(bitmap, start_bit, bit_count):
    """The maximal runs of equal bits over the range.

    Returns:
        A list of ``(start_bit, length, is_set)`` tuples covering the range
        in order; empty for an empty range.

    Raises:
        ValueError: the range is negative or runs past the bitmap.
    """
    view = _bytes_view(bitmap, "bitmap")
    start_bit = _index(start_bit, "start_bit")
    bit_count = _index(bit_count, "bit_count")
    _check_range(start_bit, bit_count, len(view) * 8, "bitmap_runs")
    runs = []
    for bit in range(start_bit, start_bit + bit_count):
        value = bool(_bit(view, bit))
        if runs and runs[-1][2] == value:
            first, length, _ = runs[-1]
            runs[-1] = (first, length + 1, value)
        else:
            runs.append((bit, 1, value))
    return runs


def bitmap_runs_array(bitmap, start_bit, bit_count):
    """The runs of :func:`bitmap_runs` as three columns.

    Returns:
        ``(starts, lengths, states)``: ``array("q")`` of the first bit and
        of the length of each run, and ``array("B")`` of its value (1 set,
        0 clear); all empty for an empty range.

    Raises:
        The exceptions of :func:`bitmap_runs`, for the same arguments.
    """
    runs = bitmap_runs(bitmap, start_bit, bit_count)
    return (
        array.array("q", [run[0] for run in runs]),
        array.array("q", [run[1] for run in runs]),
        array.array("B", [run[2] for run in runs]),
    )


def bitmap_fill(bitmap, start_bit, bit_count, value):
    """Set (``value`` true) or clear the bits of the range, in place.

    Raises:
        ValueError: the buffer is read-only, or the range is negative or
            runs past the bitmap.
    """
    view = _bytes_view(bitmap, "bitmap")
    if view.readonly:
        raise ValueError("bitmap must be a writable buffer")
    start_bit = _index(start_bit, "start_bit")
    bit_count = _index(bit_count, "bit_count")
    _check_range(start_bit, bit_count, len(view) * 8, "bitmap_fill")
    for bit in range(start_bit, start_bit + bit_count):
        mask = 0x80 >> (bit & 7)
        if value:
            view[bit >> 3] |= mask
        else:
            view[bit >> 3] &= ~mask & 0xFF
    return None


def bat_decode(raw):
    """Native-order uint32 array from the big-endian on-disk BAT bytes.

    Raises:
        ValueError: the length is not a multiple of 4.
    """
    view = _bytes_view(raw, "raw")
    if len(view) % 4:
        raise ValueError(f"BAT bytes must be a multiple of 4 long, not {len(view)}")
    entries = [int.from_bytes(view[i : i + 4], "big") for i in range(0, len(view), 4)]
    import numpy as np

    return np.array(entries, dtype=np.uint32)


def bat_encode(bat):
    """Big-endian on-disk bytes of a uint32 BAT array."""
    view = _uint32_view(bat)
    return b"".join(int(entry).to_bytes(4, "big") for entry in view)


def bat_extents(bat, first_sector, sector_count, sectors_per_block, bitmap_bytes):
    """Map a range of virtual sectors to runs in the file.

    Args:
        bat: the decoded table (uint32 array).
        first_sector, sector_count: the virtual range, in sectors.
        sectors_per_block: sectors of data per block (> 0).
        bitmap_bytes: bytes of sector bitmap before each block's data.

    Returns:
        A list of ``(virtual_sector, count, file_offset)``: ``file_offset`` is
        the byte offset of the run's first sector, or -1 where the block is
        unallocated. Runs that continue each other in the file are merged,
        and so are neighbouring unallocated runs.

    Raises:
        ValueError: negative arguments, ``sectors_per_block`` of 0, or a
            range beyond the blocks the table describes.
    """
    view = _uint32_view(bat)
    first_sector = _index(first_sector, "first_sector")
    sector_count = _index(sector_count, "sector_count")
    sectors_per_block = _index(sectors_per_block, "sectors_per_block")
    bitmap_bytes = _index(bitmap_bytes, "bitmap_bytes")
    if sectors_per_block <= 0:
        raise ValueError(f"sectors_per_block must be positive, not {sectors_per_block}")
    if bitmap_bytes < 0:
        raise ValueError(f"bitmap_bytes must not be negative, not {bitmap_bytes}")
    _check_range(first_sector, sector_count, len(view) * sectors_per_block, "bat_extents")
    runs = []
    sector = first_sector
    end = first_sector + sector_count
    while sector < end:
        block = sector // sectors_per_block
        within = sector - block * sectors_per_block
        count = min(sectors_per_block - within, end - sector)
        entry = view[block]
        if entry == _BAT_UNUSED:
            offset = -1
        else:
            offset = entry * _SECTOR + bitmap_bytes + within * _SECTOR
        if runs:
            prev_sector, prev_count, prev_offset = runs[-1]
            contiguous = (offset == -1 and prev_offset == -1) or (
                offset != -1 and prev_offset != -1 and prev_offset + prev_count * _SECTOR == offset
            )
            if contiguous:
                runs[-1] = (prev_sector, prev_count + count, prev_offset)
                sector += count
                continue
        runs.append((sector, count, offset))
        sector += count
    return runs


def bat_extents_array(bat, first_sector, sector_count, sectors_per_block, bitmap_bytes):
    """The runs of :func:`bat_extents` as three columns.

    Returns:
        ``(sectors, counts, file_offsets)``, each an ``array("q")``: the
        first virtual sector, the sector count and the file offset (-1
        where unallocated) of each run; all empty for an empty range.

    Raises:
        The exceptions of :func:`bat_extents`, for the same arguments;
        OverflowError when an offset does not fit in 64 bits (a block or
        bitmap of exabytes, which no VHD has).
    """
    runs = bat_extents(bat, first_sector, sector_count, sectors_per_block, bitmap_bytes)
    return (
        array.array("q", [run[0] for run in runs]),
        array.array("q", [run[1] for run in runs]),
        array.array("q", [run[2] for run in runs]),
    )


def bat_scan(bat, block_bytes, bitmap_bytes, data_start, data_end):
    """Summarise the allocated entries of a BAT and find the misplaced ones.

    A block occupies ``[entry * 512, entry * 512 + bitmap_bytes + block_bytes)``
    in the file. Sorting by start makes the overlap test linear after the
    sort, because real tables hold up to a million entries.

    Returns:
        ``(allocated_count, end_of_last_block, bad)``: the number of
        allocated entries, the largest block end (0 if none), and an
        ``array.array("q")``, ascending, of the indices of allocated entries
        whose block leaves ``[data_start, data_end)`` or overlaps another
        block.

    Raises:
        ValueError: ``block_bytes`` not positive, or negative sizes/offsets.
    """
    view = _uint32_view(bat)
    block_bytes = _index(block_bytes, "block_bytes")
    bitmap_bytes = _index(bitmap_bytes, "bitmap_bytes")
    data_start = _index(data_start, "data_start")
    data_end = _index(data_end, "data_end")
    if block_bytes <= 0:
        raise ValueError(f"block_bytes must be positive, not {block_bytes}")
    if bitmap_bytes < 0 or data_start < 0 or data_end < 0:
        raise ValueError("bitmap_bytes, data_start and data_end must not be negative")
    span = bitmap_bytes + block_bytes
    blocks = sorted(
        (int(entry) * _SECTOR, index) for index, entry in enumerate(view) if entry != _BAT_UNUSED
    )
    bad = set()
    end_of_last = 0
    max_end_before = -1
    for position, (start, index) in enumerate(blocks):
        end = start + span
        end_of_last = max(end_of_last, end)
        if start < data_start or end > data_end:
            bad.add(index)
        if start < max_end_before:
            bad.add(index)
        if position + 1 < len(blocks) and blocks[position + 1][0] < end:
            bad.add(index)
        max_end_before = max(max_end_before, end)
    return len(blocks), end_of_last, array.array("q", sorted(bad))
