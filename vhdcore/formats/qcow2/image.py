"""A qcow2 image opened for reading: a :class:`~vhdcore.disk.virtual.VirtualDisk`.

The guest's bytes come from four places, decided per cluster (or
subcluster) by the L2 tables: the image file (or its external data file),
nowhere (zeros), compressed clusters (inflated on read), or the backing
file, itself any registered format with its own chain. Backing files and
data files are paths an untrusted image wrote, so both are confined by the
chain's :class:`~vhdcore.formats.vhd.chain.ParentPolicy` (CVE-2024-32498:
a data file is as dangerous as a backing file).
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from collections import OrderedDict
from typing import Iterator, List, Optional, Tuple

import numpy as np

from ...disk.extent import DATA, ENCODED, PARENT, ZERO, Extent, append_extent
from ...disk.virtual import ReadOnlyDisk
from ...disk.zeros import zero_fill as _zero_fill
from ...errors import (
    ChainLoopError,
    CorruptImageError,
    LimitError,
    OutOfRangeError,
    ParentNotFoundError,
    UnsafeParentError,
    UnsupportedError,
)
from ...io.imagefile import open_image_file
from ..vhd.chain import ParentPolicy, file_identity
from . import constants as C
from . import header as qcow2_header
from . import tables as T
from .snapshots import read_snapshots

#: Units decoded at a time (bounds the arrays of one step).
CHUNK_UNITS = 1 << 16
#: Inflated compressed clusters kept for reads that take a cluster in pieces.
COMPRESSED_CACHE = 8



class Qcow2Disk(ReadOnlyDisk):
    """A qcow2 image (version 2 or 3), read-only, with its backing chain.

    Attributes:
        path: the image file as given.
        header: the parsed :class:`~vhdcore.formats.qcow2.header.Header`.
        virtual_size: bytes of the virtual disk.
        cluster_size: bytes per cluster.
        backing: the opened backing disk (any format), or ``None``.
        backing_path: where the backing file was found, or ``None``.
        data_path: the external data file, or ``None``.
        snapshots: the internal snapshots (:class:`~.snapshots.Snapshot`).
        notes: remarks gathered while opening (a dirty image, ...).
    """

    format = "qcow2"
    logical_sector_size = 512

    def __init__(self, path, *, allow_parent_dirs=(), allow_symlinks=False,
                 max_chain_depth=None, _policy: Optional[ParentPolicy] = None, _depth: int = 0,
                 _seen=None, **_options):
        # Other open options (consistent, parent_resolver) are VHD's.
        self.path = os.fspath(path)
        self.notes: List[str] = []
        self.backing = None
        self.backing_path: Optional[str] = None
        self.data_path: Optional[str] = None
        self._data_file = None
        self._closed = False
        self._lock = threading.Lock()
        self._inflated: "OrderedDict[int, bytes]" = OrderedDict()
        self._file = open_image_file(self.path, lock="shared")
        try:
            if _policy is None:
                _policy = ParentPolicy.for_leaf(
                    self.path, allow_parent_dirs=allow_parent_dirs,
                    allow_symlinks=allow_symlinks, max_depth=max_chain_depth,
                )
            self._policy = _policy
            self._depth = _depth
            self._seen = set(_seen or ()) | {file_identity(self.path)}
            self._load()
        except BaseException:
            self.close()
            raise

    # -- opening

    def _load(self) -> None:
        file = self._file
        self.file_size = file.size()
        self.header = header = qcow2_header.parse(self._first_cluster(), self.path,
                                                  self.file_size)
        if header.corrupt:
            raise CorruptImageError(
                f"{self.path}: qcow2 image is marked corrupt (incompatible feature bit 1 at "
                f"0x48); repair it first with 'qemu-img check -r all'"
            )
        if header.dirty:
            self.notes.append("the image is dirty (not closed cleanly); its refcounts may "
                              "be stale, which does not affect reading")
        self.virtual_size = header.size
        self.cluster_size = header.cluster_size
        data_size = self.file_size
        if header.incompatible_features & C.INCOMPAT_DATA_FILE:
            data_size = self._open_data_file(header)
        self._data = self._data_file if self._data_file is not None else file
        self._data_size = data_size
        self._tables = T.Tables(file, header, self.file_size, data_size,
                                external_data=self._data_file is not None)
        self.snapshots = read_snapshots(file, header, self.file_size) if header.nb_snapshots else []
        if header.backing_file:
            self._open_backing(header)

    def _first_cluster(self) -> bytes:
        """The header's cluster (its extensions and backing name live there)."""
        head = self._file.pread(0, min(self.file_size, C.V3_HEADER_SIZE), "qcow2 header")
        bits = struct.unpack_from(">I", head, 20)[0] if len(head) >= 24 else C.MIN_CLUSTER_BITS
        bits = min(max(bits, C.MIN_CLUSTER_BITS), C.MAX_CLUSTER_BITS)
        return self._file.pread(0, min(self.file_size, 1 << bits), "qcow2 header cluster")

    def _confined(self, name: str, what: str) -> str:
        """The path of a file the image names, once the chain's policy allows it."""
        if name.startswith("json:") or "://" in name:
            raise UnsupportedError(
                f"{self.path}: qcow2 {what} {name!r} is a qemu protocol name, not a file; "
                f"vhdcore opens only files"
            )
        path = name if os.path.isabs(name) else os.path.join(os.path.dirname(self.path), name)
        if not os.path.lexists(path):
            raise ParentNotFoundError(f"{self.path}: qcow2 {what} {name!r} not found ({path})")
        reason = self._policy.refusal(path)
        if reason is not None:
            raise UnsafeParentError(f"{self.path}: refused qcow2 {what} {name!r}: {reason}")
        if not os.path.isfile(path):
            raise UnsafeParentError(
                f"{self.path}: refused qcow2 {what} {name!r}: {path} is not a regular file"
            )
        if file_identity(path) in self._seen:
            raise ChainLoopError(
                f"{self.path}: qcow2 {what} {path} is already part of this chain (a loop)"
            )
        return path

    def _open_data_file(self, header) -> int:
        name = header.data_file
        if not name:
            raise UnsupportedError(
                f"{self.path}: qcow2 image keeps its data in an external data file but does "
                f"not name it (no data file header extension)"
            )
        self.data_path = self._confined(name, "external data file")
        self._data_file = open_image_file(self.data_path, lock="shared")
        # A backing file may not be the data file either.
        self._seen.add(file_identity(self.data_path))
        return self._data_file.size()

    def _open_backing(self, header) -> None:
        from ...disk.sources import detect_format
        from .. import get

        policy = self._policy
        if self._depth + 2 > policy.max_depth:
            raise LimitError(
                f"{self.path}: backing chain is deeper than the limit of "
                f"{policy.max_depth} images"
            )
        path = self._confined(header.backing_file, "backing file")
        if header.backing_format:
            try:
                fmt = get(header.backing_format)
            except UnsupportedError:
                raise UnsupportedError(
                    f"{self.path}: qcow2 backing file {path} is in format "
                    f"{header.backing_format!r}, which vhdcore does not read"
                ) from None
        else:
            # Detected as qemu would probe it; another format's magic is
            # refused by name rather than read as a raw backing disk.
            with open_image_file(path) as file:
                fmt = get(detect_format(file, path))
        options = {"allow_parent_dirs": policy.allowed_dirs,
                   "allow_symlinks": policy.allow_symlinks,
                   "max_chain_depth": policy.max_depth - self._depth - 1}
        if fmt.name == self.format:
            options.update(_policy=policy, _depth=self._depth + 1, _seen=self._seen)
        self.backing = fmt.open(path, **options)
        self.backing_path = path

    # -- the VirtualDisk protocol

    @property
    def files(self) -> List[str]:
        """This image, its data file if any, then the backing chain's files."""
        own = [self.path] + ([self.data_path] if self.data_path else [])
        return own + (list(self.backing.files) if self.backing is not None else [])

    def member_file(self, depth: int):
        """The file holding ``data`` runs at ``depth`` (0: the data file, if any)."""
        if depth == 0:
            return self._data
        if self.backing is not None and depth > 0:
            return self.backing.member_file(depth - 1)
        return None

    def extents(self, offset: int = 0, length: Optional[int] = None) -> List[Extent]:
        if length is None:
            length = self.virtual_size - offset
        self._check_range(offset, length)
        out: List[Extent] = []
        for start, count, state, host, _size in self._runs(offset, length):
            if state == T.DATA:
                append_extent(out, Extent(start, count, DATA, 0, host))
            elif state == T.COMPRESSED:
                append_extent(out, Extent(start, count, ENCODED, 0, -1))
            elif state == T.ZERO:
                append_extent(out, Extent(start, count, ZERO, -1, -1))
            else:
                self._backing_extents(out, start, count)
        return out

    def _backing_extents(self, out: List[Extent], start: int, count: int) -> None:
        inside = self._backing_part(start, count)
        if inside:
            for extent in self.backing.extents(start, inside):
                if extent.depth < 0:
                    append_extent(out, extent)
                    continue
                state = PARENT if extent.state == DATA else extent.state
                append_extent(out, extent._replace(state=state, depth=extent.depth + 1))
        if inside < count:
            append_extent(out, Extent(start + inside, count - inside, ZERO, -1, -1))

    def _backing_part(self, start: int, count: int) -> int:
        """Bytes of ``[start, start + count)`` the backing disk covers (it may be shorter)."""
        if self.backing is None:
            return 0
        return max(0, min(count, self.backing.virtual_size - start))

    def readinto(self, offset: int, buffer) -> int:
        view = memoryview(buffer)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self._check_range(offset, len(view))
        for start, count, state, host, size in self._runs(offset, len(view)):
            piece = view[start - offset : start - offset + count]
            if state == T.DATA:
                self._read_stored(host, piece)
            elif state == T.COMPRESSED:
                self._read_compressed(start, host, size, piece)
            elif state == T.ZERO:
                _zero_fill(piece)
            else:
                inside = self._backing_part(start, count)
                if inside:
                    self.backing.readinto(start, piece[:inside])
                _zero_fill(piece[inside:])
        return len(view)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.backing is not None:
                self.backing.close()
        finally:
            if self._data_file is not None:
                self._data_file.close()
            self._file.close()


    # -- reading

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.virtual_size:
            raise OutOfRangeError(
                f"{self.path}: range {offset}+{length} is outside the disk "
                f"({self.virtual_size} bytes)"
            )

    def _read_stored(self, host: int, piece) -> None:
        """Read a data run; a file that ends inside it (qemu's last partial cluster)
        reads as zeros there, as qemu reads it."""
        stored = max(0, min(len(piece), self._data_size - host))
        if stored:
            self._data.preadinto(host, piece[:stored], "qcow2 data cluster")
        _zero_fill(piece[stored:])

    def _read_compressed(self, start: int, host: int, size: int, piece) -> None:
        cluster = self.cluster_size
        position, end = start, start + len(piece)
        while position < end:
            within = position % cluster
            count = min(end - position, cluster - within)
            plain = self._inflate(host, size)
            piece[position - start : position - start + count] = plain[within : within + count]
            position += count

    def _inflate(self, host: int, size: int) -> bytes:
        """The cluster whose compressed data is ``size`` bytes at ``host``."""
        with self._lock:
            plain = self._inflated.get(host)
            if plain is not None:
                self._inflated.move_to_end(host)
                return plain
        stored = min(size, self.file_size - host)
        data = self._file.pread(host, stored, "qcow2 compressed cluster")
        plain = self._decompress(data, host)
        with self._lock:
            self._inflated[host] = plain
            while len(self._inflated) > COMPRESSED_CACHE:
                self._inflated.popitem(last=False)
        return plain

    def _decompress(self, data: bytes, host: int) -> bytes:
        cluster = self.cluster_size
        kind = self.header.compression
        reader, errors = None, (zlib.error,)
        if self.header.compression_type == C.COMPRESSION_ZSTD:
            reader, errors = _zstd_reader(self.path)
        try:
            if reader is not None:
                plain = reader(io.BytesIO(data)).read(cluster)
            else:
                plain = zlib.decompressobj(-15).decompress(data, cluster)
        except errors as exc:
            raise CorruptImageError(
                f"{self.path}: qcow2 compressed cluster at {host:#x} does not decompress "
                f"({kind}): {exc}"
            ) from None
        if len(plain) != cluster:
            raise CorruptImageError(
                f"{self.path}: qcow2 compressed cluster at {host:#x} decompresses to "
                f"{len(plain)} bytes, not a cluster ({cluster}, {kind})"
            )
        return plain

    def _runs(self, offset: int, length: int) -> Iterator[Tuple[int, int, int, int, int]]:
        """``(start, count, state, host, size)`` runs tiling ``[offset, offset + length)``.

        ``host`` is where a data run's first byte lies, or the compressed
        cluster's data (``size`` bytes) for a compressed run.
        """
        if length <= 0:
            return
        tables = self._tables
        unit = tables.unit_size
        per_table = tables.units_per_table
        end = offset + length
        position = offset // unit
        last = -(-end // unit)
        pending = None
        while position < last:
            table = position // per_table
            table_end = min(last, (table + 1) * per_table)
            if not tables.table_allocated(table):
                stop = min(last, tables.next_allocated_table(table) * per_table)
                runs = [(position, stop - position, T.UNALLOCATED, 0, 0)]
            else:
                stop = min(table_end, position + CHUNK_UNITS)
                runs = _unit_runs(tables.units(position, stop - position), unit)
            for first, units, state, host, size in runs:
                start = max(first * unit, offset)
                count = min((first + units) * unit, end) - start
                if state == T.DATA:
                    host += start - first * unit
                if pending is not None and _continues(pending, start, state, host):
                    pending = (pending[0], pending[1] + count, state, pending[3], size)
                    continue
                if pending is not None:
                    yield pending
                pending = (start, count, state, host, size)
            position = stop
        if pending is not None:
            yield pending


def _continues(run, start: int, state: int, host: int) -> bool:
    """Whether a run starting at ``start`` extends ``run`` (same state, same place)."""
    if run[0] + run[1] != start or run[2] != state:
        return False
    if state == T.DATA:
        return run[3] + run[1] == host
    if state == T.COMPRESSED:
        return run[3] == host
    return True


def _unit_runs(units: T.Units, unit: int):
    """``(first_unit, count, state, host, size)`` for each run of like units."""
    state, host, size = units.state, units.host, units.length
    n = len(state)
    breaks = np.ones(n, dtype=bool)
    if n > 1:
        same = state[1:] == state[:-1]
        data = state[1:] == T.DATA
        same &= ~data | (host[1:] == host[:-1] + unit)
        compressed = state[1:] == T.COMPRESSED
        same &= ~compressed | (host[1:] == host[:-1])
        breaks[1:] = ~same
    starts = np.flatnonzero(breaks)
    stops = np.append(starts[1:], n)
    first = units.first
    return [
        (first + s, e - s, int(state[s]), int(host[s]), int(size[s]))
        for s, e in zip(starts.tolist(), stops.tolist())
    ]


def _zstd_reader(name):
    """``(reader(stream), its error class)`` for zstd, or a clear refusal."""
    try:
        import zstandard
    except ImportError:
        raise UnsupportedError(
            f"{name}: qcow2 image is compressed with zstd, which needs the zstandard "
            f"package: pip install vhdcore[zstd]"
        ) from None
    decompressor = zstandard.ZstdDecompressor()
    return (lambda stream: decompressor.stream_reader(stream, read_across_frames=False),
            zstandard.ZstdError)


def open(path, **options) -> Qcow2Disk:  # noqa: A001 - the registry's verb
    """Open a qcow2 image read-only, with its backing chain and data file."""
    return Qcow2Disk(path, **options)
