"""``vhdcore resize IMAGE SIZE``: grow or shrink the virtual disk."""

from __future__ import annotations

from ..resize import resize
from ._common import add_chain_flags, add_json_flag, chain_options, emit_json, size_argument

HELP = "change the virtual size of an image (shrinks only over zeros unless --force)"


def add_arguments(parser):
    parser.add_argument("image", help="the image, resized in place")
    parser.add_argument("size", type=size_argument, help="the new virtual size, e.g. 512M or 10G")
    parser.add_argument("--force", action="store_true",
                        help="shrink even when the removed range holds data (it is lost)")
    add_chain_flags(parser)
    add_json_flag(parser)


def _blocks(count):
    return f"{count} block" + ("" if count == 1 else "s")


def run(args) -> int:
    # No progress meter: a resize rewrites metadata and moves at most the
    # few blocks in the way of a larger table.
    result = resize(args.image, args.size, force=args.force, **chain_options(args))
    if args.json:
        emit_json(result.to_dict())
    else:
        print(f"resized {result.image} ({result.type}) from {result.old_size} to "
              f"{result.new_size} bytes"
              + (f"; {_blocks(result.blocks_moved)} moved to grow the table"
                 if result.blocks_moved else "")
              + (f"; {_blocks(result.blocks_released)} released"
                 if result.blocks_released else ""))
        for note in result.notes:
            print(f"note: {note}")
    return 0
