"""Finding and opening the parents of differencing disks, safely.

A child names its parent three ways: by UUID (which must match), by a
UTF-16 name, and by up to eight platform locators holding paths. We try
the locators in the order :func:`vhdcore.formats.vhd.locators.candidate_paths` gives
(relative before absolute), open the first file that exists read-only, and
insist its UUID is the one the child was made from.

Every image is untrusted, and a locator is a path an attacker wrote: left
alone, a crafted child could make us read any file on the host as its
"parent". So a :class:`ParentPolicy` confines parents to the leaf image's
own directory (and any directory the caller adds), refuses paths that pass
through a symbolic link unless the caller allows links, bounds the depth
of the chain, and refuses a chain that comes back to one of its own files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

from ...errors import (
    ChainLoopError,
    LimitError,
    ParentMismatchError,
    ParentNotFoundError,
    UnsafeParentError,
)
from .constants import DEFAULT_MAX_CHAIN_DEPTH
from .locators import candidate_paths

# A locator's payload is a path: anything longer than this is not one.
MAX_LOCATOR_BYTES = 64 * 1024


@dataclass(frozen=True)
class ParentPolicy:
    """Which files a differencing chain may open as parents.

    Attributes:
        allowed_dirs: directories parents may live in (at any depth below
            them), as absolute paths. The leaf image's own directory is
            always allowed.
        allow_symlinks: follow symbolic links in a parent's path (the
            resolved file must still lie inside an allowed directory).
        max_depth: most images in a chain, the leaf included.
        resolver: optional ``resolver(child, header, payloads) -> [(code, path)]``
            replacing the locator-based candidate list.
    """

    allowed_dirs: Tuple[str, ...] = ()
    allow_symlinks: bool = False
    max_depth: int = DEFAULT_MAX_CHAIN_DEPTH
    resolver: Optional[Callable] = field(default=None, compare=False)

    @classmethod
    def for_leaf(cls, leaf_path, *, allow_parent_dirs=(), allow_symlinks=False,
                 max_depth=None, resolver=None) -> "ParentPolicy":
        """The policy for a chain whose leaf is ``leaf_path``."""
        dirs = [os.path.dirname(os.path.abspath(os.fspath(leaf_path)))]
        dirs += [os.path.abspath(os.fspath(d)) for d in allow_parent_dirs or ()]
        if max_depth is None:
            max_depth = DEFAULT_MAX_CHAIN_DEPTH
        if max_depth < 1:
            raise LimitError(f"max_chain_depth must be at least 1, not {max_depth}")
        return cls(tuple(dict.fromkeys(dirs)), bool(allow_symlinks), int(max_depth), resolver)

    def refusal(self, path: str) -> Optional[str]:
        """Why ``path`` may not be opened as a parent, or None if it may."""
        lexical = os.path.abspath(path)
        if self.allow_symlinks:
            real = os.path.realpath(lexical)
            for root in self.allowed_dirs:
                if _is_within(real, os.path.realpath(root)):
                    return None
            return f"{lexical} resolves to {real}, outside the allowed directories"
        for root in self.allowed_dirs:
            if _is_within(lexical, root):
                link = _first_symlink(root, lexical)
                if link is None:
                    return None
                return f"{lexical} passes through the symbolic link {link}"
        return (
            f"{lexical} is outside the allowed directories "
            f"({', '.join(self.allowed_dirs)}); allow it with --allow-parent-dir"
        )


def _is_within(path: str, root: str) -> bool:
    root = root.rstrip(os.sep) or os.sep
    return path == root or path.startswith(root if root == os.sep else root + os.sep)


def _first_symlink(root: str, path: str) -> Optional[str]:
    """The first component of ``path`` below ``root`` that is a symbolic link."""
    relative = os.path.relpath(path, root)
    current = root
    for part in relative.split(os.sep):
        if part in ("", "."):
            continue
        current = os.path.join(current, part)
        if os.path.islink(current):
            return current
    return None


def file_identity(path):
    """``(device, inode)`` of ``path``: the same file under any name."""
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


def _label(code: bytes) -> str:
    return code.decode("latin-1", "replace").strip() or "name"


def screen_candidates(candidates, policy: ParentPolicy, tried: list, refused: list):
    """Yield, lazily and in order, the ``(code, path)`` candidates worth opening.

    A candidate is worth opening when it exists, the policy allows it and it
    is a regular file. The others are noted for the caller's error message:
    missing ones and non-files in ``tried``, refused ones (with why) in
    ``refused``. Lazy, so a caller that stops at the first usable parent
    never looks at the rest.
    """
    for code, path in candidates:
        path = os.fspath(path)
        if not os.path.lexists(path):
            tried.append(f"{_label(code)}={path}")
            continue
        reason = policy.refusal(path)
        if reason is not None:
            refused.append(reason)
            continue
        if not os.path.isfile(path):
            tried.append(f"{_label(code)}={path} (not a regular file)")
            continue
        yield code, path


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
