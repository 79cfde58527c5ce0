"""The allocation-map record shared by the engine, ``map`` and conversion."""

from __future__ import annotations

from typing import List, NamedTuple

DATA = "data"  # held by this image
PARENT = "parent"  # held by an ancestor in the chain
ZERO = "zero"  # held by no member: reads as zeros
#: Stored, but not as the bytes it reads as (a compressed or encrypted
#: cluster): readable through ``readinto``, never copied file to file.
ENCODED = "encoded"
#: Every state an extent may have, in any format.
STATES = (DATA, PARENT, ZERO, ENCODED)


class Extent(NamedTuple):
    """A run of the virtual disk with one allocation state.

    Attributes:
        offset: virtual byte offset of the run.
        length: bytes in the run.
        state: ``"data"`` (held by the image asked), ``"parent"`` (held by
            the ancestor at ``depth``), ``"zero"`` (held by nobody) or
            ``"encoded"`` (held at ``depth``, but stored encoded, so its
            file bytes are not the disk's bytes).
        depth: 0 for the image asked, 1 for its parent, ...; -1 for zero.
        file_offset: byte offset of the run in the file of the chain member
            at ``depth``, or -1 for zero runs.
    """

    offset: int
    length: int
    state: str
    depth: int
    file_offset: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def append_extent(extents: List[Extent], extent: Extent) -> None:
    """Append ``extent``, merging it into the last one when they continue.

    Two runs merge when they have the same state and depth and, for runs
    with data, the second starts in the file where the first ends.
    """
    if extent.length <= 0:
        return
    if extents:
        last = extents[-1]
        if (
            last.end == extent.offset
            and last.state == extent.state
            and last.depth == extent.depth
            and (
                (last.file_offset < 0 and extent.file_offset < 0)
                or (last.file_offset >= 0 and last.file_offset + last.length == extent.file_offset)
            )
        ):
            extents[-1] = last._replace(length=last.length + extent.length)
            return
    extents.append(extent)
