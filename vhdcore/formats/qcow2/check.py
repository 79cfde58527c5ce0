"""``check`` for qcow2: every cluster's refcount against its uses, as ``qemu-img check``.

The image is read, never written. Each structure that takes clusters adds
one use to each of them: the header cluster, the L1 table, the refcount
table and its blocks, the L2 tables and the data clusters they point to
(a compressed cluster's bytes count on every host cluster they touch), the
snapshot table and each snapshot's L1 table and L2 tables, the bitmap
directory and its tables. The uses are then compared with the refcounts
stored: a refcount below the uses is corruption (qemu would free a cluster
still in use), above them a leak (space nothing uses). Entries pointing
outside the file or at unaligned offsets, reserved bits set in table
entries, clusters used by two kinds of structure (an overlap of metadata
with data or other metadata; snapshots share L2 tables and data
legitimately) and an L2 entry whose
"copied" flag disagrees with its refcount are errors; the dirty bit (a
crash with lazy refcounts: the refcounts may be stale) is a warning here,
and the refcount findings say what it left.

Memory is bounded: one count per cluster of the file, refused past
:data:`MAX_CHECK_CLUSTERS` clusters; tables are read one at a time.
"""

from __future__ import annotations

import struct
from typing import Dict, List, Optional

import numpy as np

from ...errors import CorruptImageError, LimitError
from ...io.imagefile import open_image_file
from ...problems import Problem
from ..vhd.check.report import CheckReport, Leak
from . import constants as C
from .header import parse as parse_header
from .snapshots import read_snapshots
from .tables import compressed_fields

#: Most clusters of file whose uses are counted (4 bytes each: 256 MiB).
MAX_CHECK_CLUSTERS = 64 << 20
#: Largest table (L1 or bitmap table) read, as qemu's QCOW_MAX_L1_SIZE: a
#: crafted snapshot entry must not make check read the whole file at once.
MAX_TABLE_BYTES = 32 << 20
#: Per code, this many findings are named one by one, then summarised.
MAX_REPORTED = 16

_BITMAP_ENTRY = struct.Struct(">QIIBBHI")  # table offset, size, flags, type, bits, name, extra


