"""Commit (coalesce) a differencing disk into its immediate parent.

Every sector the child holds (its bitmap bits, read as runs through
``child.extents()``) is copied into the parent, which may be a fixed,
dynamic or differencing VHD of any block size: the parent's own write path
places each run, whatever the two block sizes are. Afterwards the parent
reads exactly as the child did.

Crash safety and restart. The child is only ever opened read-only, so it
stays byte-identical whatever happens. The parent changes in two phases:

1. :meth:`VHD.reserve` allocates every parent block the copy will touch,
   in the engine's crash-safe order (zeroed bitmap and new footer, barrier,
   BAT entries), with one barrier for all of them. A reserved block reads
   as it did before (zeros, or the grandparent through its empty bitmap).
2. The runs are copied in batches: data first, then the parent's bitmap
   bits (differencing parents), then a final fsync.

A crash at any point leaves a parent that opens and checks clean apart
from leaked space, holding some of the child's sectors and its own old
data elsewhere. Copying a child sector again is harmless, so running the
commit again finishes the job (vhd-util's coalesce has the same property
and no journal either).

Caveat: the parent changes. Any *other* child of the same parent (a
sibling snapshot) silently sees the new contents and is corrupted from
its own point of view; commit cannot know about siblings, exactly like
``vhd-util coalesce``. Only commit into a parent that nothing else uses.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional

from ...disk.extent import DATA
from ...errors import UnsupportedError, VHDError
from .image import open as open_image

__all__ = ["commit", "CommitResult"]

#: Bytes copied per batch (one read buffer, one ``write_many`` call).
BATCH_BYTES = 32 << 20


@dataclasses.dataclass
class CommitResult:
    """What :func:`commit` did."""

    child: str
    parent: str
    parent_type: str
    bytes_copied: int = 0
    runs: int = 0
    blocks_allocated: int = 0
    child_removed: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def commit(
    child,
    *,
    remove: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
    batch_bytes: int = BATCH_BYTES,
    **open_options,
) -> CommitResult:
    """Copy every sector a differencing child holds into its parent.

    Args:
        child: path of the differencing image.
        remove: delete the child once the parent is complete and flushed.
        progress: optional ``progress(done_bytes, total_bytes)`` callback.
        batch_bytes: bytes copied per batch (memory used for the copy).
        **open_options: chain options for :func:`vhdcore.open`
            (``allow_parent_dirs``, ``allow_symlinks``, ``max_chain_depth``).

    Returns:
        A :class:`CommitResult`.

    Raises:
        UnsupportedError: the image is not a differencing disk.
        VHDError: the child holds data past the parent's end, the parent
            is locked by another writer, or the chain cannot be opened.
    """
    began = time.monotonic()
    child_path = os.fspath(child)
    # The child under a shared lock: no writer may change it while it is copied.
    with open_image(child_path, "r", consistent=True, **open_options) as image:
        if image.type != "differencing":
            raise UnsupportedError(
                f"{child_path}: is a {image.type} image, not a differencing one: "
                f"it has no parent to commit into"
            )
        parent_path = image.parent.path
        runs = [e for e in image.extents() if e.state == DATA]
        total = sum(e.length for e in runs)
        with open_image(parent_path, "r+", **open_options) as parent:
            result = CommitResult(child_path, parent_path, parent.type)
            beyond = [e for e in runs if e.end > parent.virtual_size]
            if beyond:
                raise VHDError(
                    f"{child_path}: holds data up to offset {beyond[-1].end}, past the end of "
                    f"its parent {parent_path} ({parent.virtual_size} bytes): resize the "
                    f"parent first"
                )
            # Phase 1: every parent block the copy needs, one barrier.
            result.blocks_allocated = parent.reserve((e.offset, e.length) for e in runs)
            # Phase 2: the data, in batches read straight from the child's file.
            buffer = bytearray(max(min(batch_bytes, total), 1))
            view = memoryview(buffer)
            pieces = []
            used = 0
            done = 0
            source = image.image_file
            for extent in runs:
                position = 0
                while position < extent.length:
                    chunk = min(extent.length - position, len(view) - used)
                    part = view[used : used + chunk]
                    source.preadinto(extent.file_offset + position, part, "child data")
                    pieces.append((extent.offset + position, part))
                    used += chunk
                    position += chunk
                    if used == len(view):
                        parent.write_many(pieces)
                        done += used
                        pieces, used = [], 0
                        if progress is not None:
                            progress(done, total)
            if pieces:
                parent.write_many(pieces)
                done += used
            parent.flush()
            result.bytes_copied = done
            result.runs = len(runs)
            if progress is not None:
                progress(done, total)
    if remove:
        os.unlink(child_path)
        result.child_removed = True
    result.seconds = round(time.monotonic() - began, 3)
    return result
