"""``vhdcore create IMAGE SIZE``: a new fixed, dynamic or differencing image."""

from __future__ import annotations

import sys

from ..errors import UsageError
from ._common import (
    add_chain_flags,
    add_json_flag,
    block_size_argument,
    chain_options,
    emit_json,
    size_argument,
)

HELP = "create a new fixed, dynamic or differencing (--parent) VHD image"


def add_arguments(parser):
    parser.add_argument("image", help="the new image file")
    parser.add_argument("size", nargs="?", type=size_argument,
                        help="virtual size, e.g. 512M or 10G (optional with --parent)")
    parser.add_argument("--type", choices=("dynamic", "fixed"), default=None,
                        help="image type (default dynamic; differencing with --parent)")
    parser.add_argument("--block-size", type=block_size_argument, metavar="SIZE", default=None,
                        help="block size of a dynamic or differencing image: 4K to 256M "
                             "(default 2M, or the parent's; qemu misreads blocks below 4K, "
                             "sizes other than 512K and 2M get a warning); not with --type fixed")
    parser.add_argument("--parent", help="make a differencing image on top of PARENT")
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    parser.add_argument("--xen", action="store_true",
                        help="an image for Xen / XCP-ng (blktap): creator tap, 2M blocks, "
                             "blktap's batmap, so vhd-util resize accepts it")
    add_json_flag(parser)
    add_chain_flags(parser)


def run(args) -> int:
    from ..formats.vhd.blocksize import check_new_block_size
    from ..formats.vhd.create import create
    from ..formats.vhd.info import describe

    if args.parent and args.type == "fixed":
        raise UsageError("--parent makes a differencing image; drop --type fixed")
    if args.size is None and not args.parent:
        raise UsageError("SIZE is required without --parent")
    if args.type == "fixed" and args.block_size is not None:
        raise UsageError("a fixed image has no blocks; drop --block-size or use --type dynamic")
    image = create(
        args.image, args.size, type=args.type, block_size=args.block_size,
        parent=args.parent, overwrite=args.force, xen=args.xen, **chain_options(args),
    )
    with image:
        data = describe(image)
        # An unusual block size is a warning on stderr (seen even with --json).
        unusual = check_new_block_size(image.block_size) if image.block_size else None
    if unusual is not None:
        print(f"vhdcore create: warning: {unusual}", file=sys.stderr)
    if args.json:
        emit_json(data)
    else:
        print(f"created {data['type']} image {data['filename']}: "
              f"{data['virtual_size']} bytes"
              + (f", block size {data['block_size']}" if data["block_size"] else "")
              + (f", parent {args.parent}" if args.parent else ""))
        for note in data["notes"]:
            if note != unusual:
                print(f"note: {note}")
    return 0
