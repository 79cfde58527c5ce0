"""Deflating clusters for compressed qcow2 output, on every core, in order.

qemu stores a compressed cluster as raw deflate (no zlib header) with a
4 KiB window (``inflateInit2(-12)``): a stream using a larger window may
refer further back than qemu's inflate keeps, so we compress with window
bits -12 too. zlib and isa-l release the GIL while they work, so a thread
pool keeps every core busy; :class:`OrderedDeflater` hands the results
back in submission order, which is the disk's order.
"""

from __future__ import annotations

import collections
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional

#: qemu's deflate window (``-12``: raw deflate, 4 KiB window).
WINDOW_BITS = -12
#: Bytes handed to one task (several small clusters, or one large one).
BATCH_BYTES = 1 << 20

try:  # isa-l's deflate is several times faster than zlib's at a similar ratio
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - isal is optional
    _isal = None


def _compressor() -> Callable[[], object]:
    if _isal is not None:
        return lambda: _isal.compressobj(_isal.ISAL_DEFAULT_COMPRESSION, _isal.DEFLATED,
                                         WINDOW_BITS)
    return lambda: zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, WINDOW_BITS)


#: Makes a fresh raw-deflate compressor (isa-l if installed, else zlib).
new_compressor = _compressor()
BACKEND = "isal" if _isal is not None else "zlib"


def deflate_clusters(data: bytes, cluster_size: int) -> List[Optional[bytes]]:
    """Each cluster of ``data`` deflated, or ``None`` where deflate saves nothing.

    qemu stores a cluster compressed only when it takes less than a
    cluster; otherwise the cluster is stored as it is.
    """
    out: List[Optional[bytes]] = []
    view = memoryview(data)
    for start in range(0, len(view), cluster_size):
        engine = new_compressor()
        packed = engine.compress(view[start : start + cluster_size]) + engine.flush()
        out.append(packed if len(packed) < cluster_size else None)
    return out


class OrderedDeflater:
    """Deflate runs of clusters on a thread pool; results come back in order.

    :meth:`submit` queues a run (its bytes are copied: the caller's buffer
    is reused); each finished run, oldest first, goes to ``store(first,
    data, packed)`` once more than ``2 * workers`` are in flight, and
    :meth:`drain` stores the rest.
    """

    def __init__(self, cluster_size: int, store: Callable, workers: Optional[int] = None):
        self.cluster_size = cluster_size
        self.store = store
        self.workers = workers or os.cpu_count() or 1
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="vhdcore-deflate")
        self.pending: collections.deque = collections.deque()

    def submit(self, first_cluster: int, view) -> None:
        step = max(1, BATCH_BYTES // self.cluster_size) * self.cluster_size
        for start in range(0, len(view), step):
            data = bytes(view[start : start + step])
            future = self.pool.submit(deflate_clusters, data, self.cluster_size)
            self.pending.append((first_cluster + start // self.cluster_size, data, future))
            while len(self.pending) > 2 * self.workers:
                self._store_oldest()

    def _store_oldest(self) -> None:
        first, data, future = self.pending.popleft()
        self.store(first, data, future.result())

    def drain(self) -> None:
        while self.pending:
            self._store_oldest()

    def close(self) -> None:
        for _first, _data, future in self.pending:
            future.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True)
