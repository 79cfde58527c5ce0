"""The VHD object: open an image, read and write it, walk its chain.

One class serves all three disk types. Fixed disks map straight through to
the file. Dynamic and differencing disks go through the block allocation
table (BAT): an unallocated block reads as zeros (dynamic) or from the
parent (differencing), and a differencing block's sector bitmap decides,
per sector, whether the child or the parent chain holds the data.

Writing (:mod:`vhdcore.formats.vhd.alloc`) follows an order in which a
crash at any point leaves an image that opens and checks clean (leaked
space at worst). ``flush()`` fsyncs, so everything written before it
survives a crash of the machine too.
"""

from __future__ import annotations

import array
import os
import sys
import warnings
from typing import List, Optional

from ..._backend import kernels
from ...disk.extent import DATA, PARENT, ZERO, Extent, append_extent
from ...disk.zeros import zero_fill as _zero_fill
from ...errors import (
    CorruptImageError,
    FormatError,
    LimitError,
    OutOfRangeError,
    ReadOnlyError,
    UnsupportedError,
    VHDError,
)
from ...io.imagefile import open_image_file
from ...problems import raise_for
from .. import probe
from . import bat as batmod
from . import chain
from .alloc import Writes
from .batmap import find_batmap
from .constants import (
    BAT_UNUSED,
    DISK_DIFFERENCING,
    DISK_DYNAMIC,
    DISK_FIXED,
    DISK_TYPE_NAMES,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    LEGACY_FOOTER_SIZE,
    MAX_BAT_BYTES,
    SECTOR_SIZE,
    UINT32_TYPECODE,
)
from .footer import Footer
from .header import DynamicHeader
from .layout import read_primary_footer


#: Builds an Extent without the Python frame of its __new__ (what _make does).
_tuple_new = tuple.__new__


def _runs_into(out, start, end, sectors, counts, file_offsets, state, depth):
    """Append the runs of ``bat_extents_array`` for an image without a parent.

    The kernel merged every pair of runs that continue each other, so each
    run is one extent: only the first can merge into ``out``, and only the
    first and last can stick out of ``[start, end)`` (the kernel was asked
    for whole sectors). The rest are built in one comprehension, without
    ``Extent.__new__``'s Python frame or ``append_extent``: that halves the
    time of a whole-image map of a fragmented disk.
    """
    if not sectors:
        return
    extents = [
        _tuple_new(Extent, (sector * SECTOR_SIZE, count * SECTOR_SIZE, state, depth, file_offset))
        if file_offset >= 0
        else _tuple_new(Extent, (sector * SECTOR_SIZE, count * SECTOR_SIZE, ZERO, -1, -1))
        for sector, count, file_offset in zip(sectors, counts, file_offsets)
    ]
    head = extents[0]
    if head.offset < start:
        skip = start - head.offset
        extents[0] = head = head._replace(
            offset=start,
            length=head.length - skip,
            file_offset=head.file_offset + skip if head.file_offset >= 0 else -1,
        )
    tail = extents[-1]
    if tail.end > end:
        extents[-1] = tail._replace(length=end - tail.offset)
    append_extent(out, extents[0])
    out.extend(extents[1:])


class VHDWarning(UserWarning):
    """Something about an image that a user should know but that does not stop reading."""


def _decode_bat(raw: bytes) -> array.array:
    """The on-disk big-endian table as native uint32s (stdlib: no numpy needed to open)."""
    table = array.array(UINT32_TYPECODE)
    table.frombytes(raw)
    if sys.byteorder == "little":
        table.byteswap()
    return table


