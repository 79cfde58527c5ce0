"""Zero detection for writers: the one rule for what is left unwritten.

Every output (raw, fixed and dynamic VHD, and the block-moving operations
through :func:`vhdcore.io.sparse.write_sparse`) skips the same thing: an
aligned all-zero stretch of :data:`SPARSE_GRANULARITY` bytes, which on a
file stays a hole. The byte tests themselves are the kernels'
(``is_zero``, ``zero_chunks``); this module only says how a buffer is cut.
"""

from __future__ import annotations

from .._backend import kernels

#: Smallest aligned all-zero stretch left unwritten (a hole, on a file) in
#: every output, and inside the allocated blocks of dynamic output; what
#: ``qemu-img convert -S 4k`` skips.
SPARSE_GRANULARITY = 4096
#: Bytes a pre-pass reads from the start of a block to find it holds data
#: (real data is rarely zero there); only a block that starts with zeros is
#: read further.
DATA_PROBE = 4096


def nonzero_runs(view, granularity: int, offset: int = 0):
    """``(start, end)`` byte ranges of ``view`` that hold non-zero data.

    The buffer is judged in ``granularity`` chunks aligned to the *disk*
    (``offset`` is the view's position on it), by the kernels; a chunk with
    any non-zero byte is data, whole. Returns ``[]`` for all zeros.
    """
    if kernels.is_zero(view):
        return []
    length = len(view)
    head = min((-offset) % granularity, length)
    if length - head <= granularity and not head:
        return [(0, length)]
    runs = []
    if head and not kernels.is_zero(view[:head]):
        runs.append((0, head))
    if head < length:
        # One flag byte per chunk (1 = all zero); bytearray.find walks them
        # in C from one edge of a data run to the next.
        count = -(-(length - head) // granularity)
        flags = bytearray(count)
        kernels.zero_chunks(view[head:], granularity, out=flags)
        first = flags.find(0)
        while first >= 0:
            last = flags.find(1, first)
            if last < 0:
                last = count
            runs.append((head + first * granularity, min(head + last * granularity, length)))
            first = flags.find(0, last)
    if len(runs) > 1 and runs[0] == (0, head) and runs[1][0] == head:
        runs[0:2] = [(0, runs[1][1])]
    return runs



_ZERO_CHUNK = bytes(1 << 20)


def zero_fill(view) -> None:
    """Set every byte of a writable byte view to zero (a reader's zero runs)."""
    zeros = memoryview(_ZERO_CHUNK)
    for start in range(0, len(view), len(zeros)):
        end = min(start + len(zeros), len(view))
        view[start:end] = zeros[: end - start]


__all__ = ["DATA_PROBE", "SPARSE_GRANULARITY", "nonzero_runs", "zero_fill"]
