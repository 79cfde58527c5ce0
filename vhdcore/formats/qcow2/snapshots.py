"""The qcow2 internal snapshot table, parsed for ``info`` with every length bounded.

Each entry is a 40-byte fixed part, ``extra_data_size`` bytes of extra data
(the snapshot's virtual size since qemu 1.x), an id string and a name,
padded to 8 bytes. All three lengths come from the file, so they are
checked against qemu's limits and the file before anything is read.
"""

from __future__ import annotations

import struct
from typing import List, NamedTuple, Optional

from ...errors import CorruptImageError, LimitError
from . import constants as C

# l1_table_offset, l1_size, id_str_size, name_size, date_sec, date_nsec,
# vm_clock_nsec, vm_state_size, extra_data_size
_ENTRY = struct.Struct(">QIHHIIQII")
# vm_state_size_large, disk_size
_EXTRA = struct.Struct(">QQ")


class Snapshot(NamedTuple):
    """One internal snapshot, as ``qemu-img snapshot -l`` lists it."""

    id: str
    name: str
    virtual_size: Optional[int]  # None when the entry predates the field
    date: float  # seconds since the epoch
    vm_clock_nsec: int
    l1_table_offset: int
    l1_size: int
    entry_size: int = 0  # bytes of its table entry, padding included (check counts the table)


def read_snapshots(file, header, file_size: int) -> List[Snapshot]:
    """Every snapshot of the table the header points to, in table order.

    Raises:
        LimitError: the table or an entry is larger than qemu allows.
        CorruptImageError: an entry runs past the end of the file.
    """
    name = file.name
    position = header.snapshots_offset
    total = 0
    out: List[Snapshot] = []
    for index in range(header.nb_snapshots):
        if position + _ENTRY.size > file_size:
            raise CorruptImageError(
                f"{name}: qcow2 snapshot {index} at {position:#x} lies beyond the end of the "
                f"file ({file_size} bytes)"
            )
        fixed = _ENTRY.unpack(file.pread(position, _ENTRY.size, f"qcow2 snapshot {index}"))
        l1_offset, l1_size, id_size, name_size, date_sec, date_nsec, clock, _vm, extra_size = fixed
        if extra_size > C.MAX_SNAPSHOT_EXTRA:
            raise LimitError(
                f"{name}: qcow2 snapshot {index} at {position:#x} has {extra_size} bytes of "
                f"extra data (at most {C.MAX_SNAPSHOT_EXTRA})"
            )
        body = extra_size + id_size + name_size
        size = _ENTRY.size + body
        size += -size % 8
        total += size
        if total > C.MAX_SNAPSHOT_TABLE_BYTES:
            raise LimitError(
                f"{name}: qcow2 snapshot table at {header.snapshots_offset:#x} is larger "
                f"than {C.MAX_SNAPSHOT_TABLE_BYTES >> 20} MiB"
            )
        if position + _ENTRY.size + body > file_size:  # the last one's padding may be absent
            raise CorruptImageError(
                f"{name}: qcow2 snapshot {index} at {position:#x} ({size} bytes) runs past "
                f"the end of the file ({file_size} bytes)"
            )
        data = file.pread(position + _ENTRY.size, body, f"qcow2 snapshot {index}")
        virtual_size = None
        if extra_size >= _EXTRA.size:
            virtual_size = _EXTRA.unpack_from(data)[1]
        ident = data[extra_size : extra_size + id_size].decode("utf-8", "replace")
        label = data[extra_size + id_size :].decode("utf-8", "replace")
        out.append(Snapshot(ident, label, virtual_size, date_sec + date_nsec / 1e9, clock,
                            l1_offset, l1_size, size))
        position += size
    return out
