"""``vhdcore info IMAGE``: type, sizes, allocation, identity and parent chain."""

from __future__ import annotations

import sys

from .. import formats as registry
from ..errors import UnsupportedError
from ..sizes import format_size
from ._common import add_chain_flags, add_json_flag, chain_options, emit_json, plural

HELP = "show what an image is: type, sizes, allocation, creator, UUID, geometry, parents"


def add_arguments(parser):
    parser.add_argument("image", help="the VHD or qcow2 image (or a raw one, with -f raw)")
    parser.add_argument(
        "-f", "--format", dest="src_format", choices=registry.names(),
        default=None,
        help="image format (default: by its magic; a file with none is taken for a damaged "
             "VHD; vpc is qemu's name for vhd); raw describes any file as a raw disk, with "
             "the same JSON keys (other formats' fields null)",
    )
    add_json_flag(parser)
    add_chain_flags(parser)


def _sized(value):
    return f"{format_size(value)} ({value} bytes)"


def _describe(args) -> dict:
    """The registry's description of the image, in its format (by magic, or ``-f``)."""
    fmt = registry.get(args.src_format) if args.src_format else registry.detect_path(args.image)
    if fmt.describe is None:
        raise UnsupportedError(f"{args.image}: info does not describe {fmt.name} images")

    def warn(message):
        print(f"vhdcore info: warning: {message}", file=sys.stderr)

    return fmt.describe(args.image, warn, **chain_options(args))


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
