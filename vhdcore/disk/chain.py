"""Where backing files may live: the chain policy every format shares.

Every image is untrusted, and the name of its backing file (a VHD parent
locator, a qcow2 backing file or external data file, a VMDK extent or
``parentFileNameHint``) is a path an attacker wrote: left alone, a crafted
image could make us read any file on the host as part of the disk (the
qcow2 and VMDK forms of this are CVE-2024-32498). So a chain is opened
under one :class:`ParentPolicy`, made from its leaf: files confined to the
leaf's own directory (and any directory the caller adds), no path through
a symbolic link unless links are allowed, a bounded depth, and no file
twice (a loop).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

from ..errors import LimitError

#: Most images in a chain, the leaf included, unless the caller says otherwise
#: (XenServer's MAX_CHAIN_SIZE).
DEFAULT_MAX_CHAIN_DEPTH = 30


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


__all__ = ["DEFAULT_MAX_CHAIN_DEPTH", "ParentPolicy", "file_identity", "screen_candidates"]
