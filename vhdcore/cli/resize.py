"""``vhdcore resize IMAGE SIZE``: grow or shrink the virtual disk.

SIZE is the new virtual size, or, with a sign, a change of the current
one (``+64M``, ``-32M``), as ``qemu-img resize`` takes it. A shrink, by
either spelling, follows the same rule: only over zeros unless --force.
"""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..sizes import format_size, parse_size
from ._common import add_chain_flags, add_json_flag, chain_options, emit_json, plural

HELP = "change the virtual size of an image (shrinks only over zeros unless --force)"


def size_change_argument(text: str):
    """argparse type for SIZE: ``(sign, bytes)``, sign ``+``, ``-`` or ``""`` (absolute).

    ``-32M`` reaches here as a value, not a flag: the command line's
    parser takes ``-`` followed by a digit as a value (see :mod:`vhdcore.cli`).
    """
    sign = text[:1] if text[:1] in "+-" else ""
    try:
        return sign, parse_size(text[len(sign):])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: a size such as 10G, or a change such as +64M or -32M"
        ) from None


def add_arguments(parser):
    parser.add_argument("image", help="the image, resized in place")
    parser.add_argument(
        "size", type=size_change_argument, metavar="SIZE",
        help="the new virtual size (e.g. 512M or 10G), or a change of it (+64M, -32M)",
    )
    parser.add_argument("--force", action="store_true",
                        help="shrink even when the removed range holds data (it is lost)")
    add_chain_flags(parser)
    add_json_flag(parser)


def target_size(args) -> int:
    """The new virtual size in bytes: SIZE, or the current size changed by it."""
    from ..formats.vhd.image import open as open_image

    sign, amount = args.size
    if not sign:
        return amount
    with open_image(args.image, "r", **chain_options(args)) as image:
        current = image.virtual_size
    new = current + amount if sign == "+" else current - amount
    if new <= 0:
        raise UsageError(
            f"{args.image}: {format_size(current)} {sign} {format_size(amount)} leaves "
            f"no disk: the virtual size must stay above 0"
        )
    return new


def run(args) -> int:
    from ..formats.vhd.resize import resize

    # No progress meter: a resize rewrites metadata and moves at most the
    # few blocks in the way of a larger table.
    result = resize(args.image, target_size(args), force=args.force, **chain_options(args))
    if args.json:
        emit_json(result.to_dict())
    else:
        print(f"resized {result.image} ({result.type}) from {result.old_size} to "
              f"{result.new_size} bytes"
              + (f"; {plural(result.blocks_moved, 'block')} moved to grow the table"
                 if result.blocks_moved else "")
              + (f"; {plural(result.blocks_released, 'block')} released"
                 if result.blocks_released else ""))
        for note in result.notes:
            print(f"note: {note}")
    return 0
