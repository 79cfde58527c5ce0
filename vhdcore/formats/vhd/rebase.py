"""Rebase: point a differencing disk at a new parent.

Safe form (the default): the child's view must not change. Wherever the
child does not hold a sector itself, it shows its old parent chain's
contents; wherever those differ from the new parent's, the old contents
are first copied into the child (zeros included: a zero sector over a
non-zero new parent must be held explicitly). Then the header's parent
fields are rewritten: UUID, the new parent file's modification time, its
name, and the two locators :func:`vhdcore.create` writes (``W2ru``
relative to the child's directory, ``W2ku`` absolute).

Unsafe form (``unsafe=True``, like ``vhd-util modify -p`` and ``qemu-img
rebase -u``): only the parent fields and locators change; the child's view
becomes "its own sectors over the new parent". The old parent is never
opened, so it may be missing. Use it to relink a child whose parent was
moved or copied (same UUID), when you know the new parent has the same
contents, or after ``commit --remove`` of a middle layer (base <- s1 <- s2
<- s3: commit s2 into s1, then relink s3 to s1).

Locators never overwrite the data they replace. The new payloads go to
space the header does not reference yet: a free gap after the tables when
there is one, else right after the current metadata, after moving the
first data blocks that lie there to the end of the file (copy, barrier,
BAT entry, barrier). Only then is the 1024-byte header rewritten, in one
write. A crash leaves the child pointing at the old parent (or, after the
header write, at the new one), never at a mixture.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional

import numpy as np

from ...disk.extent import DATA, ZERO
from ...errors import ChainLoopError, LimitError, UnsupportedError, VHDError
from .chain import locator_payloads
from .constants import SECTOR_SIZE
from .create import parent_locators
from .footer import vhd_timestamp
from .header import decode_parent_name
from .image import open as open_image
from .locators import candidate_paths
from .resize import rewrite_metadata

__all__ = ["rebase", "RebaseResult"]

_CHUNK = 4 << 20
_BATCH = 32 << 20


@dataclasses.dataclass
class RebaseResult:
    """What :func:`rebase` did."""

    child: str
    old_parent: str
    new_parent: str
    unsafe: bool
    bytes_compared: int = 0
    bytes_copied: int = 0
    blocks_moved: int = 0
    locator_placement: str = ""
    notes: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _sector_runs(old: bytes, new: bytes):
    """``(first_sector, count)`` runs where ``old`` and ``new`` differ, by 512-byte sector."""
    a = np.frombuffer(old, dtype=np.uint8).reshape(-1, SECTOR_SIZE)
    b = np.frombuffer(new, dtype=np.uint8).reshape(-1, SECTOR_SIZE)
    differ = np.flatnonzero((a != b).any(axis=1))
    if not len(differ):
        return []
    breaks = np.flatnonzero(np.diff(differ) != 1)
    starts = np.concatenate(([differ[0]], differ[breaks + 1]))
    ends = np.concatenate((differ[breaks], [differ[-1]])) + 1
    return list(zip(starts.tolist(), (ends - starts).tolist()))


def _preserve_view(image, target, progress) -> tuple:
    """Copy into ``image`` every sector where its old chain and ``target`` differ.

    Only ranges the child does not hold are compared; where both sides are
    known zeros nothing is read. Returns ``(bytes_compared, bytes_copied)``.
    """
    todo = [e for e in image.extents() if e.state != DATA]
    total = sum(e.length for e in todo)
    compared = copied = done = 0
    pieces, pending = [], 0
    zeros = bytes(_CHUNK)
    for extent in todo:
        for part in target.extents(extent.offset, extent.length):
            if extent.state == ZERO and part.state == ZERO:
                continue
            position = part.offset
            while position < part.end:
                length = min(_CHUNK, part.end - position)
                old = image.read(position, length)
                new = zeros[:length] if part.state == ZERO else target.read(position, length)
                compared += length
                for first, count in _sector_runs(old, new):
                    start = first * SECTOR_SIZE
                    pieces.append((position + start, old[start : start + count * SECTOR_SIZE]))
                    pending += count * SECTOR_SIZE
                position += length
                if pending >= _BATCH:
                    image.write_many(pieces, allocate_zeros=True)
                    copied += pending
                    pieces, pending = [], 0
        done += extent.length
        if progress is not None:
            progress(done, total)
    if pieces:
        image.write_many(pieces, allocate_zeros=True)
        copied += pending
    return compared, copied


def _open_child(child_path, unsafe, open_options):
    """The child open for writing: with its old chain (safe), or on its own (unsafe).

    An unsafe rebase rewrites only metadata and never reads the old chain,
    so the child is opened without it (``qemu-img rebase -u`` does the
    same): the old parent may be gone, e.g. after ``commit --remove`` of
    the middle of a chain.
    """
    if unsafe:
        return open_image(child_path, "r+", _without_parent=True)
    return open_image(child_path, "r+", **open_options)


def _old_parent_name(image) -> str:
    """Where the child's locators say its old parent is (not opened), for the report."""
    if image.parent is not None:
        return image.parent.path
    try:
        found = candidate_paths(image.path, image.header, locator_payloads(image))
    except VHDError:
        found = []
    if found:
        return os.fspath(found[0][1])
    return decode_parent_name(image.header.parent_name_raw)


