"""``vhdcore info IMAGE``: type, sizes, allocation, identity and parent chain."""

from __future__ import annotations

from ..image import open as open_image
from ..info import describe
from ..sizes import format_size
from ._common import add_chain_flags, add_json_flag, chain_options, emit_json

HELP = "show what an image is: type, sizes, allocation, creator, UUID, geometry, parents"


def add_arguments(parser):
    parser.add_argument("image", help="the VHD image")
    add_json_flag(parser)
    add_chain_flags(parser)


def _sized(value):
    return f"{format_size(value)} ({value} bytes)"


def run(args) -> int:
    with open_image(args.image, "r", **chain_options(args)) as image:
        data = describe(image)
    if args.json:
        emit_json(data)
        return 0
    lines = [
        f"image: {data['filename']}",
        "format: vhd",
        f"type: {data['type']}",
        f"virtual size: {_sized(data['virtual_size'])}",
    ]
    if data["chs_size"] != data["current_size"]:
        lines.append(
            f"size rule: {data['size_rule']} (current size {data['current_size']}, "
            f"CHS size {data['chs_size']})"
        )
    lines.append(f"file size: {_sized(data['file_size'])}")
    if data["blocks"] is not None:
        blocks = data["blocks"]
        lines.append(
            f"allocated: {_sized(data['allocated_bytes'])} in "
            f"{blocks['allocated']} of {blocks['total']} blocks"
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
    if len(data["chain"]) > 1:
        lines.append("parent chain:")
        for member in data["chain"][1:]:
            lines.append(
                f"  {member['depth']}: {member['filename']} ({member['type']}, {member['uuid']})"
            )
    for note in data["notes"]:
        lines.append(f"note: {note}")
    print("\n".join(lines))
    return 0
