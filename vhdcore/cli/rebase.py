"""``vhdcore rebase CHILD NEWPARENT``: point a differencing image at a new parent."""

from __future__ import annotations

from ..sizes import format_size
from ._common import add_chain_flags, add_json_flag, chain_options, emit_json, plural
from .commit import add_progress_flag, progress_meter

HELP = "make NEWPARENT the parent of a differencing image, keeping its contents (unless --unsafe)"


def add_arguments(parser):
    parser.add_argument("child", help="the differencing image, changed in place")
    parser.add_argument("new_parent", help="the image to become its parent")
    parser.add_argument(
        "--unsafe", action="store_true",
        help="only rewrite the parent UUID, name, timestamp and locators (vhd-util modify -p); "
             "use to relink a moved parent",
    )
    add_progress_flag(parser)
    add_chain_flags(parser)
    add_json_flag(parser)


def run(args) -> int:
    from ..formats.vhd.rebase import rebase

    meter, update = progress_meter(args, "rebase")
    result = rebase(args.child, args.new_parent, unsafe=args.unsafe, progress=update,
                    **chain_options(args))
    if meter is not None:
        meter.finish()
    if args.json:
        emit_json(result.to_dict())
    else:
        how = "unsafe: contents not compared" if result.unsafe else (
            f"compared {format_size(result.bytes_compared)}, copied "
            f"{format_size(result.bytes_copied)} from the old chain"
        )
        print(f"rebased {result.child} from {result.old_parent} onto {result.new_parent} "
              f"({how}); locators {result.locator_placement}"
              + (f", {plural(result.blocks_moved, 'block')} moved to make room"
                 if result.blocks_moved else ""))
        for note in result.notes:
            print(f"note: {note}")
    return 0
