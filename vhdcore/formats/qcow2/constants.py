"""Fixed numbers of the qcow2 format (qemu's docs/interop/qcow2.txt), and our limits.

Every value a reader must bound before it allocates is bounded here, with
the reason: a crafted header can claim an L1 table of 2^32 entries or a
refcount table of 2^32 clusters, and the qcow2 CVE family is readers that
believed it.
"""

from __future__ import annotations

MAGIC = b"QFI\xfb"

#: Bytes of the version 2 header; version 3 adds fields up to ``header_length``.
V2_HEADER_SIZE = 72
#: Smallest version 3 header (up to and including ``header_length``).
V3_HEADER_SIZE = 104
#: The version 3 header we write: with ``compression_type`` and its padding.
V3_WRITTEN_HEADER_SIZE = 112

MIN_CLUSTER_BITS = 9  # 512 B
MAX_CLUSTER_BITS = 21  # 2 MiB
DEFAULT_CLUSTER_BITS = 16  # 64 KiB, qemu-img's default
DEFAULT_REFCOUNT_ORDER = 4  # 16-bit refcounts, qemu-img's default
MAX_REFCOUNT_ORDER = 6  # 64-bit refcounts

# Incompatible feature bits: a reader that does not know one must refuse.
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
KNOWN_INCOMPAT = (
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
)

# Compatible feature bits: safe to ignore.
COMPAT_LAZY_REFCOUNTS = 1 << 0

# Autoclear feature bits: a writer that does not maintain one clears it.
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1
KNOWN_AUTOCLEAR = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW

#: ``crypt_method`` values (both are refused).
CRYPT_NONE = 0
CRYPT_AES = 1
CRYPT_LUKS = 2

#: ``compression_type`` values.
COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1
COMPRESSION_NAMES = {COMPRESSION_ZLIB: "zlib", COMPRESSION_ZSTD: "zstd"}

# Header extension types.
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441
EXTENSION_NAMES = {
    EXT_BACKING_FORMAT: "backing format",
    EXT_FEATURE_TABLE: "feature name table",
    EXT_BITMAPS: "bitmaps",
    EXT_CRYPTO: "full disk encryption header pointer",
    EXT_DATA_FILE: "external data file",
}

# L1 and L2 entries.
OFFSET_MASK = 0x00FFFFFFFFFFFE00  # bits 9-55: a cluster's host offset
L1_RESERVED_MASK = 0x7F000000000001FF
COPIED = 1 << 63  # refcount is exactly one (L1 and standard L2 entries)
COMPRESSED = 1 << 62  # an L2 entry describing a compressed cluster
ZERO_FLAG = 1 << 0  # a standard L2 entry that reads as zeros (version 3)
L2_STANDARD_RESERVED_MASK = 0x3F000000000001FE
#: Subclusters per cluster with extended L2 entries.
SUBCLUSTERS = 32
#: Compressed data is counted in 512-byte sectors.
COMPRESSED_SECTOR = 512

# Refcount table entries: bits 9-63 are a refcount block's offset.
REFTABLE_OFFSET_MASK = 0xFFFFFFFFFFFFFE00

# Limits (qemu's, so anything qemu writes opens, and nothing much larger).
MAX_L1_BYTES = 32 << 20  # QCOW_MAX_L1_SIZE
MAX_REFTABLE_BYTES = 8 << 20  # QCOW_MAX_REFTABLE_SIZE
MAX_SNAPSHOTS = 65536  # QCOW_MAX_SNAPSHOTS
MAX_SNAPSHOT_EXTRA = 1024  # QCOW_MAX_SNAPSHOT_EXTRA_DATA
MAX_SNAPSHOT_TABLE_BYTES = 64 << 20  # QCOW_MAX_SNAPSHOTS_SIZE
MAX_BACKING_NAME = 1023
MAX_EXTENSION_BYTES = 64 << 10  # extensions live in the first cluster
#: Largest virtual disk qemu creates (2^61 bytes) and we accept.
MAX_VIRTUAL_SIZE = 1 << 61
#: Host offsets are 56 bits wide.
MAX_HOST_OFFSET = 1 << 56
