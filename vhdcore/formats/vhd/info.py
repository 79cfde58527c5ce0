"""What ``vhdcore info`` reports about an image, as a plain dict.

The dict has the keys of :mod:`vhdcore.disk.description`, nested ones
included, for every kind of image (fixed, dynamic, differencing, raw;
qcow2 in :mod:`vhdcore.formats.qcow2.info`): a field that does not apply
is ``None`` (JSON ``null``), never missing, so a script can read
``data["blocks"]["total"]`` or ``data["parent_uuid"]`` without first
asking which kind it has.
"""

from __future__ import annotations

import datetime as dt
import os

from ...disk.description import description
from .constants import VHD_EPOCH
from .xen import hidden_flag


def _creator_version(value: int) -> str:
    return f"{value >> 16}.{value & 0xFFFF}"


def _timestamp(value: int) -> str:
    moment = dt.datetime.fromtimestamp(VHD_EPOCH + value, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _batmap(image):
    """blktap's batmap (``None`` when the image has none): where, which
    version, whether its checksum holds, and how many blocks it marks full."""
    batmap = getattr(image, "batmap", None)
    if batmap is None:
        return None
    blocks = image.block_count or 0
    full = 0
    if batmap.map:
        import numpy as np

        bits = np.unpackbits(np.frombuffer(batmap.map, dtype=np.uint8))[:blocks]
        full = int(np.count_nonzero(bits))
    return {
        "offset": batmap.header_offset,
        "version": _creator_version(batmap.batmap_version),
        "valid": batmap.map_trusted,
        "full_blocks": full,
        "blocks": blocks,
    }


def describe(image, missing_parent: str | None = None) -> dict:
    """A JSON-ready description of an open image and its parent chain.

    Args:
        image: the open image.
        missing_parent: for a differencing child opened without its parent
            (which could not be found), why: the chain then ends in an entry
            for the parent with only the UUID the child records (filename,
            type and size ``None``), and the reason joins the notes.
    """
    footer = image.footer
    geometry = footer.geometry
    if image.block_count is None:
        allocated = image.virtual_size
        blocks = {"allocated": None, "total": None}
    else:
        count = image.allocated_blocks
        allocated = min(count * image.block_size, footer.current_size)
        blocks = {"allocated": count, "total": image.block_count}
    data = {
        "filename": image.path,
        "format": "vhd",
        "type": image.type,
        "virtual_size": image.virtual_size,
        "size_rule": image.size_rule,
        "current_size": footer.current_size,
        "chs_size": geometry.size,
        "file_size": image.file_size,
        "allocated_bytes": allocated,
        "blocks": blocks,
        "block_size": image.block_size,
        "creator": {
            "application": footer.creator_app.decode("latin-1"),
            "version": _creator_version(footer.creator_version),
            "host_os": footer.creator_os.decode("latin-1"),
        },
        "uuid": str(footer.uuid),
        "timestamp": _timestamp(footer.timestamp),
        "geometry": {
            "cylinders": geometry.cylinders,
            "heads": geometry.heads,
            "sectors_per_track": geometry.sectors,
        },
        "saved_state": bool(footer.saved_state),
        "hidden": hidden_flag(footer, getattr(image, "footer_copy", None)),
        "batmap": _batmap(image),
        "notes": list(image.notes),
        "parent_uuid": None,
        "parent_name": None,
        "parent_timestamp": None,
        "qcow2": None,
    }
    if image.header is not None and image.type == "differencing":
        header = image.header
        data["parent_uuid"] = str(header.parent_uuid)
        data["parent_name"] = header.parent_name
        data["parent_timestamp"] = _timestamp(header.parent_timestamp)
    data["chain"] = [
        {"depth": depth, "filename": member.path, "type": member.type,
         "uuid": str(member.uuid), "virtual_size": member.virtual_size}
        for depth, member in enumerate(image.chain)
    ]
    if missing_parent is not None:
        data["chain"].append(
            {"depth": len(data["chain"]), "filename": None, "type": None,
             "uuid": data["parent_uuid"], "virtual_size": None}
        )
        data["notes"].append(missing_parent)
    return data


def describe_path(path, warn=None, **options) -> dict:
    """:func:`describe` of the VHD at ``path`` (the registry's ``describe``).

    A child whose parent cannot be found is still described (its own
    footer, header and table are readable): the parent's entry says it is
    missing and ``warn`` gets the reason, because what is reported about
    the child is complete and true.
    """
    from ...errors import ParentNotFoundError
    from .image import VHD

    try:
        image, missing = VHD(path, "r", **options), None
    except ParentNotFoundError as exc:
        image, missing = VHD(path, "r", _without_parent=True), str(exc)
        if warn is not None:
            warn(missing)
    with image:
        return describe(image, missing_parent=missing)


def describe_raw(source) -> dict:
    """:func:`describe`'s dict for a raw image (an open raw :class:`~vhdcore.disk.sources.Source`).

    The same keys: what only a VHD records (size rule, creator, UUID,
    geometry, blocks) is ``None``; ``allocated_bytes`` counts the stored
    (non-hole) runs, as ``map`` shows them.
    """
    allocated = sum(length for _offset, length, is_data in source.runs() if is_data)
    try:
        file_size = os.stat(source.name).st_size
    except OSError:
        file_size = source.virtual_size
    return description(
        filename=source.name,
        format="raw",
        type="raw",
        virtual_size=source.virtual_size,
        file_size=file_size,
        allocated_bytes=allocated,
        notes=list(source.notes),
        chain=[{"depth": 0, "filename": source.name, "type": "raw", "uuid": None,
                "virtual_size": source.virtual_size}],
    )
