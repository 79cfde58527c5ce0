"""Creating new fixed, dynamic and differencing images.

Sizes are exact: the virtual size is the size asked for, rounded up to a
whole sector, and the rounding is reported in ``VHD.notes``. We write
creator ``win `` with the specification's CHS geometry, so qemu (old and
new), libvhdi, vhd-util and Hyper-V all read the current-size field and
agree on that size (see docs/ARCHITECTURE.md, "Virtual size"). With
``xen=True`` the creator is blktap's ``tap`` instead (qemu reads its
current size too) and the layout blktap's (:mod:`vhdcore.formats.vhd.xen`).

The image is built in a temporary file beside the destination, flushed,
and then linked into place, so a failure never leaves half an image and an
existing file is never replaced unless ``overwrite`` is set.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from typing import Optional

from ...errors import ArgumentLimitError, LimitError, UnsafeParentError, VHDError
from ...io import atomic
from . import bat as batmod
from . import chain, layout
from .blocksize import check_new_block_size
from .constants import (
    DEFAULT_BLOCK_SIZE,
    DISK_DIFFERENCING,
    DISK_DYNAMIC,
    DISK_FIXED,
    MAX_DYNAMIC_SIZE,
    MAX_FIXED_SIZE,
    PLATFORM_W2KU,
    PLATFORM_W2RU,
    SECTOR_SIZE,
)
from .footer import Footer, vhd_timestamp
from .header import DynamicHeader, ParentLocator
from .locators import encode_locator, relative_parent_path

TYPES = {"fixed": DISK_FIXED, "dynamic": DISK_DYNAMIC, "differencing": DISK_DIFFERENCING}
#: What a refusal to replace an existing file says: the library keyword
#: and the flag a command-line user can type.
OVERWRITE_ADVICE = "file exists (pass overwrite=True, or --force on the command line)"


def _round_up(value: int, unit: int) -> int:
    return (value + unit - 1) // unit * unit


def parent_locators(child_path, parent_path):
    """``[(code, payload)]``: the locators a child at ``child_path`` gets for its parent.

    The same pair :func:`create` writes: ``W2ru`` relative to the child's
    directory, then ``W2ku`` with the parent's absolute path. Rebase uses
    it so a re-parented child looks like a freshly created one.
    """
    parent_path = os.path.abspath(os.fspath(parent_path))
    return [
        (code, encode_locator(code, text))
        for code, text in (
            (PLATFORM_W2RU, relative_parent_path(os.fspath(child_path), parent_path)),
            (PLATFORM_W2KU, parent_path),
        )
    ]


def _dynamic_layout(path, size, disk_type, block_size, footer, parent, xen=False):
    """The metadata of a new dynamic or differencing image, as (offset, bytes) pieces.

    With ``xen``, blktap's empty batmap follows the BAT and the locators
    follow the batmap, as ``vhd-util create`` / ``snapshot`` lay them out.
    """
    entries = batmod.blocks_needed(size, block_size)
    position = layout.table_end(entries)
    batmap_pieces = []
    if xen:
        from .xen import new_batmap

        batmap = new_batmap(position, entries, (), size)
        batmap_pieces = [(position, batmap.to_bytes()), (batmap.batmap_offset, batmap.map)]
        position = batmap.end
    locators = []
    payloads = []
    parent_uuid = None
    parent_timestamp = 0
    parent_name = ""
    if parent is not None:
        parent_path = os.path.abspath(parent.path)
        parent_uuid = parent.uuid
        parent_timestamp = vhd_timestamp(os.stat(parent_path).st_mtime)
        parent_name = os.path.basename(parent_path)
        for code, text in (
            (PLATFORM_W2RU, relative_parent_path(path, parent_path)),
            (PLATFORM_W2KU, parent_path),
        ):
            data = encode_locator(code, text)
            space = _round_up(max(len(data), 1), SECTOR_SIZE)
            locators.append(ParentLocator(code, space, len(data), 0, position))
            payloads.append((position, data))
            position += space
    header = DynamicHeader.new(
        entries, block_size, table_offset=layout.TABLE_OFFSET, parent_uuid=parent_uuid,
        parent_timestamp=parent_timestamp, parent_name=parent_name, locators=tuple(locators),
    )
    footer_bytes = footer.to_bytes()
    table = layout.encode_table(None, entries, padding=b"\0" if xen else b"\xff")
    pieces = layout.new_metadata(footer_bytes, header.to_bytes(), table)
    pieces += batmap_pieces
    pieces += payloads
    pieces.append((position, footer_bytes))
    return pieces


def create(
    path,
    size: Optional[int] = None,
    *,
    type: Optional[str] = None,  # noqa: A002 - the documented keyword
    block_size: Optional[int] = None,
    parent=None,
    overwrite: bool = False,
    uuid: Optional[uuidlib.UUID] = None,
    timestamp: Optional[float] = None,
    allow_parent_dirs=(),
    allow_symlinks: bool = False,
    max_chain_depth: Optional[int] = None,
    xen: bool = False,
):
    """Create a VHD image and return it open for reading and writing.

    Args:
        path: the new image file.
        size: virtual size in bytes, rounded up to a whole sector. For a
            differencing disk it may be ``None`` and otherwise must equal
            the parent's virtual size.
        type: ``"dynamic"``, ``"fixed"`` or ``"differencing"``; by default
            ``"differencing"`` with a ``parent`` and ``"dynamic"`` without.
            A parent with ``"fixed"`` or ``"dynamic"`` is refused rather
            than silently making a differencing image.
        block_size: bytes per block of a dynamic or differencing disk: a
            power of two from 4 KiB (qemu misreads smaller blocks) to 256
            MiB; 2 MiB by default (a differencing disk defaults to its
            parent's block size). A size other than 512 KiB or 2 MiB, the
            sizes other tools write, gets a note. A fixed disk has no
            blocks: passing one is refused.
        parent: path of the parent image (or an open ``VHD``) for a
            differencing disk.
        overwrite: replace an existing file instead of refusing.
        uuid, timestamp: fixed identity for reproducible images (default:
            random UUID, now).
        allow_parent_dirs, allow_symlinks, max_chain_depth: the chain
            policy of :func:`vhdcore.open` (see :mod:`vhdcore.formats.vhd.chain`). The
            new child's chain must be one that opening the child with the
            same options accepts: a parent outside the child's directory
            needs its directory in ``allow_parent_dirs``.
        xen: an image Xen / XCP-ng's blktap takes for its own (so
            ``vhd-util resize`` accepts it): creator ``tap`` 1.3, the size
            rounded up to a whole 2 MiB block (noted), and for dynamic and
            differencing disks blktap's batmap; 2 MiB blocks only (see
            :mod:`vhdcore.formats.vhd.xen`).

    Returns:
        The new :class:`vhdcore.formats.vhd.image.VHD`, opened ``"r+"``; ``notes`` says
        whether the size was rounded.

    Raises:
        LimitError: the size or block size is out of range (with ``xen``,
            any block size but 2 MiB, the parent's included).
        VHDError: the parent cannot be used, or the arguments contradict
            each other (a parent or a block size with ``type="fixed"``).
        UnsafeParentError: a member of the parent's chain lies where the
            chain policy would refuse it when the child is opened.
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    from .image import VHD
    from .image import open as open_image

    if type is None:
        type = "dynamic" if parent is None else "differencing"
    elif parent is not None and type != "differencing":
        raise VHDError(
            f"{path}: a parent makes a differencing image, but type {type!r} was asked for"
        )
    if type not in TYPES:
        raise VHDError(f"unknown image type {type!r}: use fixed, dynamic or differencing")
    disk_type = TYPES[type]
    if disk_type == DISK_FIXED and block_size is not None:
        raise VHDError(
            f"{path}: a fixed image has no blocks; a block size applies to dynamic and "
            f"differencing images only"
        )
    chain_options = {
        "allow_parent_dirs": tuple(allow_parent_dirs or ()),
        "allow_symlinks": allow_symlinks,
        "max_chain_depth": max_chain_depth,
    }
    notes = []
    parent_image = None
    own_parent = False
    try:
        if disk_type == DISK_DIFFERENCING:
            if parent is None:
                raise VHDError(f"{path}: a differencing image needs a parent")
            if isinstance(parent, VHD):
                parent_image = parent
            else:
                parent_image = open_image(parent, "r", **chain_options)
                own_parent = True
            _check_chain_policy(path, parent_image, chain_options)
            if size is None:
                size = parent_image.virtual_size
            elif size != parent_image.virtual_size:
                raise ArgumentLimitError(
                    f"{path}: size {size} differs from the parent's virtual size "
                    f"{parent_image.virtual_size}"
                )
            if block_size is None and parent_image.block_size:
                block_size = parent_image.block_size
        if size is None:
            raise VHDError(f"{path}: a size is needed for a {type} image")
        if size < 0:
            raise ArgumentLimitError(f"{path}: size {size} is negative")
        if xen and disk_type != DISK_DIFFERENCING:
            # blktap sizes new disks in whole 2 MiB blocks (vhd_create), and
            # its resize miscounts any other size (21 MiB grown "to 64" is
            # 66); a snapshot keeps its parent's size, as vhd_snapshot does.
            from .xen import XEN_BLOCK_SIZE

            rounded = _round_up(size, XEN_BLOCK_SIZE)
            unit = "a whole 2 MiB block, as blktap sizes disks"
        else:
            rounded = _round_up(size, SECTOR_SIZE)
            unit = "a whole sector"
        if rounded != size:
            notes.append(f"size {size} rounded up to {rounded} bytes ({unit})")
        limit = MAX_FIXED_SIZE if disk_type == DISK_FIXED else MAX_DYNAMIC_SIZE
        if rounded > limit:
            raise ArgumentLimitError(
                f"{path}: size {rounded} bytes exceeds the {limit} byte limit for {type} VHDs"
            )
        if disk_type == DISK_FIXED and rounded > MAX_DYNAMIC_SIZE:
            notes.append("fixed VHD over 2040 GiB: qemu and Hyper-V OS disks will not open it")
        creator = {}
        if disk_type != DISK_FIXED:
            if block_size is None:
                block_size = DEFAULT_BLOCK_SIZE
            note = check_new_block_size(block_size, f"{path}: ")  # the note names no path
            if note is not None:
                notes.append(note)
        if xen:
            from .xen import TAP_CREATOR, check_block_size

            if disk_type == DISK_DIFFERENCING:
                check_block_size(block_size, f"{path} (a child has its parent's block size)")
            elif disk_type != DISK_FIXED:
                check_block_size(block_size, os.fspath(path))
            creator = dict(zip(("creator_app", "creator_version", "creator_os"), TAP_CREATOR))
        footer = Footer.new(
            disk_type, rounded, uuid=uuid,
            timestamp=None if timestamp is None else vhd_timestamp(timestamp), **creator,
        )
        if disk_type == DISK_FIXED:
            pieces = [(rounded, footer.to_bytes())]
        else:
            pieces = _dynamic_layout(path, rounded, disk_type, block_size, footer, parent_image,
                                     xen)
        _write_new_file(path, pieces, overwrite)
    finally:
        if own_parent and parent_image is not None:
            parent_image.close()
    try:
        image = VHD(path, "r+", **chain_options)
    except BaseException:
        # A failed create leaves no file behind.
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    image.notes.extend(notes)
    return image


def _check_chain_policy(path, parent_image, chain_options) -> None:
    """Refuse a parent chain that opening the new child at ``path`` would refuse.

    Without this check a child whose parent lies in another directory is
    created fine and then refused by every later command: the policy
    that opens a chain is the leaf's (its own directory plus the allowed
    ones), not the parent's. So every member of the parent's chain must
    pass the child's policy, and the chain with the child must fit its
    depth limit.
    """
    policy = chain.ParentPolicy.for_leaf(
        path, allow_parent_dirs=chain_options["allow_parent_dirs"],
        allow_symlinks=chain_options["allow_symlinks"],
        max_depth=chain_options["max_chain_depth"],
    )
    members = parent_image.chain
    if len(members) + 1 > policy.max_depth:
        raise LimitError(
            f"{path}: the chain would hold {len(members) + 1} images, over the limit of "
            f"{policy.max_depth}; raise it with --max-chain-depth"
        )
    for member in members:
        reason = policy.refusal(member.path)
        if reason is not None:
            if "symbolic link" in reason:
                reason += "; allow it with --allow-symlinks"
            raise UnsafeParentError(f"{path}: the new child could not open its parent: {reason}")


def refuse_overwrite(path):
    """The error for an existing ``path`` that ``overwrite`` does not allow replacing."""
    return lambda: FileExistsError(17, OVERWRITE_ADVICE, os.fspath(path))


def _write_new_file(path, pieces, overwrite):
    """Write ``pieces`` (``[(offset, bytes)]``) as the new file ``path``, atomically.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        StorageError: the file could not be written (a full disk, a
            read-only directory, ...); named ``path``, not the temporary file.
    """
    if not overwrite and os.path.lexists(path):
        raise refuse_overwrite(path)()
    with atomic.new_file(path, replace=overwrite, exists=refuse_overwrite(path)) as out:
        out.truncate(max(offset + len(data) for offset, data in pieces))
        for offset, data in pieces:
            out.pwrite(offset, data)
