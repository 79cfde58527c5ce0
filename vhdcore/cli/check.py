"""``vhdcore check IMAGE``: every structural rule (VHD: vhd-util's; qcow2: qemu-img's).

Exit codes follow ``qemu-img check``: 0 no errors (warnings allowed),
2 corruption found, 3 only leaked space found, 1 the image could not be
checked (missing file, permission, I/O error).
"""

from __future__ import annotations

from ..sizes import format_size
from ._common import (
    add_chain_flags,
    add_json_flag,
    chain_options,
    emit_json,
    plural,
)

HELP = (
    "check an image's structure and report every problem "
    "(exit 0 clean, 2 corrupt, 3 only leaks, 1 could not check)"
)
ERROR_EXIT = 1


def add_arguments(parser):
    parser.add_argument("image", help="the VHD or qcow2 image")
    parser.add_argument(
        "-f", "--format", dest="src_format", choices=("vhd", "vpc", "qcow2"),
        help="the image format (default: by its magic; vpc is qemu's name for vhd)",
    )
    add_json_flag(parser)
    parser.add_argument(
        "--parents", action="store_true",
        help="check every image of a differencing chain, and the chain rules",
    )
    parser.add_argument(
        "--deep", action="store_true",
        help="also read every allocated block: data under clear bitmap bits must be zero",
    )
    add_chain_flags(parser)


def _member_lines(report) -> list:
    lines = [f"image: {report.path}"]
    if report.type is not None:
        size = report.virtual_size or 0
        lines.append(
            f"  type: {report.type}, virtual size {format_size(size)} ({size} bytes), "
            f"file {format_size(report.file_size)}"
        )
    counts = report.counts
    if "blocks" in counts:
        lines.append(
            f"  blocks: {counts.get('allocated_blocks', '?')} of {counts['blocks']} allocated, "
            f"{format_size(counts['block_size'])} each"
        )
    if "used_clusters" in counts:
        lines.append(
            f"  clusters: {counts['used_clusters']} of {counts['file_clusters']} in use, "
            f"{format_size(counts['cluster_size'])} each"
        )
    if report.footer_offset is not None:
        footer = f"  footer: {report.footer_state} at {report.footer_offset:#x}"
        if report.footer_offset >= report.file_size:
            # Truncated: where the footer belongs lies past the end of the file.
            footer = (f"  footer: missing (the file is cut at {report.file_size:#x}; "
                      f"the footer belongs at {report.footer_offset:#x})")
        if report.copy_state is not None:
            footer += f"; copy at 0x0: {report.copy_state}"
        lines.append(footer)
    prefix = f"{report.path}: "
    for problem in report.problems:
        message = problem.message
        if message.startswith(prefix):
            message = message[len(prefix):]
        where = f" @{problem.offset:#x}" if problem.offset is not None else ""
        lines.append(f"  {problem.severity:<7} {problem.code}{where}: {message}")
    if report.stopped:
        lines.append(f"  checking stopped: {report.stopped}")
    return lines


def render(report) -> str:
    """The text report: each chain member, then one summary line."""
    lines = []
    for member in report.chain:
        lines += _member_lines(member)
    errors, warnings = len(report.errors), len(report.warnings)
    leaks = sum(len(member.leaks) for member in report.chain)
    extra = f" ({plural(warnings, 'warning')})" if warnings else ""
    if errors:
        lines.append(
            f"{plural(errors, 'error')} found{extra}: the image is corrupt; "
            f"'vhdcore repair --dry-run' shows what can be fixed."
        )
    elif leaks:
        lines.append(
            f"No errors; {plural(leaks, 'leaked region')} ({report.leaked_bytes} bytes) "
            f"found{extra}: wasted space, no harm to the data."
        )
    else:
        lines.append(f"No errors were found on the image{extra}.")
    return "\n".join(lines)


def run(args) -> int:
    from .. import formats as registry

    fmt = registry.get(args.src_format) if args.src_format else registry.detect_path(args.image)
    if fmt.check is None:
        # The VHD check names what the file is instead (a raw disk, a VHDX, ...).
        fmt = registry.get("vhd")
    report = fmt.check(
        args.image, parents=args.parents, deep=args.deep, **chain_options(args)
    )
    if args.json:
        emit_json(report.to_dict())
    else:
        print(render(report))
    return report.exit_code
