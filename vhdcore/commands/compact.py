"""``vhdcore compact IMAGE``: release all-zero blocks and close the holes."""

from __future__ import annotations

from ..compact import compact
from ..sizes import format_size
from ._common import add_chain_flags, add_json_flag, chain_options, emit_json
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


def run(args) -> int:
    meter, update = progress_meter(args, "compact")
    result = compact(args.image, output=args.output, dry_run=args.dry_run,
                     overwrite=args.force, progress=update,
                    **chain_options(args))
    if meter is not None:
        meter.finish()
    if args.json:
        emit_json(result.to_dict())
    else:
        verb = "would reclaim" if result.dry_run else "reclaimed"
        where = f" into {result.output}" if result.output else ""
        print(f"compacted {result.image}{where}: {result.blocks_dropped} of "
              f"{result.blocks_before} blocks were zeros, {result.blocks_moved} moved; {verb} "
              f"{format_size(result.bytes_reclaimed)} ({result.file_size_before} -> "
              f"{result.file_size_after} bytes)")
    return 0
