"""Reading a source ahead of its consumer, with one or several reads in flight.

The consumers of a source (conversion, digest) check and write one piece
while the next ones are read: the reads, the hashing and the writes all
spend their time in system calls, kernels and OpenSSL, which release the
GIL, so they overlap. One read-ahead thread took a third off a conversion
writing 1 GiB from the page cache. A disk that is not cached, or a
network file system, answers faster with several requests outstanding
(qemu-img keeps 8), so :class:`Prefetch` can hand the reads of a seekable
source to a pool of threads (``readers``) while still yielding the pieces
in order.
"""

from __future__ import annotations

import collections
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

from .sources import Source


class Prefetch:
    """Read a source ahead on background threads, into a small ring of buffers.

    Iterating yields ``(offset, length, view)`` in order (``view`` is
    ``None`` for zero runs). A piece's buffer goes back to the ring when the
    consumer asks for the next one, so a piece stays valid while it is
    processed. Errors in the readers are raised in the consumer; closing
    (or leaving the ``with`` block) stops them.

    Args:
        source: the :class:`~vhdcore.disk.sources.Source`.
        unit: passed to :meth:`Source.pieces`.
        buffer_size: bytes per buffer.
        count: buffers in the ring (memory = ``count * buffer_size``); at
            least ``readers + 2`` are kept, so every reader has one.
        hasher: a :class:`vhdcore.ops.digest.Hasher` fed in order on the
            read-ahead thread (zero runs from the shared zero buffer).
        readers: reads kept in flight at once. With more than one (and a
            seekable source) a pool of that many threads reads the pieces
            :meth:`Source.plan` lays out; a stream is always read by one.
    """

    _END = object()

    def __init__(
        self,
        source: Source,
        unit: int,
        buffer_size: int,
        count: int = 4,
        hasher=None,
        readers: int = 1,
    ):
        self.source = source
        self.unit = unit
        self.hasher = hasher
        self.readers = readers if readers > 1 and source.seekable else 1
        count = max(count, self.readers + 2) if self.readers > 1 else count
        self.free = queue.Queue()
        for _ in range(count):
            self.free.put(memoryview(bytearray(buffer_size)))
        self.buffer_size = buffer_size
        # Bounded, so a disk of a million holes cannot queue a million runs.
        self.ready = queue.Queue(maxsize=1024)
        self.stopping = threading.Event()
        target = self._read if self.readers == 1 else self._read_parallel
        self.thread = threading.Thread(target=target, name="vhdcore-prefetch", daemon=True)
        self.thread.start()

    def _next_buffer(self):
        while True:
            try:
                self._current = self.free.get(timeout=0.05)
                return self._current
            except queue.Empty:
                if self.stopping.is_set():
                    raise _Stopped from None

    def _put(self, item) -> None:
        while True:
            try:
                self.ready.put(item, timeout=0.05)
                return
            except queue.Full:
                if self.stopping.is_set():
                    raise _Stopped from None

    def _deliver(self, offset, length, view, buffer) -> bool:
        """Hash a piece (in order) and queue it; ``False`` once asked to stop."""
        hasher = self.hasher
        if view is None:
            if hasher is not None:
                # Hashing a long zero run takes a while (0.5 s/GiB): in
                # steps, so a stop request is noticed.
                left = length
                while left:
                    step = min(left, 1 << 28)
                    hasher.zeros(step)
                    left -= step
                    if self.stopping.is_set():
                        return False
        elif hasher is not None:
            hasher.update(view)
        self._put((offset, length, view, buffer))
        return True

    def _read(self):
        try:
            for offset, length, view in self.source.pieces(self._next_buffer, self.unit):
                if self.stopping.is_set():
                    return
                if not self._deliver(offset, length, view, None if view is None else self._current):
                    return
            self._put(self._END)
        except _Stopped:
            return
        except BaseException as exc:  # handed to the consumer, raised there
            self._fail(exc)

    def _read_parallel(self):
        """Lay the pieces out here, read them on a pool, deliver them in order."""
        source = self.source
        inflight = collections.deque()
        pool = ThreadPoolExecutor(self.readers, thread_name_prefix="vhdcore-read")

        def finish_oldest() -> bool:
            offset, length, view, buffer, future = inflight.popleft()
            if future is not None:
                future.result()
            return self._deliver(offset, length, view, buffer)

        try:
            for offset, length, is_data in source.plan(self.unit, self.buffer_size):
                if self.stopping.is_set():
                    return
                if not is_data:
                    inflight.append((offset, length, None, None, None))
                else:
                    buffer = self._next_buffer()
                    view = buffer[:length]
                    future = pool.submit(source.readinto, offset, view)
                    inflight.append((offset, length, view, buffer, future))
                while len(inflight) > self.readers or (inflight and inflight[0][4] is None):
                    if not finish_oldest():
                        return
            while inflight:
                if not finish_oldest():
                    return
            self._put(self._END)
        except _Stopped:
            return
        except BaseException as exc:
            self._fail(exc)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _fail(self, exc: BaseException) -> None:
        try:
            self._put(exc)
        except _Stopped:
            return

    def __iter__(self):
        held = None
        try:
            while True:
                item = self.ready.get()
                if held is not None:
                    self.free.put(held)
                    held = None
                if item is self._END:
                    return
                if isinstance(item, BaseException):
                    raise item
                held = item[3]
                yield item[:3]
        finally:
            self.close()

    def close(self) -> None:
        """Stop the readers and wait for them."""
        self.stopping.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            # The reader notices within one buffer wait (50 ms) or one piece;
            # one blocked on a silent pipe is a daemon and dies with the process.
            self.thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class _Stopped(Exception):
    """The consumer went away; the reader thread ends quietly."""


__all__ = ["Prefetch"]
