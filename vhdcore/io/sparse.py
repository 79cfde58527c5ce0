"""Writes that keep a file sparse: all-zero stretches over fresh space are skipped.

Space past a file's old end (or a hole) reads as zeros, so writing zeros
there only fills the file system with what it already returns. The
block-moving operations (``compact -o``, blocks appended by ``resize`` and
``rebase``) copy whole blocks, zero stretches and all; without this their
output occupied every block in full, where the source and ``qemu-img``
left holes (issue 10). Space that may hold old bytes (below ``fresh_from``)
gets its zeros written, so the contents are always exactly ``view``.
"""

from __future__ import annotations

from ..disk.zeros import SPARSE_GRANULARITY, nonzero_runs


def write_sparse(file, position: int, view, fresh_from: int) -> int:
    """Write ``view`` at ``position`` of ``file``, skipping zeros at or past ``fresh_from``.

    Zeros are judged in :data:`vhdcore.disk.zeros.SPARSE_GRANULARITY` chunks
    aligned to the *file* (so each skipped chunk can be a whole hole).

    Args:
        file: an :class:`vhdcore.io.imagefile.ImageFile` (anything with ``pwrite``).
        position: file offset of ``view``'s first byte.
        view: the bytes (a buffer).
        fresh_from: offset from which the file is known to read as zeros
            (its size before the operation began extending it).

    Returns:
        The bytes actually written.
    """
    view = memoryview(view).cast("B")
    length = len(view)
    end = position + length
    if end <= fresh_from:
        file.pwrite(position, view)
        return length
    written = 0
    head = max(0, fresh_from - position)
    if head:
        file.pwrite(position, view[:head])
        written += head
    for start, stop in nonzero_runs(view[head:], SPARSE_GRANULARITY, position + head):
        file.pwrite(position + head + start, view[head + start : head + stop])
        written += stop - start
    return written


__all__ = ["write_sparse"]