class VHD(Writes):
    """An open VHD image (fixed, dynamic or differencing) and its chain.

    Use :func:`open` or :func:`vhdcore.create` rather than this constructor.

    Attributes:
        path: the file name as given.
        mode: ``"r"`` or ``"r+"``.
        type: ``"fixed"``, ``"dynamic"`` or ``"differencing"``.
        virtual_size: bytes of the virtual disk.
        size_rule: ``"current_size"`` or ``"chs"``: which footer field
            gave ``virtual_size``.
        block_size: bytes per block (``None`` for fixed disks).
        footer, header: the parsed structures (``header`` is ``None`` for
            fixed disks).
        parent: the opened parent image of a differencing disk, else ``None``.
        chain: ``[self, parent, grandparent, ...]``.
        notes: human-readable remarks gathered while opening (a damaged
            primary footer read from its copy, a size rounded up, ...).
    """

    def __init__(self, path, mode="r", *, allow_parent_dirs=(), allow_symlinks=False,
                 max_chain_depth=None, parent_resolver=None, consistent=False,
                 _policy=None, _depth=0, _seen=None, _hold_parents=False,
                 _without_parent=False):
        if mode not in ("r", "r+"):
            raise ValueError(f"mode must be 'r' or 'r+', not {mode!r}")
        self.path = os.fspath(path)
        self.mode = mode
        self.notes: List[str] = []
        self.parent: Optional[VHD] = None
        self.header: Optional[DynamicHeader] = None
        self._bat_table: Optional[array.array] = None
        self._bat_numpy = None
        self._bitmaps = {}
        # Blocks whose bitmap became full: their batmap bits are set at the
        # next flush, once the bitmaps are durable (see _sync).
        self._batmap_pending = set()
        self._closed = False
        self._detached = False
        # A writer's parents must not change under it (its data is only the
        # difference from them): like qemu on backing files, it holds a
        # shared lock on every parent, so opening one for writing elsewhere
        # is refused with LockedError while the child is open "r+".
        self._hold_parents = mode == "r+" or _hold_parents
        self._file = open_image_file(
            self.path, writable=(mode == "r+"), lock="shared" if consistent else True
        )
        try:
            self._load()
            # _without_parent (for `info` on a child whose parent is missing,
            # and `rebase --unsafe`, which rewrites only metadata) leaves
            # ``parent`` None: such a handle describes and relinks the
            # child's own structures, but its contents are unknown, so
            # reading or writing them is refused (_check_range).
            self._detached = self.footer.disk_type == DISK_DIFFERENCING and _without_parent
            if self.footer.disk_type == DISK_DIFFERENCING and not _without_parent:
                if _policy is None:
                    _policy = chain.ParentPolicy.for_leaf(
                        self.path, allow_parent_dirs=allow_parent_dirs,
                        allow_symlinks=allow_symlinks, max_depth=max_chain_depth,
                        resolver=parent_resolver,
                    )
                self.parent = chain.open_parent(self, _policy, depth=_depth, seen=_seen)
        except BaseException:
            self._file.close()
            raise

    # ------------------------------------------------------------------
    # opening

    def _load(self) -> None:
        f = self._file
        file_size = f.size()
        self.file_size = file_size
        self.footer_copy: Optional[Footer] = None
        # A raw disk or another format's image, not a damaged VHD: say so,
        # not what its last bytes hold.
        probe.refuse_unless_vhd(self.path, f.pread, file_size)
        if file_size < LEGACY_FOOTER_SIZE:
            raise FormatError(
                f"{self.path}: file too small for a VHD ({file_size} bytes; a footer needs 512)"
            )
        footer, footer_offset = self._read_primary_footer(file_size)
        self.footer_offset = footer_offset
        if footer.disk_type in (DISK_DYNAMIC, DISK_DIFFERENCING) or (
            footer.cookie != FOOTER_COOKIE and file_size >= 2 * FOOTER_SIZE
        ):
            footer = self._reconcile_copy(footer, footer_offset, file_size)
        else:
            # A fixed disk has no copy to fall back on: its one footer must
            # pass every rule (checksum, type, size against the file) before
            # anything trusts its sizes.
            raise_for(self._footer_errors(footer, footer_offset, file_size))
        self.footer = footer
        self.type = DISK_TYPE_NAMES[footer.disk_type]
        self.size_rule = footer.size_rule
        self.virtual_size = footer.virtual_size
        self.geometry = footer.geometry
        self.uuid = footer.uuid
        self.creator = footer.creator_app.decode("latin-1")
        if footer.disk_type == DISK_FIXED:
            self.block_size = None
            if self.virtual_size > footer.current_size:
                # CHS says more than the file holds; reads past the data
                # would hit the footer, so the CHS size cannot be honoured.
                self.notes.append(
                    f"CHS geometry gives {self.virtual_size} bytes but the file holds "
                    f"{footer.current_size}; using the current size"
                )
                self.virtual_size = footer.current_size
                self.size_rule = "current_size"
            return
        self._load_dynamic(file_size)

    def _read_primary_footer(self, file_size):
        """The footer at the end of the file (512 bytes, or a legacy 511)."""
        raw, offset, legacy = read_primary_footer(self._file.pread, file_size)
        if legacy:
            if self.mode == "r+":
                raise FormatError(
                    f"{self.path}: legacy 511-byte footer; open read-only or convert the image"
                )
            self.notes.append("legacy 511-byte footer")
        if len(raw) < LEGACY_FOOTER_SIZE:
            raise FormatError(f"{self.path}: file too small for a VHD footer")
        return Footer.from_bytes(raw), offset

    def _footer_errors(self, footer, offset, file_size):
        problems = footer.validate(self.path, offset, file_size)
        return [p for p in problems if p.severity == "error"]

    def _reconcile_copy(self, primary, primary_offset, file_size):
        """Check the primary footer against the copy at offset 0.

        A damaged primary with a good copy opens read-only (with a note),
        never for writing: ``vhdcore repair`` restores it.
        """
        primary_errors = self._footer_errors(primary, primary_offset, file_size)
        copy = Footer.from_bytes(self._file.pread(0, FOOTER_SIZE, "footer copy"))
        self.footer_copy = copy
        copy_ok = copy.cookie == FOOTER_COOKIE and copy.disk_type in (
            DISK_DYNAMIC, DISK_DIFFERENCING,
        ) and not self._footer_errors(copy, 0, file_size)
        if not primary_errors:
            if copy_ok and copy.to_bytes() != primary.to_bytes():
                self.notes.append("footer copy at offset 0 differs from the primary footer")
            return primary
        if not copy_ok:
            raise_for(primary_errors)
        reason = primary_errors[0].message
        if self.mode == "r+":
            raise CorruptImageError(
                f"{self.path}: primary footer damaged ({reason}); the copy at offset 0 is good: "
                f"run 'vhdcore repair' before opening for writing"
            )
        self.notes.append(f"primary footer damaged ({reason}); using the copy at offset 0")
        warnings.warn(f"{self.path}: primary footer damaged, reading through its copy at offset 0",
                      VHDWarning, stacklevel=4)
        return copy

    def _load_dynamic(self, file_size):
        f = self._file
        footer = self.footer
        header = DynamicHeader.from_bytes(
            f.pread(footer.data_offset, 1024, "dynamic header")
        )
        raise_for(
            p for p in header.validate(
                self.path, footer.data_offset, file_size, footer.disk_type, footer.current_size
            ) if p.severity == "error"
        )
        self.header = header
        self.block_size = header.block_size
        self._bitmap_bytes = header.bitmap_bytes
        self._sectors_per_block = header.sectors_per_block
        self._block_span = self._bitmap_bytes + self.block_size
        self._blocks = batmod.blocks_needed(footer.current_size, header.block_size)
        # Only the entries the virtual size needs are read: the rest are
        # ignored (check reports them), and the table in memory is bounded.
        if self._blocks * 4 > MAX_BAT_BYTES:
            raise LimitError(
                f"{self.path}: {self._blocks} blocks of {header.block_size} bytes need a "
                f"{self._blocks * 4}-byte table, over the {MAX_BAT_BYTES}-byte limit"
            )
        raw = f.pread(header.table_offset, self._blocks * 4, "block allocation table")
        self._bat_table = _decode_bat(raw)
        self._bat_view = memoryview(self._bat_table)
        self._bat_numpy = None  # a reload must not leave the old table's view behind
        self.batmap = find_batmap(footer, header, lambda o, n: f.pread(o, n, "batmap"), file_size)
        self._metadata_end = batmod.metadata_end(
            header, self.batmap,
            None if footer.disk_type == DISK_DIFFERENCING else (),
            header_offset=footer.data_offset,
        )
        raise_for(
            p for p in batmod.validate_bat(
                self._bat_table, header, footer, self._metadata_end, file_size, self.path
            ) if p.severity == "error"
        )
        _, last_end, _ = kernels.bat_scan(
            self._bat_table, self.block_size, self._bitmap_bytes, 0, 1 << 62
        )
        self._next_free = max(self._metadata_end, last_end)
        if self._next_free % SECTOR_SIZE:
            self._next_free += SECTOR_SIZE - self._next_free % SECTOR_SIZE

    # ------------------------------------------------------------------
    # attributes

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def chain(self) -> List["VHD"]:
        """``[self, parent, grandparent, ...]``."""
        return list(self._members())

    def _members(self):
        members = self.__dict__.get("_chain")
        if members is None:
            members, node = [], self
            while node is not None:
                members.append(node)
                node = node.parent
            self._chain = members
        return members

    @property
    def bat(self):
        """The block table as a numpy uint32 array (``None`` for fixed disks).

        It shares memory with the table the image reads and writes through,
        so it always shows the current entries; numpy is imported only when
        this is first asked for.
        """
        if self._bat_table is None:
            return None
        if self._bat_numpy is None:
            import numpy as np

            self._bat_numpy = np.frombuffer(self._bat_table, dtype=np.uint32)
        return self._bat_numpy

    @property
    def block_count(self) -> Optional[int]:
        """Entries of the block table the virtual size needs (``None`` for fixed disks)."""
        return None if self._bat_table is None else len(self._bat_table)

    @property
    def allocated_blocks(self) -> int:
        """Allocated BAT entries (0 for fixed disks)."""
        if self._bat_table is None:
            return 0
        return len(self._bat_table) - self._bat_table.count(BAT_UNUSED)

    # ------------------------------------------------------------------
    # layout: what this package's maintenance operations (commit, resize,
    # compact, repack) need to know of the file, read-only

    @property
    def image_file(self):
        """The :class:`~vhdcore.io.imagefile.ImageFile` this image is read from."""
        return self._file

    @property
    def bitmap_bytes(self) -> Optional[int]:
        """Bytes of sector bitmap before each block's data (``None`` for fixed disks)."""
        return None if self._bat_table is None else self._bitmap_bytes

    @property
    def block_span(self) -> Optional[int]:
        """File bytes one block takes: bitmap plus data (``None`` for fixed disks)."""
        return None if self._bat_table is None else self._block_span

    @property
    def metadata_end(self) -> Optional[int]:
        """The first byte after every metadata structure (``None`` for fixed disks)."""
        return None if self._bat_table is None else self._metadata_end

    @property
    def next_free(self) -> Optional[int]:
        """Where the next new block goes: after the metadata and the last block."""
        return None if self._bat_table is None else self._next_free

    def block_data_offset(self, block: int) -> int:
        """File offset of allocated ``block``'s data (after its bitmap)."""
        return int(self._bat_view[block]) * SECTOR_SIZE + self._bitmap_bytes

    def bitmap(self, block: int) -> bytes:
        """A copy of the sector bitmap of allocated ``block``."""
        return bytes(self._bitmap(block))

    def store_bitmap(self, block: int, bitmap) -> None:
        """Write ``block``'s sector bitmap, then adopt it (the cache follows the file)."""
        if self.mode != "r+":
            raise ReadOnlyError(f"{self.path}: image is open read-only")
        bitmap = bytearray(bitmap)
        self._file.pwrite(int(self._bat_view[block]) * SECTOR_SIZE, bitmap)
        self._bitmaps[block] = bitmap

    def parent_extents(self, offset: int, length: int) -> List[Extent]:
        """What ``[offset, offset + length)`` reads as if this image held none of it:
        the parent chain's extents (depth counted from this image), or zero."""
        return self._parent_extents(offset, length)

    def __repr__(self):
        return f"<VHD {self.path!r} {self.type} {self.virtual_size} bytes mode={self.mode!r}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # ------------------------------------------------------------------
    # reading

    def _check_range(self, offset, length):
        if self._closed:
            raise ValueError(f"{self.path}: I/O on a closed image")
        if self._detached:
            raise UnsupportedError(
                f"{self.path}: opened without its parent: its contents cannot be read or written"
            )
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise OutOfRangeError(
                f"{self.path}: range {offset}+{length} is outside the virtual disk "
                f"of {self.virtual_size} bytes"
            )

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the virtual disk from ``offset``.

        The range is checked before anything is allocated, so a request
        past the end fails at once with :class:`OutOfRangeError` rather than
        after allocating ``length`` bytes (or with a ``MemoryError``). A range
        held by one run of one file (any read of a fixed disk, most reads
        of a dynamic one) is read straight into the bytes returned, and an
        all-zero range is ``bytes(length)``: one allocation, no copy. Only a
        range mixing runs is assembled in a buffer and copied once.

        Raises:
            OutOfRangeError: the range leaves the virtual disk.
        """
        self._check_range(offset, length)
        if length == 0:
            return b""
        if self._bat_table is None:
            return self._file.pread(offset, length)
        runs = self.extents(offset, length)
        if len(runs) == 1:
            run = runs[0]
            if run.state == ZERO:
                return bytes(length)
            return self._members()[run.depth]._file.pread(run.file_offset, length)
        buffer = bytearray(length)
        self._fill(memoryview(buffer), offset, runs)
        return bytes(buffer)

    def readinto(self, offset: int, buffer) -> int:
        """Fill ``buffer`` from the virtual disk at ``offset``; returns its length.

        Allocated, contiguous runs are read straight into ``buffer`` with no
        intermediate copy.
        """
        view = memoryview(buffer)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        length = len(view)
        self._check_range(offset, length)
        if length == 0:
            return 0
        if self._bat_table is None:
            self._file.preadinto(offset, view)
            return length
        # Fast path: the whole request inside one allocated dynamic block.
        block_size = self.block_size
        block = offset // block_size
        within = offset - block * block_size
        if within + length <= block_size and self.header is not None:
            entry = self._bat_view[block]
            if entry == BAT_UNUSED:
                if self.parent is None:
                    _zero_fill(view)
                    return length
            elif self.parent is None:
                self._file.preadinto(entry * SECTOR_SIZE + self._bitmap_bytes + within, view,
                                     "block data")
                return length
        self._readinto_slow(offset, view)
        return length

    def _readinto_slow(self, offset, view):
        self._fill(view, offset, self.extents(offset, len(view)))

    def _fill(self, view, offset, extents):
        """Fill ``view`` (the virtual range from ``offset``) from its ``extents``."""
        for extent in extents:
            part = view[extent.offset - offset : extent.end - offset]
            if extent.state == ZERO:
                _zero_fill(part)
            else:
                member = self._members()[extent.depth]
                member._file.preadinto(extent.file_offset, part)

    # ------------------------------------------------------------------
    # allocation map

    def extents(self, offset: int = 0, length: Optional[int] = None) -> List[Extent]:
        """The allocation map of ``[offset, offset + length)`` as merged runs.

        See :class:`vhdcore.disk.extent.Extent`. Built from the BAT and, for
        differencing disks, the sector bitmaps, through the kernels.
        """
        if length is None:
            length = self.virtual_size - offset
        self._check_range(offset, length)
        out: List[Extent] = []
        self._extents_into(out, offset, length, 0)
        return out

    def _extents_into(self, out, offset, length, depth):
        if length <= 0:
            return
        if self._bat_table is None:
            append_extent(out, Extent(offset, length, DATA if depth == 0 else PARENT,
                                      depth, offset))
            return
        state = DATA if depth == 0 else PARENT
        covered = len(self._bat_table) * self.block_size
        if offset + length > covered:
            # A CHS-derived size beyond the table: the excess holds nothing.
            inside = max(0, covered - offset)
            self._extents_into(out, offset, inside, depth)
            append_extent(out, Extent(offset + inside, length - inside, ZERO, -1, -1))
            return
        first = offset // SECTOR_SIZE
        last = (offset + length + SECTOR_SIZE - 1) // SECTOR_SIZE
        # Columns, not a tuple per run: a whole-image map of a fragmented
        # disk has a run per block, up to a million of them.
        sectors, counts, file_offsets = kernels.bat_extents_array(
            self._bat_table, first, last - first, self._sectors_per_block, self._bitmap_bytes
        )
        end = offset + length
        if self.parent is None:
            _runs_into(out, offset, end, sectors, counts, file_offsets, state, depth)
            return
        for sector, count, file_offset in zip(sectors, counts, file_offsets):
            run_start = max(sector * SECTOR_SIZE, offset)
            run_end = min((sector + count) * SECTOR_SIZE, end)
            if run_end <= run_start:
                continue
            if file_offset < 0:
                self._unallocated_into(out, run_start, run_end - run_start, depth)
            else:
                self._bitmap_extents_into(out, run_start, run_end, depth)

    def _unallocated_into(self, out, offset, length, depth):
        """A range no block of this image holds: the parent's, or zeros."""
        if self.parent is None:
            append_extent(out, Extent(offset, length, ZERO, -1, -1))
            return
        inside = max(0, min(offset + length, self.parent.virtual_size) - offset)
        if inside:
            self.parent._extents_into(out, offset, inside, depth + 1)
        if inside < length:
            append_extent(out, Extent(offset + inside, length - inside, ZERO, -1, -1))

    def _bitmap_extents_into(self, out, start, end, depth):
        """Split an allocated differencing range by its sector bitmaps."""
        block_size = self.block_size
        position = start
        while position < end:
            block = position // block_size
            block_start = block * block_size
            block_end = min(block_start + block_size, end)
            bitmap = self._bitmap(block)
            first_sector = (position - block_start) // SECTOR_SIZE
            last_sector = (block_end - block_start + SECTOR_SIZE - 1) // SECTOR_SIZE
            data_start = self._bat_view[block] * SECTOR_SIZE + self._bitmap_bytes
            for bit, count, is_set in kernels.bitmap_runs(
                bitmap, first_sector, last_sector - first_sector
            ):
                run_start = max(block_start + bit * SECTOR_SIZE, position)
                run_end = min(block_start + (bit + count) * SECTOR_SIZE, block_end)
                if run_end <= run_start:
                    continue
                if is_set:
                    append_extent(out, Extent(
                        run_start, run_end - run_start, DATA if depth == 0 else PARENT,
                        depth, data_start + (run_start - block_start),
                    ))
                else:
                    self._unallocated_into(out, run_start, run_end - run_start, depth)
            position = block_end

    def _bitmap(self, block) -> bytearray:
        """The sector bitmap of an allocated block (cached)."""
        bitmap = self._bitmaps.get(block)
        if bitmap is None:
            entry = self._bat_view[block]
            bitmap = bytearray(self._file.pread(
                entry * SECTOR_SIZE, self._bitmap_bytes, f"bitmap of block {block}"
            ))
            self._bitmaps[block] = bitmap
        return bitmap

    def reload(self) -> None:
        """Re-read footer, header, BAT and batmap after a change to the layout."""
        self._bitmaps = {}
        self._load()

    # ------------------------------------------------------------------
    # lifetime

    def flush(self) -> None:
        """Make every completed write durable (fsync)."""
        if self.mode == "r+" and not self._closed:
            self._sync()

    def _sync(self) -> None:
        if self._batmap_pending:
            # A set batmap bit vouches for a full bitmap (in a differencing
            # disk it hides the parent): the bitmaps go to disk first.
            self._file.flush()
            self._store_batmap_bits()
        self._file.flush()

    def close(self) -> None:
        """Flush (if writable) and close this image and its parents."""
        if self._closed:
            return
        try:
            if self.mode == "r+":
                self._sync()
        finally:
            self._closed = True
            self._file.close()
            if self.parent is not None:
                self.parent.close()

    def fileno(self) -> int:
        """The descriptor of this image's own file (not its parents'), for OS hints."""
        return self._file.fd

    # The VirtualDisk protocol (vhdcore.disk.virtual), beside the VHD names.
    format = "vhd"
    #: VHD addresses 512-byte sectors only.
    logical_sector_size = SECTOR_SIZE

    @property
    def files(self) -> List[str]:
        """Every file of the chain: this image's, then its parent's, ..."""
        return [member.path for member in self.chain]

    def member_file(self, depth: int):
        """The ImageFile of the chain member at ``depth`` (0 is this image)."""
        members = self._members()
        return members[depth]._file if 0 <= depth < len(members) else None

    def rawio(self):
        """A file-like :class:`io.RawIOBase` view of the virtual disk."""
        from ...disk.rawio import DiskRawIO

        return DiskRawIO(self)


def open(path, mode: str = "r", **options) -> VHD:  # noqa: A001 - mirrors builtins.open
    """Open a VHD image.

    Args:
        path: the image file.
        mode: ``"r"`` (read-only; the file is never modified) or ``"r+"``
            (read and write; takes an exclusive lock).
        **options: for differencing chains (see :mod:`vhdcore.formats.vhd.chain`):
            ``allow_parent_dirs`` (directories besides the image's own where
            parents may live), ``allow_symlinks`` (follow links in parent
            paths), ``max_chain_depth`` (default 30) and ``parent_resolver``;
            ``consistent=True`` makes a read-only open take a shared lock,
            refused while a writer holds the image and keeping writers out
            until closed (conversions and commits read their sources so).

    Raises:
        VHDError: the file is not a usable VHD; the message says why.
    """
    return VHD(path, mode, **options)


__all__ = ["VHD", "VHDWarning", "open", "VHDError"]
