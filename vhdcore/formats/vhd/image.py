"""The VHD object: open an image, read and write it, walk its chain.

One class serves all three disk types. Fixed disks map straight through to
the file. Dynamic and differencing disks go through the block allocation
table (BAT): an unallocated block reads as zeros (dynamic) or from the
parent (differencing), and a differencing block's sector bitmap decides,
per sector, whether the child or the parent chain holds the data.

Writes that need a new block follow an order in which a crash at any
point leaves an image that opens and checks clean (leaked space at worst):

1. extend the file: the new footer goes at the new end of file, and the
   block's bitmap (and any old bytes under the block) is written as zeros;
2. barrier (fsync), so step 3 can never reach the disk before step 1;
3. write the BAT sector that points at the block;
4. write the data;
5. set the bitmap bits of the sectors written.

A crash after 3 and before 5 leaves a block whose clear bits still read
from the parent (or as zeros): never stale bytes. ``flush()`` fsyncs, so
everything written before it survives a crash of the machine too.
"""

from __future__ import annotations

import array
import os
import sys
import warnings
from typing import List, Optional

from ..._backend import kernels
from ...disk.extent import DATA, PARENT, ZERO, Extent, append_extent
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
from .xen import PAGE_SIZE, block_start, is_tap, store_full_bits

_ZERO_CHUNK = bytes(1 << 20)

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


def _zero_fill(view: memoryview) -> None:
    """Set every byte of a writable byte view to zero."""
    zeros = memoryview(_ZERO_CHUNK)
    for start in range(0, len(view), len(zeros)):
        end = min(start + len(zeros), len(view))
        view[start:end] = zeros[: end - start]


def _decode_bat(raw: bytes) -> array.array:
    """The on-disk big-endian table as native uint32s (stdlib: no numpy needed to open)."""
    table = array.array(UINT32_TYPECODE)
    table.frombytes(raw)
    if sys.byteorder == "little":
        table.byteswap()
    return table


