"""``vhdcore compact IMAGE``: release all-zero blocks and close the holes."""

from __future__ import annotations

from ..sizes import format_size
from ._common import add_chain_flags, add_json_flag, chain_options, emit_json, plural
from .commit import add_progress_flag, progress_meter

HELP = "release blocks that hold only zeros and shrink the file (in place, or into -o OUTPUT)"


def add_arguments(parser):
    parser.add_argument("image", help="a dynamic or differencing image")
    parser.add_argument("-o", "--output", help="write the compacted image here instead")
    parser.add_argument("--force", action="store_true", help="replace an existing OUTPUT")
    parser.add_argument("--dry-run", action="store_true",
                        help="only scan and report what would be reclaimed")
    add_progress_flag(parser)
    add_chain_flags(parser)
    add_json_flag(parser)


def render(result) -> str:
    """The one-line report; a dry run says what *would* happen, in the conditional."""
    where = f" into {result.output}" if result.output else ""
    zeros = f"{result.blocks_dropped} of {plural(result.blocks_before, 'block')}"
    if result.dry_run:
        head = f"would compact {result.image}{where}: {zeros} " + (
            "holds only zeros" if result.blocks_dropped == 1 else "hold only zeros")
        moved, reclaim = f"{result.blocks_moved} would move", "would reclaim"
    else:
        head = f"compacted {result.image}{where}: {zeros} held only zeros"
        moved, reclaim = f"{result.blocks_moved} moved", "reclaimed"
    return (f"{head}, {moved}; {reclaim} {format_size(result.bytes_reclaimed)} "
            f"({result.file_size_before} -> {result.file_size_after} bytes)")


def run(args) -> int:
    from ..formats.vhd.compact import compact

    meter, update = progress_meter(args, "compact")
    result = compact(args.image, output=args.output, dry_run=args.dry_run,
                     overwrite=args.force, progress=update,
                    **chain_options(args))
    if meter is not None:
        meter.finish()
    if args.json:
        emit_json(result.to_dict())
    else:
        print(render(result))
    return 0
