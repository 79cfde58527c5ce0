"""The qcow2 sink conversion writes: version 3, 16-bit refcounts, zlib compression.

On a seekable file the layout is header, data clusters in disk order,
then the L2 tables, the L1 table, the refcount table and its blocks: the
allocation is learnt as the data goes by and the metadata, sized for what
was written, lands at the end. Zero clusters are never allocated; inside
an allocated cluster, aligned zero stretches of
:data:`~vhdcore.disk.zeros.SPARSE_GRANULARITY` are left as holes.

On a pipe the metadata must come first, so the caller hands over the
clusters holding data (a pre-pass over a seekable source) and the layout
is header, L1, refcount table and blocks, L2 tables, data clusters.

With ``compress`` every cluster is deflated (:mod:`.deflate`) and stored
compressed when that saves space; compressed clusters are packed byte to
byte, several sharing a host cluster, each host cluster counting one
reference per compressed cluster touching it, as qemu-img does.
"""

from __future__ import annotations

import array
from typing import Dict, Iterable, Optional

from ..._backend import kernels
from ...disk.writers import Writer
from ...disk.zeros import SPARSE_GRANULARITY, nonzero_runs
from ...errors import ConversionError, LimitError
from . import constants as C
from . import metadata as M
from .header import Header

#: What a writer is handed at once: pieces never cross a multiple of this
#: (a multiple of every cluster size), so a cluster is split only where a
#: data run starts or ends inside it.
PIECE_UNIT = 4 << 20
DEFAULT_CLUSTER_SIZE = 1 << C.DEFAULT_CLUSTER_BITS