class VHD:
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
            bitmap = bytearray(
                self._file.pread(entry * SECTOR_SIZE, self._bitmap_bytes, f"bitmap of block {block}")
            )
            self._bitmaps[block] = bitmap
        return bitmap

    # ------------------------------------------------------------------
    # writing

    def write(self, offset: int, data) -> int:
        """Write ``data`` at virtual ``offset``; returns the bytes written.

        Writing zeros into an unallocated block of a dynamic disk allocates
        nothing. Writes past the virtual size are refused. One piece of
        :meth:`write_many`, the one write path.
        """
        return self.write_many(((offset, data),))

    def _zero_reads_through(self, start, end) -> bool:
        """Whether leaving ``[start, end)`` unallocated already reads as zeros."""
        if self.parent is None:
            return True
        return all(e.state == ZERO for e in self._parent_extents(start, end - start))

    def _parent_extents(self, offset, length):
        out: List[Extent] = []
        self._unallocated_into(out, offset, length, 0)
        return out

    def _allocate(self, blocks) -> None:
        """Give each block in ``blocks`` space at the end of the file.

        Follows the crash-safe order in the module docstring, with one
        barrier for the whole batch.
        """
        f = self._file
        # A new block is not full: a stale blktap "full" bit must be gone
        # before the BAT points at it, or blktap would skip its bitmap.
        self.clear_batmap_bits(blocks)
        old_size = f.size()
        first = self._next_free
        span = stride = self._block_span
        if is_tap(self.footer):
            # blktap's placement: each block's data on a 4 KiB page.
            first = block_start(first, self._bitmap_bytes)
            stride = -(-span // PAGE_SIZE) * PAGE_SIZE
        new_end = first + stride * (len(blocks) - 1) + span
        footer_bytes = self.footer.to_bytes()
        # 1. Extend: footer at the new end, zeros over the blocks' bitmaps
        #    and over any old bytes (the old footer, trailing garbage) the
        #    new blocks now cover.
        try:
            f.pwrite(new_end, footer_bytes)
        except OSError:
            # A full disk can take part of the footer: cut the file back so
            # the old footer is at its end again, not a torn new one.
            if f.size() > old_size:
                f.truncate(old_size)
            raise
        zero_bitmap = bytes(self._bitmap_bytes)
        gap_start = self._next_free
        for i in range(len(blocks)):
            start = first + i * stride
            if gap_start < min(start, old_size):
                # Alignment padding over old bytes (the old footer): zeros.
                f.pwrite(gap_start, bytes(min(start, old_size) - gap_start))
            gap_start = start + span
            f.pwrite(start, zero_bitmap)
            stale_end = min(old_size, start + span)
            position = start + self._bitmap_bytes
            while position < stale_end:
                chunk = min(len(_ZERO_CHUNK), stale_end - position)
                f.pwrite(position, memoryview(_ZERO_CHUNK)[:chunk])
                position += chunk
        if old_size > new_end + FOOTER_SIZE:
            f.truncate(new_end + FOOTER_SIZE)
        # 2. Barrier: the BAT must never point at a block before its zeroed
        #    bitmap and the new footer exist.
        f.flush()
        # 3. BAT entries, one sector at a time; the in-memory table changes
        #    only once the on-disk entry is written.
        pending = array.array(UINT32_TYPECODE, self._bat_table)
        for i, block in enumerate(blocks):
            pending[block] = (first + i * stride) // SECTOR_SIZE
        self._next_free = new_end
        self._store_bat(pending, blocks)
        for block in blocks:
            self._bitmaps[block] = bytearray(self._bitmap_bytes)

    def _bitmap_update(self, updates, block, within, size) -> None:
        """Add to ``updates`` ({block: new bitmap}) the bits a write of ``[within, +size)`` sets.

        The cached bitmap is not touched: it changes only once the new one
        is on disk (:meth:`_store_bitmaps`), so after a failed write the
        handle never believes in bits the file does not hold.
        """
        bitmap = updates.get(block)
        if bitmap is None:
            bitmap = self._bitmap(block)
        first = within // SECTOR_SIZE
        count = (within + size + SECTOR_SIZE - 1) // SECTOR_SIZE - first
        if kernels.bitmap_count(bitmap, first, count) == count:
            return
        if block not in updates:
            bitmap = updates[block] = bytearray(bitmap)
        kernels.bitmap_fill(bitmap, first, count, True)

    def _store_bitmaps(self, updates) -> None:
        """Write changed bitmaps (step 5), then adopt them in the cache.

        In a differencing disk a set bit sends reads away from the parent,
        so the data it covers must be durable first (W1 step 6): otherwise
        a power loss could keep the bit and lose the data, and the sector
        would read as zeros, neither the old nor the new contents.
        """
        if not updates:
            return
        if self.parent is not None:
            self._file.flush()
        for block in sorted(updates):
            self._file.pwrite(self._bat_view[block] * SECTOR_SIZE, updates[block])
            self._bitmaps[block] = updates[block]
        if self.batmap is not None:
            spb = self._sectors_per_block
            self._batmap_pending.update(
                block for block in updates if kernels.bitmap_count(updates[block], 0, spb) == spb
            )

    def _store_batmap_bits(self) -> None:
        """Set the batmap bits of blocks whose bitmap became full (blktap's fast path)."""
        pending, self._batmap_pending = self._batmap_pending, set()
        spb = self._sectors_per_block

        def full(block):
            return kernels.bitmap_count(self._bitmap(block), 0, spb) == spb

        batmap = store_full_bits(self._file, self.footer, self.header, self._bat_view,
                                 pending, full)
        if batmap is not None:
            self.batmap = batmap

    # ------------------------------------------------------------------
    # batch writes and layout changes (commit, rebase, resize, compact)
    #
    # These keep the crash-safe order of the module docstring: a block's
    # space is filled before the BAT points at it, and a block's old space
    # is reused only after the BAT entry pointing away from it is durable.

    def reserve(self, ranges) -> int:
        """Allocate, with one barrier, every unallocated block under ``ranges``.

        A reserved block reads exactly as before (its bitmap is zero, its
        data area zeros), so a crash afterwards changes no contents; later
        writes into it need no barrier of their own. Commit reserves all
        the parent blocks it will fill before copying anything, so the
        whole copy costs one fsync up front and one at the end.

        Args:
            ranges: ``(offset, length)`` virtual byte ranges.

        Returns:
            How many blocks were allocated (0 for fixed disks).

        Raises:
            ReadOnlyError: the image is open read-only.
            OutOfRangeError: a range leaves the virtual disk.
        """
        if self.mode != "r+":
            raise ReadOnlyError(f"{self.path}: image is open read-only")
        if self._bat_table is None:
            return 0
        block_size = self.block_size
        blocks = set()
        for offset, length in ranges:
            self._check_range(offset, length)
            if length <= 0:
                continue
            first = offset // block_size
            last = (offset + length - 1) // block_size
            span = self.bat[first : last + 1]  # numpy: commit reserves whole disks
            unused = (span == BAT_UNUSED).nonzero()[0]
            blocks.update((unused + first).tolist())
        if blocks:
            self._allocate(sorted(blocks))
        return len(blocks)

    def write_many(self, pieces, *, allocate_zeros: bool = False) -> int:
        """Write several ``(offset, data)`` pieces with at most one allocation barrier.

        Equivalent to calling :meth:`write` for each piece, except that the
        blocks they need are allocated together (one fsync), all data is
        written before any bitmap, and each touched bitmap is written once.

        Args:
            pieces: ``(offset, bytes-like)`` pairs; they must not overlap.
            allocate_zeros: store all-zero pieces even where leaving the
                block unallocated would read as zeros already. Rebase needs
                this: zeros the child must keep holding once its parent
                changes.

        Returns:
            The bytes written.
        """
        if self.mode != "r+":
            raise ReadOnlyError(f"{self.path}: image is open read-only")
        items = []
        total = 0
        for offset, data in pieces:
            view = memoryview(data)
            if view.format != "B" or view.ndim != 1:
                view = view.cast("B")
            self._check_range(offset, len(view))
            if len(view):
                items.append((offset, view))
                total += len(view)
        if self._bat_table is None:
            for offset, view in items:
                self._file.pwrite(offset, view)
            return total
        if self.parent is not None:
            items = [self._whole_sectors(offset, view) for offset, view in items]
        block_size = self.block_size
        planned = []
        to_allocate = set()
        for offset, view in items:
            end = offset + len(view)
            position = offset
            while position < end:
                block = position // block_size
                piece_end = min((block + 1) * block_size, end)
                piece = view[position - offset : piece_end - offset]
                if self._bat_view[block] == BAT_UNUSED and block not in to_allocate:
                    if (
                        not allocate_zeros
                        and kernels.is_zero(piece)
                        and self._zero_reads_through(position, piece_end)
                    ):
                        position = piece_end
                        continue
                    to_allocate.add(block)
                planned.append((block, position, piece))
                position = piece_end
        if to_allocate:
            self._allocate(sorted(to_allocate))
        for block, position, piece in planned:
            start = (
                self._bat_view[block] * SECTOR_SIZE + self._bitmap_bytes
                + (position - block * block_size)
            )
            self._file.pwrite(start, piece)
        dirty = {}
        for block, position, piece in planned:
            self._bitmap_update(dirty, block, position - block * block_size, len(piece))
        self._store_bitmaps(dirty)
        return total

    def _whole_sectors(self, offset, view):
        """``(offset, view)`` widened to whole sectors from the chain's current view."""
        head = offset % SECTOR_SIZE
        tail = (offset + len(view)) % SECTOR_SIZE
        if not head and not tail:
            return offset, view
        start = offset - head
        end = offset + len(view) + ((SECTOR_SIZE - tail) if tail else 0)
        whole = bytearray(end - start)
        if head:
            whole[:SECTOR_SIZE] = self.read(start, SECTOR_SIZE)
        if tail:
            whole[-SECTOR_SIZE:] = self.read(end - SECTOR_SIZE, SECTOR_SIZE)
        whole[head : head + len(view)] = view
        return start, memoryview(whole)

    def relocate_blocks(self, moves, *, after: int = 0) -> None:
        """Move allocated blocks (bitmap and data) to new places in the file.

        Crash-safe order: (1) when appending, the new footer at the new end
        of file; the copies; (2) barrier; (3) the BAT sectors pointing at
        the copies; (4) barrier. Until (3) the BAT points at the old
        copies, which nothing has touched; after (4) the old space is free
        and the caller may reuse it. A crash leaves leaked space at worst.

        Args:
            moves: ``(block, target)`` pairs: the BAT index of an allocated
                block and the sector-aligned byte offset to copy it to,
                which must lie in space nothing references; ``None``
                appends the block after the last one (and at or after
                ``after``, so a caller growing the metadata can clear room).
        """
        if self.mode != "r+":
            raise ReadOnlyError(f"{self.path}: image is open read-only")
        if not moves:
            return
        f = self._file
        span = self._block_span
        appended = sum(1 for _block, target in moves if target is None)
        old_size = f.size()
        first = max(self._next_free, -(-after // SECTOR_SIZE) * SECTOR_SIZE)
        new_end = first + span * appended
        if appended:
            f.pwrite(new_end, self.footer.to_bytes())
        pending = array.array(UINT32_TYPECODE, self._bat_table)
        slot = 0
        for block, target in moves:
            if self._bat_view[block] == BAT_UNUSED:
                raise ValueError(f"{self.path}: block {block} is not allocated")
            if target is None:
                target = first + slot * span
                slot += 1
            if target % SECTOR_SIZE:
                raise ValueError(f"{self.path}: block target {target:#x} is not sector-aligned")
            self._copy_span(int(self._bat_view[block]) * SECTOR_SIZE, target, span, old_size)
            pending[block] = target // SECTOR_SIZE
        if appended and old_size > new_end + FOOTER_SIZE:
            f.truncate(new_end + FOOTER_SIZE)
        f.flush()
        self._store_bat(pending, [block for block, _target in moves])
        f.flush()
        if appended:
            self._next_free = new_end

    def release_blocks(self, blocks) -> None:
        """Mark ``blocks`` unallocated in the BAT (then barrier); their space leaks
        until the file is compacted. The caller decides that their contents
        may go (all zeros, or past a shrunk end)."""
        if self.mode != "r+":
            raise ReadOnlyError(f"{self.path}: image is open read-only")
        blocks = [b for b in blocks if self._bat_view[b] != BAT_UNUSED]
        if not blocks:
            return
        # The "full" hints go first: a crash in between leaves an allocated
        # block without its hint (harmless), never a hint on a released one.
        self.clear_batmap_bits(blocks)
        pending = array.array(UINT32_TYPECODE, self._bat_table)
        for block in blocks:
            pending[block] = BAT_UNUSED
        self._store_bat(pending, blocks)
        for block in blocks:
            self._bitmaps.pop(block, None)
        self._file.flush()

    def clear_batmap_bits(self, blocks) -> None:
        """Clear blktap's "block is full" bits of ``blocks`` (then barrier).

        Only a map whose checksum holds is changed: a damaged one is not
        trusted by anyone. Header and map go in one write when adjacent
        (as blktap lays them out).
        """
        batmap = getattr(self, "batmap", None)
        if batmap is None or not batmap.map_trusted:
            return
        if not isinstance(blocks, range) and not any(batmap.is_full(b) for b in blocks):
            return  # the usual case, without unpacking the map
        updated = batmap.without(blocks)
        if updated is batmap:
            return
        f = self._file
        if updated.batmap_offset == updated.header_offset + SECTOR_SIZE:
            f.pwrite(updated.header_offset, updated.to_bytes() + updated.map)
        else:
            f.pwrite(updated.batmap_offset, updated.map)
            f.pwrite(updated.header_offset, updated.to_bytes())
        f.flush()
        self.batmap = updated

    def _copy_span(self, source, target, length, fresh_from) -> None:
        """Copy ``length`` bytes; zeros past ``fresh_from`` (the old end) stay holes."""
        from ...io.sparse import write_sparse  # only the block-moving operations need it

        buffer = bytearray(min(length, 4 << 20))
        view = memoryview(buffer)
        done = 0
        while done < length:
            chunk = min(len(view), length - done)
            self._file.preadinto(source + done, view[:chunk], "block being moved")
            write_sparse(self._file, target + done, view[:chunk], fresh_from)
            done += chunk

    def _store_bat(self, pending, blocks) -> None:
        """Write the BAT sectors holding ``blocks`` from ``pending``, then adopt them.

        The one BAT writer: whole sectors, each adopted in memory only once
        written; the last sector keeps what lies beyond the entries (padding,
        or entries past the disk's block count).
        """
        for sector in sorted({block * 4 // SECTOR_SIZE for block in blocks}):
            lo = sector * SECTOR_SIZE // 4
            hi = min(lo + SECTOR_SIZE // 4, len(pending))
            raw = bytearray(kernels.bat_encode(pending[lo:hi]))
            if len(raw) < SECTOR_SIZE:
                raw += self._file.pread(
                    self.header.table_offset + lo * 4 + len(raw),
                    SECTOR_SIZE - len(raw), "block allocation table",
                )
            self._file.pwrite(self.header.table_offset + lo * 4, raw)
            self._bat_table[lo:hi] = pending[lo:hi]

    def store_header(self, header) -> None:
        """Write ``header`` (a :class:`DynamicHeader`) in place: one 1024-byte write."""
        if self.mode != "r+":
            raise ReadOnlyError(f"{self.path}: image is open read-only")
        self._file.pwrite(self.footer.data_offset, header.to_bytes())
        self.header = header

    def store_footer(self, footer) -> None:
        """Write ``footer`` at the end of the file, then its copy at offset 0.

        The copy exists for dynamic and differencing disks only. A crash
        between the two writes leaves a primary the engine trusts and a
        copy that ``check`` reports as different; rerunning the operation
        rewrites both.
        """
        if self.mode != "r+":
            raise ReadOnlyError(f"{self.path}: image is open read-only")
        raw = footer.to_bytes()
        self._file.pwrite(self._file.size() - FOOTER_SIZE, raw)
        if footer.disk_type != DISK_FIXED:
            self._file.pwrite(0, raw)
        self.footer = footer

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
        from ...disk.rawio import VHDRawIO

        return VHDRawIO(self)


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
