"""What ``vhdcore info`` reports about a qcow2 image: VHD's keys, and qcow2's under ``qcow2``.

The keys are those of :func:`vhdcore.formats.vhd.info.describe` (what only
a VHD records is ``None``), so a script reads every format the same way;
what only qcow2 records (cluster size, backing file, snapshots, features)
is in the ``qcow2`` dict, which is ``None`` for the other formats.
"""

from __future__ import annotations

import datetime as dt

from ...disk.description import description
from ...disk.extent import DATA, ENCODED


def _date(seconds: float) -> str:
    moment = dt.datetime.fromtimestamp(int(seconds), tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _allocated(disk) -> int:
    """Bytes this image itself stores (data and compressed clusters), as ``map`` shows."""
    return sum(e.length for e in disk.extents() if e.depth == 0 and e.state in (DATA, ENCODED))


def _member(depth, member) -> dict:
    uuid = getattr(member, "uuid", None)
    return {"depth": depth, "filename": getattr(member, "path", member.files[0]),
            "type": getattr(member, "type", member.format),
            "uuid": None if uuid is None else str(uuid), "virtual_size": member.virtual_size}


def _chain(disk) -> list:
    """The image, then each backing disk; a VHD backing brings its own parents."""
    members = []
    member = disk
    while member is not None:
        if member.format == "qcow2":
            members.append(_member(len(members), member))
            member = member.backing
            continue
        for link in getattr(member, "chain", [member]):
            members.append(_member(len(members), link))
        member = None
    return members


def describe(disk) -> dict:
    """A JSON-ready description of an open :class:`~.image.Qcow2Disk` and its chain."""
    header = disk.header
    return description(
        filename=disk.path,
        format="qcow2",
        type="qcow2",
        virtual_size=disk.virtual_size,
        file_size=disk.file_size,
        allocated_bytes=_allocated(disk),
        notes=list(disk.notes),
        parent_name=header.backing_file,
        qcow2={
            "version": header.version,
            "compat": "1.1" if header.version >= 3 else "0.10",
            "cluster_size": disk.cluster_size,
            "backing_file": header.backing_file,
            "backing_format": header.backing_format,
            "data_file": header.data_file,
            "refcount_bits": header.refcount_bits,
            "compression": header.compression,
            "extended_l2": header.extended_l2,
            "lazy_refcounts": header.lazy_refcounts,
            "dirty": header.dirty,
            "snapshots": [
                {"id": s.id, "name": s.name, "virtual_size": s.virtual_size,
                 "date": _date(s.date), "vm_clock_nsec": s.vm_clock_nsec}
                for s in disk.snapshots
            ],
        },
        chain=_chain(disk),
    )
