"""Finding and opening the parents of differencing disks.

A child names its parent three ways: by UUID (which must match), by a
UTF-16 name, and by up to eight platform locators holding paths. We try
the locators in the order :func:`vhdcore.locators.candidate_paths` gives
(relative before absolute), open the first file that exists read-only,
and insist its UUID is the one the child was made from. Depth is bounded
and a chain that comes back to one of its own files is refused.
"""

from __future__ import annotations

import os

from .constants import DEFAULT_MAX_CHAIN_DEPTH
from .errors import ChainLoopError, LimitError, ParentMismatchError, ParentNotFoundError
from .locators import candidate_paths

# A locator's payload is a path: anything longer than this is not one.
MAX_LOCATOR_BYTES = 64 * 1024


def _identity(path):
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def locator_payloads(child):
    """``{index: bytes}`` of the child's locator data that lies inside its file."""
    payloads = {}
    size = child.file_size
    for index, locator in enumerate(child.header.locators):
        if locator.is_unused:
            continue
        length = locator.data_length
        offset = locator.data_offset
        if not 0 < length <= MAX_LOCATOR_BYTES or offset < 0 or offset + length > size:
            continue
        payloads[index] = child._file.pread(offset, length, f"parent locator {index}")
    return payloads


def open_parent(child, *, resolver=None, max_depth=None, depth=0, seen=None):
    """Open the parent of the differencing disk ``child`` read-only.

    Args:
        child: the opened child (a :class:`vhdcore.image.VHD`).
        resolver: optional ``resolver(child, header, payloads) -> [(code, path)]``
            replacing the default candidate list.
        max_depth: most images in the chain below the leaf (default 30).
        depth: the child's own depth in the chain being opened.
        seen: file identities already in the chain (for loop detection).

    Raises:
        ParentNotFoundError: no candidate path exists.
        ParentMismatchError: the file found has another UUID.
        ChainLoopError: the chain refers back to one of its members.
        LimitError: the chain is deeper than ``max_depth``.
    """
    max_depth = DEFAULT_MAX_CHAIN_DEPTH if max_depth is None else max_depth
    if depth + 1 > max_depth:
        raise LimitError(
            f"{child.path}: differencing chain is deeper than the limit of {max_depth} images"
        )
    seen = set(seen or ())
    seen.add(_identity(child.path))
    header = child.header
    payloads = locator_payloads(child)
    if resolver is not None:
        candidates = resolver(child, header, payloads)
    else:
        candidates = candidate_paths(child.path, header, payloads)
    tried = []
    for code, path in candidates:
        path = os.fspath(path)
        if not os.path.isfile(path):
            tried.append(f"{code.decode('latin-1', 'replace').strip() or 'name'}={path}")
            continue
        if _identity(path) in seen:
            raise ChainLoopError(
                f"{child.path}: parent {path} is already part of this chain (a loop)"
            )
        parent = type(child)(
            path, "r", parent_resolver=resolver, max_chain_depth=max_depth,
            _depth=depth + 1, _seen=seen,
        )
        if parent.uuid != header.parent_uuid:
            parent.close()
            raise ParentMismatchError(
                f"{child.path}: parent {path} has UUID {parent.uuid}, but the child "
                f"was made from {header.parent_uuid}"
            )
        return parent
    name = header.parent_name or "(no name)"
    raise ParentNotFoundError(
        f"{child.path}: parent {name!r} not found"
        + (f" (tried {', '.join(tried)})" if tried else " (no usable locator)")
    )
