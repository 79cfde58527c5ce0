"""The qcow2 L1 and L2 tables: read, bounded, cached and decoded a slice at a time.

A guest offset maps through one L1 entry (which L2 table) and one L2
entry (where the cluster lies); with extended L2 entries each cluster also
carries 32 subcluster bits saying which parts are allocated or zero. The
tables come from an untrusted file, so every offset is checked (aligned,
inside the file) before anything is read at it, and the decoded result is
the same for both layouts: per *unit* (a subcluster with extended L2, else
a cluster) a state, a host offset and, for compressed clusters, the bytes
of compressed data.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from ...errors import CorruptImageError
from . import constants as C

# Unit states.
UNALLOCATED = 0  # not in this image: the backing file's, or zeros
ZERO = 1  # reads as zeros
DATA = 2  # stored as is at ``host``
COMPRESSED = 3  # stored compressed: the cluster at ``host``, ``length`` bytes

#: Decoded L2 tables kept, by their total size (64 MiB: 1024 tables of
#: 64 KiB clusters); at least one is always kept.
L2_CACHE_BYTES = 64 << 20

_STANDARD_RESERVED = np.uint64(C.L2_STANDARD_RESERVED_MASK)
_OFFSET_MASK = np.uint64(C.OFFSET_MASK)
_COMPRESSED = np.uint64(C.COMPRESSED)
_ZERO_FLAG = np.uint64(C.ZERO_FLAG)
_SUBCLUSTER_BITS = np.arange(C.SUBCLUSTERS, dtype=np.uint64)


def compressed_fields(entries, cluster_bits: int):
    """``(host offset, sectors)`` of compressed L2 ``entries`` (uint64 array), as the
    specification packs them: the offset in the low ``62 - (cluster_bits - 8)``
    bits, the count of 512-byte sectors less one above it."""
    shift = np.uint64(62 - (cluster_bits - 8))
    host = (entries & ((np.uint64(1) << shift) - np.uint64(1))).astype(np.int64)
    sectors = (entries >> shift) & np.uint64((1 << (cluster_bits - 8)) - 1)
    return host, sectors.astype(np.int64) + 1


class Units(NamedTuple):
    """Decoded units ``first .. first + len(state)`` of the disk (numpy arrays)."""

    first: int
    state: np.ndarray  # uint8, one of the states above
    host: np.ndarray  # int64: DATA: the unit's host offset; COMPRESSED: the cluster's
    length: np.ndarray  # int64: COMPRESSED: bytes of compressed data; else 0


class Tables:
    """The L1 table of an image and a bounded cache of its L2 tables.

    Args:
        file: the image's :class:`~vhdcore.io.imagefile.ImageFile` (tables live there).
        header: the parsed :class:`~vhdcore.formats.qcow2.header.Header`.
        file_size: the image file's length (tables must lie inside it).
        data_size: the length of the file clusters lie in (the external
            data file's, else ``file_size``).
        external_data: clusters live in an external data file (then host
            offset 0 is a real offset, and compression is impossible).
    """

    def __init__(self, file, header, file_size: int, data_size: int, external_data: bool):
        self.file = file
        self.name = file.name
        self.cluster_bits = header.cluster_bits
        self.cluster_size = header.cluster_size
        self.extended = header.extended_l2
        self.l2_entries = header.l2_entries
        self.units_per_cluster = C.SUBCLUSTERS if self.extended else 1
        self.unit_size = header.subcluster_size
        self.units_per_table = self.l2_entries * self.units_per_cluster
        # Bit 0 of a standard entry: reads as zeros. Version 3 defines it;
        # qemu honours it in version 2 too, and so do we, to read the same.
        self.zero_flag = not self.extended
        self.file_size = file_size
        self.data_size = data_size
        self.external_data = external_data
        self._l1 = self._read_l1(header)
        self._allocated_tables = np.flatnonzero(self._l1)
        self._cache: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._cache_limit = max(1, L2_CACHE_BYTES // self.cluster_size)
        self._lock = threading.Lock()

    # -- the L1 table

    def _read_l1(self, header) -> np.ndarray:
        """The L2 tables' offsets (0: none), every one checked."""
        count = header.l1_size
        if count * 8 > C.MAX_L1_BYTES:  # the header refuses it; never allocate on trust
            raise CorruptImageError(f"{self.name}: qcow2 L1 table of {count} entries is too large")
        start = header.l1_table_offset
        if count and start + count * 8 > self.file_size:
            raise CorruptImageError(
                f"{self.name}: qcow2 L1 table at {start:#x}+{count * 8} lies beyond the end "
                f"of the file ({self.file_size} bytes)"
            )
        # Entries past the disk's end are never used: neither read nor judged.
        count = min(count, header.l1_needed)
        raw = self.file.pread(start, count * 8, "qcow2 L1 table") if count else b""
        offsets = (np.frombuffer(raw, dtype=">u8").astype(np.uint64) & _OFFSET_MASK)
        offsets = offsets.astype(np.int64)
        bad = (offsets % self.cluster_size != 0) | (offsets + self.cluster_size > self.file_size)
        bad &= offsets != 0
        if bad.any():
            index = int(np.argmax(bad))
            raise CorruptImageError(
                f"{self.name}: qcow2 L1 entry {index} (at {start + 8 * index:#x}) points to an "
                f"L2 table at {int(offsets[index]):#x}, which is unaligned or beyond the end "
                f"of the file ({self.file_size} bytes)"
            )
        return offsets

    def table_allocated(self, index: int) -> bool:
        """Whether L2 table ``index`` exists (else its whole span is unallocated)."""
        return index < len(self._l1) and self._l1[index] != 0

    def next_allocated_table(self, index: int) -> int:
        """The first L2 table after ``index`` that exists (``len(L1)`` if none)."""
        found = int(np.searchsorted(self._allocated_tables, index, side="right"))
        if found < len(self._allocated_tables):
            return int(self._allocated_tables[found])
        return max(len(self._l1), index + 1)

    # -- L2 tables

    def _l2(self, index: int) -> np.ndarray:
        """L2 table ``index`` as native uint64 words (two per entry with extended L2)."""
        with self._lock:
            table = self._cache.get(index)
            if table is not None:
                self._cache.move_to_end(index)
                return table
        offset = int(self._l1[index])
        raw = self.file.pread(offset, self.cluster_size, f"qcow2 L2 table {index}")
        table = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        with self._lock:
            self._cache[index] = table
            while len(self._cache) > self._cache_limit:
                self._cache.popitem(last=False)
        return table

    def units(self, first: int, count: int) -> Units:
        """Decode units ``[first, first + count)``; they must lie within one L2 table."""
        table_index, start = divmod(first, self.units_per_table)
        if start + count > self.units_per_table:
            raise ValueError("units() crosses an L2 table")
        if table_index >= len(self._l1) or self._l1[table_index] == 0:
            return Units(first, np.zeros(count, np.uint8), np.zeros(count, np.int64),
                         np.zeros(count, np.int64))
        table = self._l2(table_index)
        per = self.units_per_cluster
        first_cluster, last_cluster = start // per, (start + count - 1) // per + 1
        if self.extended:
            words = table.reshape(-1, 2)[first_cluster:last_cluster]
            entries, bitmaps = words[:, 0], words[:, 1]
        else:
            entries, bitmaps = table[first_cluster:last_cluster], None
        state, host, length = self._decode(table_index, first_cluster, entries, bitmaps)
        skip = start - first_cluster * per
        return Units(first, state[skip : skip + count], host[skip : skip + count],
                     length[skip : skip + count])

    def _decode(self, table_index, first_cluster, entries, bitmaps):
        """Per-unit ``(state, host, length)`` for consecutive L2 ``entries``."""
        compressed = (entries & _COMPRESSED) != 0
        offsets = (entries & _OFFSET_MASK).astype(np.int64)
        copied = (entries >> np.uint64(63)) != 0
        if self.external_data:
            present = (offsets != 0) | copied
        else:
            present = offsets != 0
        present &= ~compressed
        zero = ((entries & _ZERO_FLAG) != 0) & ~compressed if self.zero_flag else None
        if zero is not None:
            present &= ~zero
        reserved = (entries & _STANDARD_RESERVED) != 0
        self._check_data(table_index, first_cluster, present, offsets, reserved)
        c_host, c_length = self._compressed_fields(table_index, first_cluster, entries, compressed)
        n = len(entries)
        if not self.extended:
            state = np.full(n, UNALLOCATED, np.uint8)
            state[present] = DATA
            if zero is not None:
                state[zero] = ZERO
            state[compressed] = COMPRESSED
            host = np.where(compressed, c_host, np.where(state == DATA, offsets, 0))
            return state, host.astype(np.int64), c_length
        per = C.SUBCLUSTERS
        allocated = ((bitmaps[:, None] >> _SUBCLUSTER_BITS) & np.uint64(1)) != 0
        zeros = ((bitmaps[:, None] >> (_SUBCLUSTER_BITS + np.uint64(32))) & np.uint64(1)) != 0
        # A compressed cluster's bitmap is reserved: ignored, as qemu ignores it.
        conflict = (allocated & zeros).any(axis=1) | (allocated.any(axis=1) & ~present)
        conflict &= ~compressed
        if conflict.any():
            index = int(np.argmax(conflict))
            raise CorruptImageError(
                f"{self.name}: qcow2 extended L2 entry {first_cluster + index} of table "
                f"{table_index} (at {self._entry_offset(table_index, first_cluster + index):#x}) "
                f"has subclusters both allocated and zero, or allocated in an unallocated "
                f"cluster"
            )
        state = np.full((n, per), UNALLOCATED, np.uint8)
        state[allocated] = DATA
        state[zeros] = ZERO
        state[compressed] = COMPRESSED
        sub_offsets = np.arange(per, dtype=np.int64) * self.unit_size
        host = np.where(state == DATA, offsets[:, None] + sub_offsets, 0)
        host = np.where(compressed[:, None], c_host[:, None], host)
        length = np.broadcast_to(c_length[:, None], (n, per))
        return state.reshape(-1), host.reshape(-1).astype(np.int64), length.reshape(-1).copy()

    def _entry_offset(self, table_index: int, entry: int) -> int:
        entry_size = 16 if self.extended else 8
        return int(self._l1[table_index]) + entry * entry_size

    def _check_data(self, table_index, first_cluster, present, offsets, reserved):
        bad = present & (
            (offsets % self.cluster_size != 0) | (offsets >= self.data_size) | reserved
        )
        if bad.any():
            index = int(np.argmax(bad))
            raise CorruptImageError(
                f"{self.name}: qcow2 L2 entry {first_cluster + index} of table {table_index} "
                f"(at {self._entry_offset(table_index, first_cluster + index):#x}) points to "
                f"a cluster at {int(offsets[index]):#x} that is unaligned, has reserved bits "
                f"set, or lies beyond the end of the data ({self.data_size} bytes)"
            )

    def _compressed_fields(self, table_index, first_cluster, entries, compressed):
        """Host offset and byte length of each compressed cluster (0 elsewhere)."""
        n = len(entries)
        if not compressed.any():
            return np.zeros(n, np.int64), np.zeros(n, np.int64)
        host, sectors = compressed_fields(entries, self.cluster_bits)
        length = sectors * C.COMPRESSED_SECTOR - (host % C.COMPRESSED_SECTOR)
        host = np.where(compressed, host, 0)
        length = np.where(compressed, length, 0)
        bad = compressed & ((host >= self.file_size) | (host < self.cluster_size))
        if self.external_data:
            bad = compressed
        if bad.any():
            index = int(np.argmax(bad))
            why = ("compressed clusters are not allowed with an external data file"
                   if self.external_data else
                   f"its data at {int(host[index]):#x} lies outside the file "
                   f"({self.file_size} bytes)")
            raise CorruptImageError(
                f"{self.name}: qcow2 L2 entry {first_cluster + index} of table {table_index} "
                f"(at {self._entry_offset(table_index, first_cluster + index):#x}) describes "
                f"a compressed cluster, but {why}"
            )
        return host, length