class _Check:
    """One image's check: the uses counted, then compared with the refcounts."""

    def __init__(self, path: str, file):
        self.path = path
        self.f = file
        self.size = file.size()
        head = file.pread(0, min(self.size, 1 << 16), "qcow2 header")
        self.header = header = parse_header(head, path, self.size)
        if header.cluster_size > len(head) and self.size > len(head):
            head = file.pread(0, min(self.size, header.cluster_size), "qcow2 header")
            self.header = header = parse_header(head, path, self.size)
        self.cluster = header.cluster_size
        self.clusters = -(-self.size // self.cluster)
        self.report = CheckReport(path=path, format="qcow2", type="qcow2",
                                  virtual_size=header.size, file_size=self.size)
        if self.clusters > MAX_CHECK_CLUSTERS:
            raise LimitError(
                f"{path}: a {self.size}-byte qcow2 file has {self.clusters} clusters of "
                f"{self.cluster} bytes, more than the {MAX_CHECK_CLUSTERS} check counts"
            )
        self.uses = np.zeros(self.clusters, dtype=np.uint32)
        # What uses each cluster: metadata that exists once (header, L1 and
        # refcount tables, snapshot and bitmap tables), L2 tables and data
        # (both shared by snapshots, so used more than once legitimately).
        self.metadata_uses = np.zeros(self.clusters, dtype=np.uint32)
        self.l2_tables = np.zeros(self.clusters, dtype=bool)
        self.data = np.zeros(self.clusters, dtype=bool)
        self.found: Dict[str, int] = {}
        self.external_data = header.data_file is not None or bool(
            header.incompatible_features & C.INCOMPAT_DATA_FILE)
        self.copied_checks: List[tuple] = []  # (entry offset, cluster offset, copied flag)

    # -- findings ----------------------------------------------------------

    def add(self, code: str, message: str, severity: str = "error",
            offset: Optional[int] = None) -> None:
        count = self.found.get(code, 0) + 1
        self.found[code] = count
        if count <= MAX_REPORTED:
            self.report.problems.append(
                Problem(code, f"{self.path}: {message}", severity, offset, CorruptImageError))

    def _summaries(self) -> None:
        for code, count in self.found.items():
            if count > MAX_REPORTED:
                severity = next(p.severity for p in self.report.problems if p.code == code)
                self.report.problems.append(Problem(
                    code, f"{self.path}: {count - MAX_REPORTED} more {code} findings",
                    severity, None, CorruptImageError))

    # -- counting ----------------------------------------------------------

    def use(self, offset: int, length: int, what: str, where: int, kind: str) -> bool:
        """Count one use of each cluster of ``[offset, offset + length)`` by ``kind``
        (``"metadata"``, ``"l2"`` or ``"data"``); False (and a finding) when it
        starts outside the file."""
        if offset < 0 or offset >= self.size:
            self.add("qcow2.outside", f"{what} at {offset:#x} lies outside the file "
                                      f"({self.size} bytes)", offset=where)
            return False
        first = offset // self.cluster
        last = min((offset + max(length, 1) - 1) // self.cluster + 1, self.clusters)
        self.uses[first:last] += 1
        if kind == "metadata":
            self.metadata_uses[first:last] += 1
        elif kind == "l2":
            self.l2_tables[first:last] = True
        else:
            self.data[first:last] = True
        return True

    def _table(self, offset: int, entries: int, what: str, where: int) -> Optional[np.ndarray]:
        """A table of big-endian u64 entries, counted as metadata; None if unusable."""
        length = entries * 8
        if not length:
            return np.zeros(0, dtype=np.uint64)
        if length > MAX_TABLE_BYTES:
            self.add("qcow2.table_size", f"{what} at {offset:#x} has {entries} entries, more "
                     f"than the {MAX_TABLE_BYTES // 8} qemu allows", offset=where)
            return None
        span = -(-length // self.cluster) * self.cluster
        if not self.use(offset, span, what, where, "metadata"):
            return None
        if offset + length > self.size:
            self.add("qcow2.outside", f"{what} at {offset:#x} runs past the end of the file",
                     offset=where)
            return None
        return np.frombuffer(self.f.pread(offset, length, what), dtype=">u8").astype(np.uint64)

    def count(self) -> None:
        header = self.header
        self.use(0, self.cluster, "the header", 0, "metadata")
        reftable = self._table(header.refcount_table_offset,
                               header.refcount_table_clusters * self.cluster // 8,
                               "the refcount table", 48)
        self.reftable = reftable
        if reftable is not None:
            for index, entry in enumerate(reftable.tolist()):
                block = entry & C.REFTABLE_OFFSET_MASK
                where = header.refcount_table_offset + 8 * index
                if entry & ~C.REFTABLE_OFFSET_MASK:
                    self.add("qcow2.reserved_bits", f"refcount table entry {index} has reserved "
                             f"bits set ({entry:#x})", offset=where)
                if not block:
                    continue
                if block % self.cluster:
                    self.add("qcow2.unaligned", f"refcount block {index} at {block:#x} is not "
                             f"cluster-aligned", offset=where)
                else:
                    self.use(block, self.cluster, f"refcount block {index}", where, "metadata")
        self._l1(header.l1_table_offset, header.l1_size, "the L1 table", 40, active=True)
        if header.nb_snapshots:
            snapshots = read_snapshots(self.f, header, self.size)
            self.use(header.snapshots_offset, sum(s.entry_size for s in snapshots),
                     "the snapshot table", 60, "metadata")
            for number, snapshot in enumerate(snapshots):
                self._l1(snapshot.l1_table_offset, snapshot.l1_size,
                         f"the L1 table of snapshot {number}", header.snapshots_offset,
                         active=False)
        self._bitmaps()

    def _l1(self, offset: int, size: int, what: str, where: int, active: bool) -> None:
        table = self._table(offset, size, what, where)
        if table is None:
            return
        for index, entry in enumerate(table.tolist()):
            l2 = entry & C.OFFSET_MASK
            at = offset + 8 * index
            if entry & C.L1_RESERVED_MASK:
                self.add("qcow2.reserved_bits", f"entry {index} of {what} has reserved bits "
                         f"set ({entry:#x})", offset=at)
            if not l2:
                continue
            name = f"L2 table {index} ({what})"
            if l2 % self.cluster:
                self.add("qcow2.unaligned", f"{name} at {l2:#x} is not cluster-aligned",
                         offset=at)
                continue
            if l2 + self.cluster > self.size:
                self.add("qcow2.outside", f"{name} at {l2:#x} runs past the end of the file "
                         f"({self.size} bytes)", offset=at)
                continue
            if not self.use(l2, self.cluster, name, at, "l2"):
                continue
            if active:
                self.copied_checks.append((at, l2, bool(entry >> 63)))
            self._l2(l2, name, active)

    def _l2(self, offset: int, name: str, active: bool) -> None:
        header = self.header
        extended = header.extended_l2
        raw = np.frombuffer(self.f.pread(offset, self.cluster, name), dtype=">u8")
        entries = (raw.reshape(-1, 2)[:, 0] if extended else raw).astype(np.uint64)
        width = 16 if extended else 8
        compressed = (entries & np.uint64(C.COMPRESSED)) != 0
        host = (entries & np.uint64(C.OFFSET_MASK)).astype(np.int64)
        starts, sectors = compressed_fields(entries, header.cluster_bits)
        for index in np.flatnonzero(compressed).tolist():
            begin = int(starts[index]) & ~(C.COMPRESSED_SECTOR - 1)
            self.use(begin, int(sectors[index]) * C.COMPRESSED_SECTOR,
                     f"compressed cluster {index} of {name}", offset + width * index, "data")
        if self.external_data:
            return  # data clusters live in another file
        reserved_bits = (entries & np.uint64(C.L2_STANDARD_RESERVED_MASK)) != 0
        reserved = np.flatnonzero(~compressed & reserved_bits).tolist()
        for index in reserved:
            self.add("qcow2.reserved_bits", f"entry {index} of {name} has reserved bits set "
                     f"({int(entries[index]):#x})", offset=offset + width * index)
        standard = np.flatnonzero(~compressed & (host != 0)).tolist()
        for index in standard:
            at = offset + width * index
            cluster = int(host[index])
            if cluster % self.cluster:
                self.add("qcow2.unaligned", f"data cluster {index} of {name} at {cluster:#x} "
                         f"is not cluster-aligned", offset=at)
                continue
            if self.use(cluster, self.cluster, f"data cluster {index} of {name}", at, "data") \
                    and active:
                self.copied_checks.append((at, cluster, bool(int(entries[index]) >> 63)))

    def _bitmaps(self) -> None:
        payload = self.header.extension(C.EXT_BITMAPS)
        if payload is None or len(payload) < 24:
            return
        count, _reserved, directory_size, directory = struct.unpack_from(">IIQQ", payload)
        if not self.use(directory, directory_size, "the bitmap directory", 0, "metadata"):
            return
        if directory_size > 64 << 20 or directory + directory_size > self.size:
            return
        data = self.f.pread(directory, directory_size, "the bitmap directory")
        position = 0
        for number in range(count):
            if position + _BITMAP_ENTRY.size > len(data):
                break
            table, size, _flags, _type, _bits, name_size, extra = _BITMAP_ENTRY.unpack_from(
                data, position)
            entries = self._table(table, size, f"the table of bitmap {number}", directory)
            for value in ([] if entries is None else entries.tolist()):
                cluster = value & C.OFFSET_MASK
                if cluster:
                    self.use(cluster, self.cluster, f"a cluster of bitmap {number}", table,
                             "metadata")
            step = _BITMAP_ENTRY.size + extra + name_size
            position += step + (-step % 8)

    # -- comparing ---------------------------------------------------------

    def stored_refcounts(self) -> np.ndarray:
        """The refcount of every cluster of the file, as stored (0 without a block)."""
        bits = self.header.refcount_bits
        per_block = self.cluster * 8 // bits
        stored = np.zeros(self.clusters, dtype=np.uint64)
        if self.reftable is None:
            return stored
        for index, entry in enumerate(self.reftable.tolist()):
            block = entry & C.REFTABLE_OFFSET_MASK
            first = index * per_block
            if not block or block % self.cluster or block + self.cluster > self.size:
                continue
            if first >= self.clusters:
                break
            raw = self.f.pread(block, self.cluster, f"refcount block {index}")
            if bits >= 8:
                values = np.frombuffer(raw, dtype=f">u{bits // 8}").astype(np.uint64)
            else:
                unpacked = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
                weights = (1 << np.arange(bits, dtype=np.uint64))
                values = (unpacked.reshape(-1, bits).astype(np.uint64) * weights).sum(axis=1)
            take = min(per_block, self.clusters - first)
            stored[first : first + take] = values[:take]
        return stored

    def compare(self) -> None:
        report = self.report
        stored = self.stored_refcounts()
        uses = self.uses.astype(np.uint64)
        cluster = self.cluster
        metadata = self.metadata_uses > 0
        overlap = (self.metadata_uses > 1) | (metadata & (self.l2_tables | self.data)) | (
            self.l2_tables & self.data)
        for index in np.flatnonzero(overlap).tolist():
            self.add("qcow2.overlap", f"cluster {index} (at {index * cluster:#x}) is used by "
                     f"more than one kind of structure ({int(self.uses[index])} uses; metadata "
                     f"and L2 tables may not share a cluster with anything else)",
                     offset=index * cluster)
        low = np.flatnonzero(stored < uses)
        for index in low.tolist():
            self.add("qcow2.refcount_low", f"cluster {index} (at {index * cluster:#x}) has "
                     f"refcount {int(stored[index])} but {int(uses[index])} uses",
                     offset=index * cluster)
        high = np.flatnonzero(stored > uses)
        for index in high.tolist():
            self.add("qcow2.leak", f"cluster {index} (at {index * cluster:#x}) has refcount "
                     f"{int(stored[index])} but {int(uses[index])} uses", "leak",
                     offset=index * cluster)
        report.leaks = [Leak(int(i) * cluster, cluster) for i in high.tolist()]
        for at, target, copied in self.copied_checks:
            index = target // cluster
            if index < len(stored) and copied != (int(stored[index]) == 1) and stored[index]:
                self.add("qcow2.copied_flag", f"the entry at {at:#x} says cluster {index} is "
                         f"{'' if copied else 'not '}copied (refcount 1), but its refcount is "
                         f"{int(stored[index])}", offset=at)
        if self.header.dirty:
            self.add("qcow2.dirty", "the dirty bit is set (an unclean shutdown with lazy "
                     "refcounts); 'vhdcore repair' rebuilds what it left and clears it",
                     "warning", offset=72)
        if self.header.corrupt:
            self.add("qcow2.corrupt_bit", "the corrupt bit is set: qemu found an inconsistency "
                     "and marked the image", offset=72)
        self._summaries()
        report.counts.update({
            "cluster_size": cluster,
            "file_clusters": self.clusters,
            "used_clusters": int(np.count_nonzero(self.uses)),
            "leaked_clusters": len(high),
            "refcount_low_clusters": len(low),
        })


def check(path, **options) -> CheckReport:
    """Check a qcow2 image's refcounts and tables; never modifies the file.

    Returns:
        A :class:`~vhdcore.formats.vhd.check.CheckReport` with ``format``
        ``"qcow2"``: the same grading and exit codes as for VHD (0 clean,
        2 corrupt, 3 only leaks).

    Raises:
        OSError: the file cannot be read ("could not check", exit 1).
        FormatError, UnsupportedError, LimitError: the header is no usable
            qcow2 header, or the file is too large to count.
    """
    path = str(path)
    with open_image_file(path) as file:
        run = _Check(path, file)
        run.count()
        run.compare()
    return run.report


__all__ = ["MAX_CHECK_CLUSTERS", "check"]
