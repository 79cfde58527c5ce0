"""Snapshot: a new, empty differencing child on top of an image.

The child records the parent's UUID, the parent file's modification time,
its name and two locators (``W2ru`` relative to the child's directory and
``W2ku`` absolute), exactly as :func:`vhdcore.create` writes them. From
then on the parent must not change: writes go to the child, and
``vhdcore commit`` folds them back when wanted.
"""

from __future__ import annotations

import os

from .create import create
from .info import describe

__all__ = ["snapshot"]


def snapshot(parent, child, *, overwrite: bool = False, allow_parent_dirs=(),
             allow_symlinks: bool = False, max_chain_depth=None, xen: bool = False) -> dict:
    """Create ``child`` as an empty differencing image of ``parent``.

    Args:
        parent: the image to freeze (any type; it is only read).
        child: the new differencing image.
        overwrite: replace an existing ``child`` file.
        allow_parent_dirs, allow_symlinks, max_chain_depth: the chain
            policy, as for :func:`vhdcore.open`; a parent outside the
            child's directory is refused unless its directory is allowed,
            so the child made can be opened with the same options.
        xen: a child blktap takes for its own (creator ``tap``, its
            batmap; the parent must have 2 MiB blocks), as
            ``vhd-util snapshot`` makes; see :mod:`vhdcore.formats.vhd.xen`.

    Returns:
        :func:`vhdcore.formats.vhd.info.describe` of the new child.

    Raises:
        VHDError: the parent cannot be opened, or the child could not
            open it (:class:`~vhdcore.errors.UnsafeParentError`).
        FileExistsError: ``child`` exists and ``overwrite`` is false.
    """
    if os.path.exists(child) and os.path.samefile(parent, child):
        raise FileExistsError(17, "a snapshot cannot replace its own parent", os.fspath(child))
    with create(child, parent=parent, overwrite=overwrite, allow_parent_dirs=allow_parent_dirs,
                allow_symlinks=allow_symlinks, max_chain_depth=max_chain_depth,
                xen=xen) as image:
        return describe(image)
