"""``vhdcore repair IMAGE``: fix footers, checksums and trailing bytes, after a backup.

Exit codes: 0 the image has no errors left (or, with ``--dry-run``, would
have none), 2 errors remain (unrepairable, or ``--force`` needed), 1 the
image could not be repaired (missing file, locked, I/O error).
"""

from __future__ import annotations

from ._common import add_json_flag, emit_json
from .check import render as render_check

HELP = (
    "repair a damaged image: footer from its copy (or back), checksums, trailing bytes; "
    "--force also releases BAT entries outside the file"
)
ERROR_EXIT = 1


def add_arguments(parser):
    parser.add_argument("image", help="the VHD image")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would change; change nothing",
    )
    parser.add_argument(
        "--force", action="store_true",
        help="also release BAT entries that point outside the data area (their data is "
             "lost), overwrite a footer copy that disagrees in size or identity, and cut "
             "trailing bytes too large to back up",
    )
    parser.add_argument(
        "--undo", metavar="BACKUP",
        help="put back the bytes a previous repair changed, from its backup file",
    )
    add_json_flag(parser)


def render(report) -> str:
    lines = [f"image: {report.path}"]
    if not report.actions and not report.skipped:
        lines.append("nothing to repair: check finds no errors.")
        return "\n".join(lines)
    if report.actions:
        lines.append("would change:" if report.dry_run else "changed:")
        for number, action in enumerate(report.actions, 1):
            if action.kind == "write":
                head = f"write {action.length} bytes at {action.offset:#x}"
            else:
                head = f"truncate to {action.offset} bytes"
            lines.append(f"  {number}. {head}: {action.what}")
            lines.append(f"     old: {action.old}")
            lines.append(f"     new: {action.new}")
    if report.backup_path:
        lines.append(
            f"backup of every byte changed: {report.backup_path} "
            f"(vhdcore repair IMAGE --undo BACKUP puts them back)"
        )
    if report.skipped:
        lines.append("would not repair:" if report.dry_run else "not repaired:")
        for code, reason in report.skipped:
            lines.append(f"  {code}: {reason}")
    if report.after is not None:
        lines.append("after repair:")
        lines.append(render_check(report.after))
    elif report.dry_run:
        verdict = "errors would remain" if report.skipped else "no errors would remain"
        lines.append(f"dry run: nothing was changed; {verdict}.")
    return "\n".join(lines)


def run(args) -> int:
    from ..formats.vhd.repair import repair, undo

    if args.undo:
        undo(args.image, args.undo)
        if args.json:
            emit_json({"filename": args.image, "undone_from": args.undo})
        else:
            print(f"{args.image}: restored the bytes saved in {args.undo}")
        return 0
    report = repair(args.image, dry_run=args.dry_run, force=args.force)
    if args.json:
        emit_json(report.to_dict())
    else:
        print(render(report))
    return report.exit_code
