"""The qcow2 header and its extensions: parsed with every field bounded, and packed.

A qcow2 file starts with a big-endian header (72 bytes in version 2, at
least 104 in version 3), then a list of typed extensions (backing format,
feature names, bitmaps, external data file, ...) ending with a zero type,
then optionally the backing file's name; all of it inside the first
cluster. :func:`parse` refuses, by name, what we cannot read safely
(encryption, unknown incompatible features) and every count or offset that
would make a reader allocate or seek without bound, before anything is
allocated; :meth:`Header.pack` writes the same structure back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Tuple

from ...errors import FormatError, LimitError, UnsupportedError
from . import constants as C

# magic, version, backing_file_offset, backing_file_size, cluster_bits, size,
# crypt_method, l1_size, l1_table_offset, refcount_table_offset,
# refcount_table_clusters, nb_snapshots, snapshots_offset
_V2 = struct.Struct(">4sIQIIQIIQQIIQ")
# incompatible, compatible, autoclear features, refcount_order, header_length
_V3 = struct.Struct(">QQQII")
_EXTENSION = struct.Struct(">II")


@dataclass
class Header:
    """Every field of a qcow2 header, its extensions and the backing file name.

    ``extensions`` keeps every extension as ``(type, payload)`` in file
    order, so an image we rewrite keeps the ones we do not interpret; the
    properties below decode the ones we do.
    """

    version: int = 3
    cluster_bits: int = C.DEFAULT_CLUSTER_BITS
    size: int = 0
    crypt_method: int = C.CRYPT_NONE
    l1_size: int = 0
    l1_table_offset: int = 0
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = C.DEFAULT_REFCOUNT_ORDER
    header_length: int = C.V3_WRITTEN_HEADER_SIZE
    compression_type: int = C.COMPRESSION_ZLIB
    backing_file: Optional[str] = None
    extensions: List[Tuple[int, bytes]] = field(default_factory=list)

    # -- derived sizes
    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & C.INCOMPAT_EXTL2)

    @property
    def l2_entry_size(self) -> int:
        """Bytes per L2 entry: 8, or 16 with extended L2 (entry plus subcluster bitmap)."""
        return 16 if self.extended_l2 else 8

    @property
    def l2_entries(self) -> int:
        """Entries per L2 table (an L2 table is one cluster)."""
        return self.cluster_size // self.l2_entry_size

    @property
    def subcluster_size(self) -> int:
        return self.cluster_size // C.SUBCLUSTERS if self.extended_l2 else self.cluster_size

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def refcount_entries(self) -> int:
        """Refcounts per refcount block (a block is one cluster)."""
        return self.cluster_size * 8 // self.refcount_bits

    @property
    def l1_needed(self) -> int:
        """L1 entries a disk of this size needs: one per L2 table's span."""
        span = self.cluster_size * self.l2_entries
        return -(-self.size // span)

    @property
    def dirty(self) -> bool:
        return bool(self.incompatible_features & C.INCOMPAT_DIRTY)

    @property
    def corrupt(self) -> bool:
        return bool(self.incompatible_features & C.INCOMPAT_CORRUPT)

    @property
    def lazy_refcounts(self) -> bool:
        return bool(self.compatible_features & C.COMPAT_LAZY_REFCOUNTS)

    @property
    def compression(self) -> str:
        return C.COMPRESSION_NAMES.get(self.compression_type, str(self.compression_type))

    # -- decoded extensions
    def extension(self, kind: int) -> Optional[bytes]:
        for found, payload in self.extensions:
            if found == kind:
                return payload
        return None

    @property
    def backing_format(self) -> Optional[str]:
        payload = self.extension(C.EXT_BACKING_FORMAT)
        return None if payload is None else payload.decode("utf-8", "replace")

    @property
    def data_file(self) -> Optional[str]:
        """The external data file's name, when the image keeps its data in one."""
        payload = self.extension(C.EXT_DATA_FILE)
        return None if payload is None else payload.decode("utf-8", "replace")

    @property
    def feature_names(self) -> Dict[Tuple[int, int], str]:
        """``{(kind, bit): name}`` from the feature name table (kind 0 incompatible,
        1 compatible, 2 autoclear)."""
        payload = self.extension(C.EXT_FEATURE_TABLE) or b""
        names = {}
        for start in range(0, len(payload) - 47, 48):
            kind, bit = payload[start], payload[start + 1]
            names[(kind, bit)] = payload[start + 2 : start + 48].rstrip(b"\0").decode(
                "utf-8", "replace"
            )
        return names

    def with_changes(self, **changes) -> "Header":
        return replace(self, **changes)

    # -- writing
    def pack(self) -> bytes:
        """The header, its extensions (end marker included) and the backing name.

        ``backing_file`` is placed right after the extensions and the
        offset and size fields are set from it; the result must fit in the
        first cluster.
        """
        body = bytearray()
        if self.version >= 3:
            length = self.header_length
            fixed = _V3.pack(
                self.incompatible_features,
                self.compatible_features,
                self.autoclear_features,
                self.refcount_order,
                length,
            )
            tail = bytes([self.compression_type]) if length > C.V3_HEADER_SIZE else b""
            body += fixed + tail
            body += bytes(length - C.V2_HEADER_SIZE - len(body))
        else:
            length = C.V2_HEADER_SIZE
        extensions = bytearray()
        for kind, payload in self.extensions:
            extensions += _EXTENSION.pack(kind, len(payload)) + payload
            extensions += bytes(-len(payload) % 8)
        extensions += _EXTENSION.pack(C.EXT_END, 0)
        backing = (self.backing_file or "").encode("utf-8")
        backing_offset = length + len(extensions) if backing else 0
        head = _V2.pack(
            C.MAGIC,
            self.version,
            backing_offset,
            len(backing),
            self.cluster_bits,
            self.size,
            self.crypt_method,
            self.l1_size,
            self.l1_table_offset,
            self.refcount_table_offset,
            self.refcount_table_clusters,
            self.nb_snapshots,
            self.snapshots_offset,
        )
        out = head + bytes(body) + bytes(extensions) + backing
        if len(out) > self.cluster_size:
            raise LimitError(
                f"qcow2 header, extensions and backing name take {len(out)} bytes, "
                f"more than one cluster ({self.cluster_size})"
            )
        return out


def _feature_list(bits: int, kind: int, names: Dict[Tuple[int, int], str]) -> str:
    return ", ".join(
        names.get((kind, bit), f"bit {bit}") for bit in range(64) if bits >> bit & 1
    )


def parse(data: bytes, name: str, file_size: Optional[int] = None) -> Header:
    """Parse and bound a header from the first bytes of a file (one cluster or more).

    Args:
        data: the file's first bytes: at least the header; the extensions
            and backing name are read if they lie within ``data``.
        name: the file, for messages.
        file_size: the file's length; when given, the tables must lie inside it.

    Raises:
        FormatError: not a qcow2 header, or a field out of its range.
        UnsupportedError: encryption, an unknown incompatible feature, or a
            version other than 2 and 3.
        LimitError: a table larger than qemu allows.
    """
    if len(data) < C.V2_HEADER_SIZE or data[:4] != C.MAGIC:
        raise FormatError(f"{name}: not a qcow2 image (no QFI\\xfb magic at offset 0)")
    (
        _magic,
        version,
        backing_offset,
        backing_size,
        cluster_bits,
        size,
        crypt_method,
        l1_size,
        l1_offset,
        reftable_offset,
        reftable_clusters,
        nb_snapshots,
        snapshots_offset,
    ) = _V2.unpack_from(data)
    if version not in (2, 3):
        raise UnsupportedError(f"{name}: qcow2 version {version} is not supported (only 2 and 3)")
    if not C.MIN_CLUSTER_BITS <= cluster_bits <= C.MAX_CLUSTER_BITS:
        raise FormatError(
            f"{name}: qcow2 header at 0x14: cluster_bits {cluster_bits} outside "
            f"{C.MIN_CLUSTER_BITS}..{C.MAX_CLUSTER_BITS} (512 B to 2 MiB clusters)"
        )
    cluster = 1 << cluster_bits
    header = Header(
        version=version,
        cluster_bits=cluster_bits,
        size=size,
        crypt_method=crypt_method,
        l1_size=l1_size,
        l1_table_offset=l1_offset,
        refcount_table_offset=reftable_offset,
        refcount_table_clusters=reftable_clusters,
        nb_snapshots=nb_snapshots,
        snapshots_offset=snapshots_offset,
        header_length=C.V2_HEADER_SIZE,
        refcount_order=C.DEFAULT_REFCOUNT_ORDER,
    )
    if version == 3:
        if len(data) < C.V3_HEADER_SIZE:
            raise FormatError(f"{name}: qcow2 version 3 header is truncated ({len(data)} bytes)")
        (
            header.incompatible_features,
            header.compatible_features,
            header.autoclear_features,
            header.refcount_order,
            header.header_length,
        ) = _V3.unpack_from(data, C.V2_HEADER_SIZE)
        length = header.header_length
        if length < C.V3_HEADER_SIZE or length % 8 or length > min(cluster, len(data)):
            raise FormatError(
                f"{name}: qcow2 header at 0x64: header_length {length} is not a multiple "
                f"of 8 between {C.V3_HEADER_SIZE} and the cluster size ({cluster})"
            )
        if length > C.V3_HEADER_SIZE:
            header.compression_type = data[C.V3_HEADER_SIZE]
    _check_features(header, data, name)
    _check_tables(header, name, file_size)
    header.extensions, end = _parse_extensions(data, header, name, backing_offset)
    if backing_offset:
        if backing_size > C.MAX_BACKING_NAME:
            raise LimitError(
                f"{name}: qcow2 backing file name is {backing_size} bytes "
                f"(at most {C.MAX_BACKING_NAME})"
            )
        if backing_offset < end or backing_offset + backing_size > min(cluster, len(data)):
            raise FormatError(
                f"{name}: qcow2 backing file name at {backing_offset}+{backing_size} "
                f"overlaps the header or leaves the first cluster"
            )
        raw = data[backing_offset : backing_offset + backing_size]
        try:
            header.backing_file = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(
                f"{name}: qcow2 backing file name at {backing_offset} is not UTF-8"
            ) from None
    return header


def _check_features(header: Header, data: bytes, name: str) -> None:
    if header.crypt_method:
        kind = {C.CRYPT_AES: "AES", C.CRYPT_LUKS: "LUKS"}.get(
            header.crypt_method, f"method {header.crypt_method}"
        )
        raise UnsupportedError(
            f"{name}: qcow2 image is encrypted ({kind}); vhdcore does not read encrypted images"
        )
    unknown = header.incompatible_features & ~C.KNOWN_INCOMPAT
    if unknown:
        try:
            extensions, _ = _parse_extensions(data, header, name, 0)
            names = Header(extensions=extensions).feature_names
        except FormatError:
            names = {}
        raise UnsupportedError(
            f"{name}: qcow2 image uses incompatible features vhdcore does not know "
            f"({_feature_list(unknown, 0, names)})"
        )
    if header.refcount_order > C.MAX_REFCOUNT_ORDER:
        raise FormatError(
            f"{name}: qcow2 header at 0x60: refcount_order {header.refcount_order} "
            f"above {C.MAX_REFCOUNT_ORDER} (64-bit refcounts)"
        )
    if header.incompatible_features & C.INCOMPAT_COMPRESSION:
        if header.header_length <= C.V3_HEADER_SIZE:
            raise FormatError(
                f"{name}: qcow2 header sets the compression type bit but has no "
                f"compression_type field (header_length {header.header_length})"
            )
        if header.compression_type not in C.COMPRESSION_NAMES:
            raise UnsupportedError(
                f"{name}: qcow2 compression type {header.compression_type} is not supported "
                f"(zlib or zstd)"
            )
    elif header.compression_type != C.COMPRESSION_ZLIB:
        raise FormatError(
            f"{name}: qcow2 compression_type is {header.compression_type} but the "
            f"compression type feature bit is clear"
        )


def _check_tables(header: Header, name: str, file_size: Optional[int]) -> None:
    cluster = header.cluster_size
    if header.size > C.MAX_VIRTUAL_SIZE:
        raise LimitError(
            f"{name}: qcow2 virtual size {header.size} is beyond {C.MAX_VIRTUAL_SIZE} bytes"
        )
    if header.l1_size * 8 > C.MAX_L1_BYTES:
        raise LimitError(
            f"{name}: qcow2 L1 table of {header.l1_size} entries is larger than "
            f"{C.MAX_L1_BYTES >> 20} MiB"
        )
    if header.l1_size < header.l1_needed:
        raise FormatError(
            f"{name}: qcow2 L1 table has {header.l1_size} entries, too few for a "
            f"{header.size}-byte disk ({header.l1_needed} needed)"
        )
    if header.refcount_table_clusters * cluster > C.MAX_REFTABLE_BYTES:
        raise LimitError(
            f"{name}: qcow2 refcount table of {header.refcount_table_clusters} clusters is "
            f"larger than {C.MAX_REFTABLE_BYTES >> 20} MiB"
        )
    if header.nb_snapshots > C.MAX_SNAPSHOTS:
        raise LimitError(
            f"{name}: qcow2 image claims {header.nb_snapshots} snapshots "
            f"(at most {C.MAX_SNAPSHOTS})"
        )
    tables = (
        ("L1 table", header.l1_table_offset, header.l1_size * 8, header.l1_size > 0),
        ("refcount table", header.refcount_table_offset,
         header.refcount_table_clusters * cluster, True),
        ("snapshot table", header.snapshots_offset, 0, header.nb_snapshots > 0),
    )
    for label, offset, length, used in tables:
        if not used:
            continue
        if offset % cluster or offset == 0:
            raise FormatError(
                f"{name}: qcow2 {label} offset {offset:#x} is not a non-zero multiple "
                f"of the cluster size ({cluster})"
            )
        if file_size is not None and offset + length > file_size:
            raise FormatError(
                f"{name}: qcow2 {label} at {offset:#x}+{length} lies beyond the end of "
                f"the file ({file_size} bytes)"
            )
    if header.refcount_table_clusters == 0:
        raise FormatError(f"{name}: qcow2 refcount table has no clusters")


def _parse_extensions(data: bytes, header: Header, name: str, backing_offset: int):
    """``([(type, payload)], end)``: the extensions in order, and where they end."""
    position = header.header_length
    limit = min(len(data), header.cluster_size)
    if backing_offset:
        limit = min(limit, backing_offset)
    extensions: List[Tuple[int, bytes]] = []
    total = 0
    while True:
        if position + _EXTENSION.size > limit:
            if header.version == 2 and position + _EXTENSION.size > len(data):
                # A version 2 image may have no extension area at all.
                return extensions, position
            raise FormatError(
                f"{name}: qcow2 header extension at {position} runs past the first "
                f"cluster (no end marker)"
            )
        kind, length = _EXTENSION.unpack_from(data, position)
        position += _EXTENSION.size
        if kind == C.EXT_END:
            return extensions, position
        padded = length + (-length % 8)
        total += padded
        if position + padded > limit or total > C.MAX_EXTENSION_BYTES:
            raise FormatError(
                f"{name}: qcow2 header extension {kind:#010x} at {position - 8} "
                f"({length} bytes) runs past the first cluster"
            )
        extensions.append((kind, bytes(data[position : position + length])))
        position += padded
