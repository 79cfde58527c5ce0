"""``vhdcore commit CHILD``: fold a differencing image into its parent."""

from __future__ import annotations

from ..progress import Progress
from ..sizes import format_size
from ._common import add_chain_flags, add_json_flag, chain_options, emit_json, plural

HELP = "copy every sector a differencing image holds into its parent (vhd-util coalesce)"


def add_progress_flag(parser) -> None:
    parser.add_argument("-p", "--progress", action="store_true",
                        help="show progress on stderr")


def progress_meter(args, label):
    """``(meter, callback)`` for ``-p``, or ``(None, None)``."""
    if not getattr(args, "progress", False):
        return None, None
    meter = Progress(None, label)

    def update(done, total):
        meter.total = total
        meter.update(done)

    return meter, update


def add_arguments(parser):
    parser.add_argument("child", help="the differencing image; it is only read")
    parser.add_argument("--remove", action="store_true",
                        help="delete CHILD after a successful commit")
    add_progress_flag(parser)
    add_chain_flags(parser)
    add_json_flag(parser)


def run(args) -> int:
    from ..formats.vhd.commit import commit

    meter, update = progress_meter(args, "commit")
    result = commit(args.child, remove=args.remove, progress=update,
                    **chain_options(args))
    if meter is not None:
        meter.finish()
    if args.json:
        emit_json(result.to_dict())
    else:
        print(f"committed {result.child} into {result.parent} ({result.parent_type}): "
              f"{format_size(result.bytes_copied)} in {plural(result.runs, 'run')}, "
              f"{plural(result.blocks_allocated, 'new parent block')}, {result.seconds} s")
        if result.child_removed:
            print(f"removed {result.child}")
    return 0
