"""``vhdcore info IMAGE``: type, sizes, allocation, identity and parent chain."""

from __future__ import annotations

import sys

from ..errors import ParentNotFoundError
from ..formats.vhd.image import VHD
from ..formats.vhd.image import open as open_image
from ..formats.vhd.info import describe, describe_raw
from ..sizes import format_size
from ._common import add_chain_flags, add_json_flag, chain_options, emit_json, plural

HELP = "show what an image is: type, sizes, allocation, creator, UUID, geometry, parents"


def add_arguments(parser):
    parser.add_argument("image", help="the VHD or qcow2 image (or a raw one, with -f raw)")
    parser.add_argument(
        "-f", "--format", dest="src_format", choices=("raw", "vhd", "vpc", "qcow2"),
        default=None,
        help="image format (default: qcow2 when the file is one, else vhd; vpc is qemu's name "
             "for vhd); raw describes any file as a raw disk, with the same JSON keys "
             "(VHD-only fields null)",
    )
    add_json_flag(parser)
    add_chain_flags(parser)


def _sized(value):
    return f"{format_size(value)} ({value} bytes)"


def _open(args):
    """``(image, why the parent is missing or None)``.

    A child whose parent cannot be found is still described (its own
    footer, header and table are readable): the parent's entry says it is
    missing, a warning goes to stderr, and the exit code is 0, because
    what info reports about the child is complete and true.
    """
    try:
        return open_image(args.image, "r", **chain_options(args)), None
    except ParentNotFoundError as exc:
        image = VHD(args.image, "r", _without_parent=True)
        print(f"vhdcore info: warning: {exc}", file=sys.stderr)
        return image, str(exc)


def _is_qcow2(path) -> bool:
    """Whether detection names ``path`` qcow2 (a VHD footer wins over the magic)."""
    from ..formats import detect
    from ..io.imagefile import open_image_file

    try:
        with open_image_file(path) as file:
            return detect(file).name == "qcow2"
    except OSError:
        return False  # the VHD open names the problem


def _describe(args) -> dict:
    if args.src_format == "qcow2" or (args.src_format is None and _is_qcow2(args.image)):
        from ..formats import get
        from ..formats.qcow2.info import describe as describe_qcow2

        with get("qcow2").open(args.image, **chain_options(args)) as disk:
            return describe_qcow2(disk)
    if args.src_format == "raw":
        from ..disk.sources import open_source

        with open_source(args.image, "raw") as source:
            return describe_raw(source)
    image, missing = _open(args)
    with image:
        return describe(image, missing_parent=missing)


def run(args) -> int:
    data = _describe(args)
    if args.json:
        emit_json(data)
        return 0
    lines = [
        f"image: {data['filename']}",
        f"format: {data['format']}",
        f"type: {data['type']}",
        f"virtual size: {_sized(data['virtual_size'])}",
    ]
    if data["format"] == "raw":
        lines.append(f"file size: {_sized(data['file_size'])}")
        lines.append(f"allocated: {_sized(data['allocated_bytes'])} stored, the rest holes")
        print("\n".join(lines))
        return 0
    if data["format"] == "qcow2":
        lines += _qcow2_lines(data)
        print("\n".join(lines))
        return 0
    if data["chs_size"] != data["current_size"]:
        lines.append(
            f"size rule: {data['size_rule']} (current size {data['current_size']}, "
            f"CHS size {data['chs_size']})"
        )
    lines.append(f"file size: {_sized(data['file_size'])}")
    if data["block_size"] is not None:
        blocks = data["blocks"]
        lines.append(
            f"allocated: {_sized(data['allocated_bytes'])} in "
            f"{blocks['allocated']} of {plural(blocks['total'], 'block')}"
        )
        lines.append(f"block size: {format_size(data['block_size'])}")
    creator = data["creator"]
    lines.append(
        f"creator: {creator['application']!r} version {creator['version']} "
        f"on {creator['host_os']!r}"
    )
    lines.append(f"uuid: {data['uuid']}")
    lines.append(f"timestamp: {data['timestamp']}")
    g = data["geometry"]
    lines.append(f"geometry: {g['cylinders']}/{g['heads']}/{g['sectors_per_track']} (C/H/S)")
    lines.append(f"hidden (blktap): {'yes' if data['hidden'] else 'no'}")
    batmap = data["batmap"]
    if batmap is not None:
        lines.append(
            f"batmap (blktap): version {batmap['version']} at {batmap['offset']:#x}, "
            f"{batmap['full_blocks']} of {batmap['blocks']} blocks marked full"
            + ("" if batmap["valid"] else "; its checksum does not hold (run check)")
        )
    if len(data["chain"]) > 1:
        lines.append("parent chain:")
        for member in data["chain"][1:]:
            if member["filename"] is None:
                lines.append(f"  {member['depth']}: missing ({member['uuid']})")
                continue
            lines.append(
                f"  {member['depth']}: {member['filename']} ({member['type']}, {member['uuid']})"
            )
    for note in data["notes"]:
        lines.append(f"note: {note}")
    print("\n".join(lines))
    return 0


def _qcow2_lines(data) -> list:
    q = data["qcow2"]
    lines = [
        f"file size: {_sized(data['file_size'])}",
        f"allocated: {_sized(data['allocated_bytes'])} in this file",
        f"cluster size: {format_size(q['cluster_size'])}",
        f"compat: {q['compat']} (version {q['version']}), {q['refcount_bits']}-bit refcounts, "
        f"{q['compression']} compression",
    ]
    features = [name for name in ("extended_l2", "lazy_refcounts", "dirty") if q[name]]
    if features:
        lines.append(f"features: {', '.join(features)}")
    if q["backing_file"]:
        fmt = f" (format {q['backing_format']})" if q["backing_format"] else ""
        lines.append(f"backing file: {q['backing_file']}{fmt}")
    if q["data_file"]:
        lines.append(f"data file: {q['data_file']}")
    if q["snapshots"]:
        lines.append("snapshots:")
        for snap in q["snapshots"]:
            lines.append(f"  {snap['id']}: {snap['name']} ({_sized(snap['virtual_size'] or 0)}, "
                         f"{snap['date']})")
    if len(data["chain"]) > 1:
        lines.append("backing chain:")
        for member in data["chain"][1:]:
            lines.append(f"  {member['depth']}: {member['filename']} ({member['type']})")
    for note in data["notes"]:
        lines.append(f"note: {note}")
    return lines
