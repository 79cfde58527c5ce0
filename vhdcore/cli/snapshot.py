"""``vhdcore snapshot PARENT CHILD``: a new, empty differencing child."""

from __future__ import annotations

from ._common import add_chain_flags, add_json_flag, chain_options, emit_json

HELP = "create an empty differencing image (a snapshot) on top of PARENT"


def add_arguments(parser):
    parser.add_argument("parent", help="the image to freeze; it must not change afterwards")
    parser.add_argument("child", help="the new differencing image")
    parser.add_argument("--force", action="store_true", help="replace an existing CHILD file")
    parser.add_argument("--xen", action="store_true",
                        help="a child for Xen / XCP-ng (blktap): creator tap and blktap's batmap")
    add_json_flag(parser)
    add_chain_flags(parser)


def run(args) -> int:
    from ..formats.vhd.snapshot import snapshot

    data = snapshot(args.parent, args.child, overwrite=args.force, xen=args.xen,
                    **chain_options(args))
    if args.json:
        emit_json(data)
    else:
        print(f"created snapshot {data['filename']} of {args.parent}: "
              f"{data['virtual_size']} bytes, block size {data['block_size']}")
    return 0
