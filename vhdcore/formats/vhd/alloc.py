"""Writing a VHD: the one write path, block allocation and layout changes.

Writes that need a new block follow an order in which a crash at any
point leaves an image that opens and checks clean (leaked space at worst):

1. extend the file: the new footer goes at the new end of file, and the
   block's bitmap (and any old bytes under the block) is written as zeros;
2. barrier (fsync), so step 3 can never reach the disk before step 1;
3. write the BAT sector that points at the block;
4. write the data;
5. set the bitmap bits of the sectors written.

A crash after 3 and before 5 leaves a block whose clear bits still read
from the parent (or as zeros): never stale bytes. The batch operations
(commit, rebase, resize, compact) keep the same order: a block's space is
filled before the BAT points at it, and a block's old space is reused only
after the BAT entry pointing away from it is durable.

:class:`Writes` is a part of :class:`~vhdcore.formats.vhd.image.VHD`, kept in
its own module; it uses the image's table, bitmaps and file directly.
"""

from __future__ import annotations

import array
from typing import List

from ..._backend import kernels
from ...disk.extent import ZERO, Extent
from ...errors import (
    ReadOnlyError,
)
from .constants import (
    BAT_UNUSED,
    DISK_FIXED,
    FOOTER_SIZE,
    SECTOR_SIZE,
    UINT32_TYPECODE,
)
from .xen import PAGE_SIZE, block_start, is_tap, store_full_bits

_ZERO_CHUNK = bytes(1 << 20)


class Writes:
    """The writing half of :class:`~vhdcore.formats.vhd.image.VHD`."""

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

