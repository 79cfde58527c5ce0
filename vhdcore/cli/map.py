"""``vhdcore map IMAGE``: the allocation map, like ``qemu-img map``."""

from __future__ import annotations

from ._common import add_chain_flags, add_format_flag, add_json_flag, chain_options, emit_json

HELP = "show where each part of the virtual disk is stored (data, zero, parent)"


def add_arguments(parser):
    parser.add_argument("image", help="a raw or VHD image")
    add_format_flag(parser)
    add_json_flag(parser)
    add_chain_flags(parser)


def run(args) -> int:
    from ..ops.map import allocation_map

    extents = allocation_map(args.image, args.src_format, chain_options(args))
    if args.json:
        emit_json(extents)
        return 0
    print(f"{'Offset':<19} {'Length':<19} {'State':<7} {'Depth':>5}  {'Mapped to':<19} File")
    for extent in extents:
        mapped = f"0x{extent['file_offset']:x}" if extent["file_offset"] is not None else "-"
        depth = str(extent["depth"]) if extent["depth"] is not None else "-"
        print(
            f"0x{extent['offset']:<17x} 0x{extent['length']:<17x} {extent['state']:<7} "
            f"{depth:>5}  {mapped:<19} {extent['file'] or '-'}"
        )
    return 0