def rebase(
    child,
    new_parent,
    *,
    unsafe: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
    **open_options,
) -> RebaseResult:
    """Make ``new_parent`` the parent of the differencing image ``child``.

    Args:
        child: the differencing image, changed in place.
        new_parent: the image to become its parent (any type).
        unsafe: only rewrite the parent fields and locators (see the module
            docstring); the child's view may change.
        progress: optional ``progress(done, total)`` callback over the
            bytes the child does not hold.
        **open_options: chain options for :func:`vhdcore.open` of the child
            and the new parent (``allow_parent_dirs``, ``allow_symlinks``,
            ``max_chain_depth``).

    Returns:
        A :class:`RebaseResult`.

    Raises:
        UnsupportedError: ``child`` is not a differencing image.
        LimitError: the new parent's virtual size differs from the child's.
        ChainLoopError: ``child`` is part of the new parent's chain.
    """
    began = time.monotonic()
    child_path = os.fspath(child)
    new_path = os.path.abspath(os.fspath(new_parent))
    with _open_child(child_path, unsafe, open_options) as image:
        if image.type != "differencing":
            raise UnsupportedError(
                f"{child_path}: is a {image.type} image; only differencing images have a parent"
            )
        result = RebaseResult(child_path, _old_parent_name(image), new_path, unsafe)
        with open_image(new_path, "r", **open_options) as target:
            for member in target.chain:
                if os.path.samefile(member.path, child_path):
                    raise ChainLoopError(
                        f"{child_path}: cannot become a child of {new_path}, whose chain "
                        f"contains it ({member.path})"
                    )
            if target.virtual_size != image.virtual_size:
                raise LimitError(
                    f"{child_path}: virtual size {image.virtual_size} differs from the new "
                    f"parent {new_path} ({target.virtual_size} bytes); resize one of them first"
                )
            if not unsafe:
                result.bytes_compared, result.bytes_copied = _preserve_view(
                    image, target, progress
                )
                image.flush()
            done = rewrite_metadata(
                image,
                locators=parent_locators(child_path, new_path),
                parent_uuid=target.uuid,
                parent_timestamp=vhd_timestamp(os.stat(new_path).st_mtime),
                parent_name=os.path.basename(new_path),
            )
            image.flush()
        result.blocks_moved = done["blocks_moved"]
        result.locator_placement = done["locator_placement"]
        home = os.path.dirname(os.path.abspath(child_path))
        if os.path.relpath(new_path, home).startswith(os.pardir):
            result.notes.append(
                f"the new parent lies outside {home}: open the child with "
                f"--allow-parent-dir {os.path.dirname(new_path)} (allow_parent_dirs)"
            )
    result.seconds = round(time.monotonic() - began, 3)
    return result
