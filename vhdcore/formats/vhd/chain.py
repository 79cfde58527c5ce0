"""Finding and opening the parents of differencing disks, safely.

A child names its parent three ways: by UUID (which must match), by a
UTF-16 name, and by up to eight platform locators holding paths. We try
the locators in the order :func:`vhdcore.formats.vhd.locators.candidate_paths` gives
(relative before absolute), open the first file that exists read-only, and
insist its UUID is the one the child was made from.

Every image is untrusted, and a locator is a path an attacker wrote: left
alone, a crafted child could make us read any file on the host as its
"parent". So every candidate passes the chain's
:class:`~vhdcore.disk.chain.ParentPolicy` (the same for every format):
parents confined to the leaf's directory and those the caller adds, no
symbolic links unless allowed, a bounded depth, no loops.
"""

from __future__ import annotations

from ...disk.chain import ParentPolicy, file_identity, screen_candidates
from ...errors import (
    ChainLoopError,
    LimitError,
    ParentMismatchError,
    ParentNotFoundError,
    UnsafeParentError,
)
from .constants import KNOWN_PLATFORMS
from .locators import candidate_paths

# A locator's payload is a path: anything longer than this is not one.
MAX_LOCATOR_BYTES = 64 * 1024


def read_payloads(header, read, file_size: int, *, known_only: bool = False):
    """``{index: bytes}`` of the locator data of ``header`` that lies inside the file.

    A payload longer than :data:`MAX_LOCATOR_BYTES` is no path and is
    skipped, as is one that runs past ``file_size``; ``known_only`` skips
    platform codes the specification does not define too.

    Args:
        read: ``read(offset, length, what) -> bytes`` (an ImageFile's ``pread``).
    """
    payloads = {}
    for index, locator in enumerate(header.locators):
        if locator.is_unused or (known_only and locator.code not in KNOWN_PLATFORMS):
            continue
        length = locator.data_length
        offset = locator.data_offset
        if not 0 < length <= MAX_LOCATOR_BYTES or offset < 0 or offset + length > file_size:
            continue
        payloads[index] = read(offset, length, f"parent locator {index}")
    return payloads


def locator_payloads(child):
    """``{index: bytes}`` of the child's locator data that lies inside its file."""
    return read_payloads(child.header, child.image_file.pread, child.file_size)


def open_parent(child, policy: ParentPolicy, *, depth=0, seen=None):
    """Open the parent of the differencing disk ``child`` read-only.

    The parent of a child open for writing is opened with a shared lock
    (and so are its own parents): see ``VHD._hold_parents``.

    Args:
        child: the opened child (a :class:`vhdcore.formats.vhd.image.VHD`).
        policy: the chain's :class:`ParentPolicy` (from its leaf).
        depth: the child's depth in the chain (0 for the leaf).
        seen: file identities already in the chain (for loop detection).

    Raises:
        ParentNotFoundError: no candidate path exists.
        UnsafeParentError: candidates exist but the policy refuses them all.
        ParentMismatchError: the file found has another UUID.
        ChainLoopError: the chain refers back to one of its members.
        LimitError: the chain is longer than ``policy.max_depth``.
    """
    if depth + 2 > policy.max_depth:
        raise LimitError(
            f"{child.path}: differencing chain is deeper than the limit of "
            f"{policy.max_depth} images"
        )
    seen = set(seen or ())
    seen.add(file_identity(child.path))
    header = child.header
    payloads = locator_payloads(child)
    if policy.resolver is not None:
        candidates = policy.resolver(child, header, payloads)
    else:
        candidates = candidate_paths(child.path, header, payloads)
    tried, refused = [], []
    for _code, path in screen_candidates(candidates, policy, tried, refused):
        if file_identity(path) in seen:
            raise ChainLoopError(
                f"{child.path}: parent {path} is already part of this chain (a loop)"
            )
        held = child._hold_parents
        parent = type(child)(path, "r", consistent=held, _policy=policy, _depth=depth + 1,
                             _seen=seen, _hold_parents=held)
        if parent.uuid != header.parent_uuid:
            parent.close()
            raise ParentMismatchError(
                f"{child.path}: parent {path} has UUID {parent.uuid}, but the child "
                f"was made from {header.parent_uuid}"
            )
        return parent
    if refused:
        raise UnsafeParentError(f"{child.path}: refused parent: {'; '.join(refused)}")
    name = header.parent_name or "(no name)"
    raise ParentNotFoundError(
        f"{child.path}: parent {name!r} not found"
        + (f" (tried {', '.join(tried)})" if tried else " (no usable locator)")
    )


__all__ = ["ParentPolicy", "file_identity", "locator_payloads", "open_parent",
           "read_payloads", "screen_candidates"]