def _ceil(value: int, unit: int) -> int:
    return -(-value // unit)


class Qcow2Writer(Writer):
    """A qcow2 image in virtual order.

    Args:
        out: the destination (ImageFile, or StreamWriter with ``plan``).
        cluster_size: bytes per cluster (power of two, 512 B to 2 MiB).
        compress: deflate clusters (file output only).
        plan: for a stream, the sorted indices of the clusters holding data.
        workers: deflate threads (default: one per CPU).
    """

    format = "qcow2"
    unit = PIECE_UNIT

    def __init__(self, out, cluster_size: int = DEFAULT_CLUSTER_SIZE, *, compress: bool = False,
                 plan: Optional[Iterable[int]] = None, workers: Optional[int] = None):
        super().__init__(out)
        self.name = getattr(out, "name", None) or getattr(out, "path", "output")
        self.cluster_size = cluster_size
        self.cluster_bits = cluster_size.bit_length() - 1
        self.l2_entries = M.l2_entries(cluster_size)
        self.compress = compress
        self.plan = None if plan is None else list(plan)
        if self.plan is not None and compress:
            raise ConversionError(f"{self.name}: compressed qcow2 cannot be planned for a stream")
        self.tables: Dict[int, array.array] = {}
        self.refcounts = array.array("H", [1])  # cluster 0: the header
        self.cursor = cluster_size  # the next free byte, on a file
        self.end_cluster = 0  # one past the last data cluster stored
        self.clusters_allocated = 0
        self.pending: Optional[bytearray] = None
        self.pending_cluster = -1
        self.placement: Optional[M.Placement] = None
        self._compressed_shift = 62 - (self.cluster_bits - 8)
        self.deflater = None
        if compress:
            from .deflate import OrderedDeflater

            self.deflater = OrderedDeflater(cluster_size, self._store_deflated, workers)

    # -- the Sink protocol
    def begin(self, virtual_size):
        super().begin(virtual_size)
        if virtual_size is not None:
            self._check_size(virtual_size)
        if self.plan is not None:
            if virtual_size is None:
                raise ConversionError(f"{self.name}: a planned qcow2 layout needs the disk size")
            self._write_planned_metadata(virtual_size)

    def data(self, offset, view):
        before = self.bytes_written
        size = self.cluster_size
        end = offset + len(view)
        position = offset
        if position % size:
            cut = min(end, position - position % size + size)
            self._merge(position, view[: cut - offset])
            position = cut
        whole_end = end - end % size
        if whole_end > position:
            self._flush_pending()
            part = view[position - offset : whole_end - offset]
            for start, stop in nonzero_runs(part, size, position):
                self._store((position + start) // size, part[start:stop])
            position = whole_end
        if position < end:
            self._merge(position, view[position - offset :])
        return self.bytes_written - before

    def finish(self, virtual_size):
        try:
            self._flush_pending()
            if self.deflater is not None:
                self.deflater.drain()
        finally:
            if self.deflater is not None:
                self.deflater.close()
        self.behind.kick()
        self._check_size(virtual_size)
        excess = self.end_cluster * self.cluster_size - virtual_size
        if excess > 0:  # the last cluster runs past the disk's end
            self.bytes_written -= excess
        if self.plan is None:
            self._write_metadata(virtual_size)
        end = self.placement.end * self.cluster_size
        self.out.truncate(end)
        return end

    # -- clusters
    def _check_size(self, virtual_size: int) -> None:
        if virtual_size > C.MAX_VIRTUAL_SIZE:
            raise LimitError(
                f"{self.name}: a qcow2 image holds at most {C.MAX_VIRTUAL_SIZE} bytes; "
                f"the disk has {virtual_size}"
            )
        M.l1_size_for(virtual_size, self.cluster_size, self.name)

    def _merge(self, offset: int, piece) -> None:
        """Gather a part of a cluster; the cluster is stored once it is complete."""
        cluster = offset // self.cluster_size
        if cluster != self.pending_cluster:
            self._flush_pending()
            if kernels.is_zero(piece):
                return
            self.pending = bytearray(self.cluster_size)
            self.pending_cluster = cluster
        within = offset % self.cluster_size
        self.pending[within : within + len(piece)] = piece

    def _flush_pending(self) -> None:
        if self.pending is not None:
            pending, cluster = self.pending, self.pending_cluster
            self.pending, self.pending_cluster = None, -1
            if not kernels.is_zero(pending):
                self._store(cluster, memoryview(pending))

    def _store(self, cluster: int, view) -> None:
        """Store whole non-zero clusters from ``cluster`` on."""
        if self.deflater is not None:
            self.deflater.submit(cluster, view)
        else:
            self._write_plain(cluster, view)

    def _write_plain(self, cluster: int, view) -> None:
        size = self.cluster_size
        count = len(view) // size
        if self.plan is not None:
            host = self._planned_host(cluster, count)
        else:
            host = _ceil(self.cursor, size) * size
            for index in range(count):
                self._set_entry(cluster + index, (host + index * size) | C.COPIED)
            self.refcounts.extend([1] * count)
            self.cursor = host + count * size
        if size > SPARSE_GRANULARITY:
            for start, stop in nonzero_runs(view, SPARSE_GRANULARITY):
                self._put(host + start, view[start:stop])
        else:
            self._put(host, view)
        self._stored(cluster, count)

    def _stored(self, cluster: int, count: int) -> None:
        self.clusters_allocated += count
        self.bytes_written += count * self.cluster_size
        self.end_cluster = cluster + count

    def _planned_host(self, cluster: int, count: int) -> int:
        """Where the planned clusters ``cluster ..`` go (consecutive, as planned)."""
        hosts = [self._entry(cluster + index) for index in range(count)]
        if not all(hosts):
            missing = cluster + next(i for i, host in enumerate(hosts) if not host)
            raise ConversionError(
                f"the source changed during the conversion: cluster {missing} was all zeros "
                f"in the first pass and holds data now"
            )
        return hosts[0] & C.OFFSET_MASK

    def _store_deflated(self, first: int, data: bytes, packed) -> None:
        """Pack deflated clusters byte to byte; an incompressible one goes plain."""
        size, bits = self.cluster_size, self.cluster_bits
        view = memoryview(data)
        blob = bytearray()
        start = self.cursor
        for index, compressed in enumerate(packed):
            cluster = first + index
            if compressed is None:
                self._put_blob(start, blob)
                blob = bytearray()
                self._write_plain(cluster, view[index * size : (index + 1) * size])
                start = self.cursor
                continue
            position = start + len(blob)
            if self._refcount(position >> bits) >= M.MAX_REFCOUNT:
                self._put_blob(start, blob)
                blob = bytearray()
                start = position = _ceil(position, size) * size
            last = position + len(compressed) - 1
            sectors = (last >> 9) - (position >> 9)
            self._set_entry(cluster, C.COMPRESSED | sectors << self._compressed_shift | position)
            for host_cluster in range(position >> bits, (last >> bits) + 1):
                self._add_reference(host_cluster)
            blob += compressed
            self._stored(cluster, 1)
        self._put_blob(start, blob)

    def _put_blob(self, start: int, blob: bytearray) -> None:
        if blob:
            self._put(start, blob)
            self.cursor = start + len(blob)

    def _refcount(self, cluster: int) -> int:
        return self.refcounts[cluster] if cluster < len(self.refcounts) else 0

    def _add_reference(self, cluster: int) -> None:
        if cluster >= len(self.refcounts):
            self.refcounts.extend([0] * (cluster + 1 - len(self.refcounts)))
        self.refcounts[cluster] += 1

    # -- tables
    def _table(self, l1_index: int) -> array.array:
        table = self.tables.get(l1_index)
        if table is None:
            if (l1_index + 1) * 8 > C.MAX_L1_BYTES:
                raise LimitError(
                    f"{self.name}: the disk is larger than a qcow2 with {self.cluster_size}-byte "
                    f"clusters can address within qemu's L1 limit; use larger clusters"
                )
            table = self.tables[l1_index] = array.array("Q", bytes(self.cluster_size))
        return table

    def _set_entry(self, cluster: int, value: int) -> None:
        self._table(cluster // self.l2_entries)[cluster % self.l2_entries] = value

    def _entry(self, cluster: int) -> int:
        table = self.tables.get(cluster // self.l2_entries)
        return 0 if table is None else table[cluster % self.l2_entries]

    # -- metadata
    def _write_metadata(self, virtual_size: int) -> None:
        """File layout: the metadata after the data, written data -> refcounts -> L2 -> L1
        -> header."""
        size = self.cluster_size
        l1_size = M.l1_size_for(virtual_size, size, self.name)
        l1_clusters = max(1, _ceil(l1_size * 8, size))
        first = _ceil(self.cursor, size)
        blocks, table = M.refcount_room(first + len(self.tables) + l1_clusters, size, self.name)
        self.placement = placement = M.place(
            ["l2", "l1", "reftable", "refblocks"], first, list(self.tables), l1_clusters,
            blocks, table,
        )
        self.refcounts.extend([1] * (placement.end - len(self.refcounts)))
        reftable, refblocks = M.encode_refcounts(self.refcounts, placement, size)
        self.out.pwrite(placement.refblocks * size, refblocks)
        self.out.pwrite(placement.reftable * size, reftable)
        for index in sorted(self.tables):
            self.out.pwrite(placement.l2[index] * size, M.big_endian(self.tables[index]))
        self.out.pwrite(placement.l1 * size, M.encode_l1(placement, l1_size, size))
        self.out.pwrite(0, self._header(virtual_size, l1_size))

    def _write_planned_metadata(self, virtual_size: int) -> None:
        """Stream layout: header, L1, refcounts and L2 tables first, then the data."""
        size = self.cluster_size
        l1_size = M.l1_size_for(virtual_size, size, self.name)
        l1_clusters = max(1, _ceil(l1_size * 8, size))
        l2_indices = sorted({cluster // self.l2_entries for cluster in self.plan})
        other = 1 + l1_clusters + len(l2_indices) + len(self.plan)
        blocks, table = M.refcount_room(other, size, self.name)
        placement = M.place(["l1", "reftable", "refblocks", "l2"], 1, l2_indices, l1_clusters,
                            blocks, table)
        data_start = placement.end
        for rank, cluster in enumerate(self.plan):
            self._set_entry(cluster, ((data_start + rank) * size) | C.COPIED)
        placement.end = data_start + len(self.plan)
        self.placement = placement
        refcounts = array.array("H", [1]) * placement.end
        reftable, refblocks = M.encode_refcounts(refcounts, placement, size)
        self.out.pwrite(0, self._header(virtual_size, l1_size))
        self.out.pwrite(placement.l1 * size, M.encode_l1(placement, l1_size, size))
        self.out.pwrite(placement.reftable * size, reftable)
        self.out.pwrite(placement.refblocks * size, refblocks)
        for index in l2_indices:
            self.out.pwrite(placement.l2[index] * size, M.big_endian(self.tables[index]))

    def _header(self, virtual_size: int, l1_size: int) -> bytes:
        placement = self.placement
        return Header(
            cluster_bits=self.cluster_bits,
            size=virtual_size,
            l1_size=l1_size,
            l1_table_offset=placement.l1 * self.cluster_size,
            refcount_table_offset=placement.reftable * self.cluster_size,
            refcount_table_clusters=placement.reftable_clusters,
        ).pack()


__all__ = ["DEFAULT_CLUSTER_SIZE", "PIECE_UNIT", "Qcow2Writer"]
