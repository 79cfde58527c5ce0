"""Comparing the virtual contents of two disks, of any formats, like ``qemu-img compare``.

The two allocation maps are walked together: a stretch that is zero in
both is never read, a stretch stored in one and zero in the other is only
scanned for its first non-zero byte, and only stretches stored in both
are read and compared.
"""

from __future__ import annotations

from typing import Iterator, Optional

from ..disk.sources import Run, Source, as_source
from ..errors import UnsupportedError


def _clipped_runs(source: Source, end: int) -> Iterator[Run]:
    for offset, length, is_data in source.runs():
        if offset >= end:
            return
        yield offset, min(length, end - offset), is_data


def _merged_runs(first: Source, second: Source, end: int):
    """``(start, stop, first_is_data, second_is_data)`` over ``[0, end)``."""
    runs_a = _clipped_runs(first, end)
    runs_b = _clipped_runs(second, end)
    a = next(runs_a, None)
    b = next(runs_b, None)
    position = 0
    while position < end and a is not None and b is not None:
        stop = min(a[0] + a[1], b[0] + b[1], end)
        if stop > position:
            yield position, stop, a[2], b[2]
        position = stop
        if position >= a[0] + a[1]:
            a = next(runs_a, None)
        if position >= b[0] + b[1]:
            b = next(runs_b, None)


def _first_nonzero(source: Source, start: int, end: int, buffer) -> Optional[int]:
    """Offset of the first non-zero byte of ``source`` in ``[start, end)``, or ``None``."""
    from .._backend import kernels

    view = memoryview(buffer)
    for offset, length, piece in source.pieces(view, len(view), start):
        if offset >= end:
            break
        if piece is None:
            continue
        piece = piece[: max(0, min(length, end - offset))]
        found = kernels.find_nonzero(piece)
        if found >= 0:
            return offset + found
    return None


def _first_difference(first: Source, second: Source, end: int, progress=None) -> Optional[int]:
    from .._backend import kernels

    chunk = 4 << 20
    buf_a, buf_b = bytearray(chunk), bytearray(chunk)
    view_a, view_b = memoryview(buf_a), memoryview(buf_b)
    for start, stop, a_data, b_data in _merged_runs(first, second, end):
        position = start
        while position < stop and (a_data or b_data):
            count = min(chunk, stop - position)
            if a_data:
                first.readinto(position, view_a[:count])
            if b_data:
                second.readinto(position, view_b[:count])
            if a_data and b_data:
                # Whole bytearrays compare with memcmp; memoryviews do not.
                same = buf_a == buf_b if count == chunk else buf_a[:count] == buf_b[:count]
                if not same:
                    import numpy as np

                    diff = np.frombuffer(view_a[:count], np.uint8) != np.frombuffer(
                        view_b[:count], np.uint8
                    )
                    return position + int(np.flatnonzero(diff)[0])
            else:
                found = kernels.find_nonzero(view_a[:count] if a_data else view_b[:count])
                if found >= 0:
                    return position + found
            position += count
            if progress is not None:
                progress.update(position)
        if progress is not None:
            progress.update(stop)
    return None


def compare_images(
    first,
    second,
    first_format: Optional[str] = None,
    second_format: Optional[str] = None,
    progress=None,
    open_options=None,
) -> dict:
    """Compare the virtual contents of two images of any formats.

    Runs that are zero in both are not read; a run stored in one and zero
    in the other is only scanned for a non-zero byte. When the sizes
    differ the images count as identical if the larger one's extra part
    is all zeros (``qemu-img compare``'s default); ``size_a`` and
    ``size_b`` in the report show the difference.

    Returns:
        ``{"a", "b", "format_a", "type_a", "format_b", "type_b", "size_a",
        "size_b", "identical", "first_difference"}``: format the registry
        name (``"raw"``, ``"vhd"``, ...), type the format's own kind of disk
        (a VHD's ``"fixed"``, ``"dynamic"``, ``"differencing"``, else the
        format name); first_difference an offset or ``None``.

    Raises:
        VHDError: an image cannot be read (or is a pipe).
    """
    source_a, owned_a = as_source(first, first_format, open_options)
    try:
        source_b, owned_b = as_source(second, second_format, open_options)
        try:
            for source in (source_a, source_b):
                if not source.seekable:
                    raise UnsupportedError(f"{source.name}: compare needs a file, not a pipe")
            size_a, size_b = source_a.virtual_size, source_b.virtual_size
            common = min(size_a, size_b)
            if progress is not None:
                progress.total = max(size_a, size_b)
            found = _first_difference(source_a, source_b, common, progress)
            if found is None and size_a != size_b:
                larger = source_a if size_a > size_b else source_b
                found = _first_nonzero(larger, common, max(size_a, size_b), bytearray(4 << 20))
            if progress is not None:
                progress.finish()
            return {
                "a": source_a.name,
                "b": source_b.name,
                "format_a": source_a.format,
                "type_a": source_a.kind,
                "format_b": source_b.format,
                "type_b": source_b.kind,
                "size_a": size_a,
                "size_b": size_b,
                "identical": found is None,
                "first_difference": found,
            }
        finally:
            if owned_b:
                source_b.close()
    finally:
        if owned_a:
            source_a.close()


__all__ = ["compare_images"]
