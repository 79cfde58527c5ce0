"""Numbers of the VHD format that more than one module needs.

Values come from Microsoft's VHD specification v1.0; where peers (qemu,
blktap, libvhdi) add their own limits, the comment names them.
"""

from __future__ import annotations

import array as _array

SECTOR_SIZE = 512
FOOTER_SIZE = 512
LEGACY_FOOTER_SIZE = 511  # images from before Virtual PC 2004
DYNAMIC_HEADER_SIZE = 1024
LOCATOR_ENTRY_SIZE = 24
LOCATOR_COUNT = 8

FOOTER_COOKIE = b"conectix"
DYNAMIC_COOKIE = b"cxsparse"
BATMAP_COOKIE = b"tdbatmap"

FOOTER_CHECKSUM_OFFSET = 64
HEADER_CHECKSUM_OFFSET = 36

FORMAT_VERSION = 0x00010000
HEADER_VERSION = 0x00010000

FEATURE_TEMPORARY = 0x1
FEATURE_RESERVED = 0x2  # must always be set

DISK_FIXED = 2
DISK_DYNAMIC = 3
DISK_DIFFERENCING = 4
DISK_TYPE_NAMES = {DISK_FIXED: "fixed", DISK_DYNAMIC: "dynamic", DISK_DIFFERENCING: "differencing"}

FIXED_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
BAT_UNUSED = 0xFFFFFFFF
#: ``array.array`` type code of a native uint32: the BAT held in memory.
UINT32_TYPECODE = "I" if _array.array("I").itemsize == 4 else "L"

# 2000-01-01T00:00:00Z as a Unix time: the VHD timestamp epoch.
VHD_EPOCH = 946684800

# Largest geometry the specification can express: 65535 cylinders,
# 16 heads, 255 sectors per track.
MAX_CHS_SECTORS = 65535 * 16 * 255

# qemu's VHD_MAX_SECTORS: the most a dynamic or differencing disk may hold
# (2040 GiB); qemu applies it to fixed disks as well.
MAX_DYNAMIC_SECTORS = 0xFF000000
MAX_DYNAMIC_SIZE = MAX_DYNAMIC_SECTORS * SECTOR_SIZE

# Policy bound for fixed disks, which the format itself does not cap:
# Azure accepts fixed uploads up to 32 TiB; we allow a little more.
MAX_FIXED_SIZE = 64 * 1024**4

DEFAULT_BLOCK_SIZE = 2 * 1024 * 1024
MIN_BLOCK_SIZE = 512
# Readers accept blocks up to 256 MiB (qemu accepts any power of two;
# blktap only 2 MiB); vhdcore writes 512 KiB..2 MiB by default.
MAX_BLOCK_SIZE = 256 * 1024 * 1024

# Most bytes of block allocation table vhdcore holds in memory: 16 Mi
# entries, enough for 2040 GiB in blocks of 128 KiB or more.
MAX_BAT_BYTES = 64 * 1024 * 1024

# Default depth limit for differencing chains: the one every format's chain uses.
from ...disk.chain import DEFAULT_MAX_CHAIN_DEPTH  # noqa: E402,F401

# Parent locator platform codes.
PLATFORM_NONE = b"\0\0\0\0"
PLATFORM_W2KU = b"W2ku"  # absolute Windows path, UTF-16LE
PLATFORM_W2RU = b"W2ru"  # relative Windows path, UTF-16LE
PLATFORM_MACX = b"MacX"  # file:// URL, UTF-8
PLATFORM_WI2R = b"Wi2r"  # deprecated
PLATFORM_WI2K = b"Wi2k"  # deprecated
PLATFORM_MAC = b"Mac "  # deprecated
KNOWN_PLATFORMS = {
    PLATFORM_W2KU,
    PLATFORM_W2RU,
    PLATFORM_MACX,
    PLATFORM_WI2R,
    PLATFORM_WI2K,
    PLATFORM_MAC,
}
