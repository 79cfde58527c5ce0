"""``vhdcore convert SRC DST``: any image vhdcore reads to any format it writes.

When DST is ``-`` the image goes to stdout, so the report (text or
``--json``) goes to stderr instead. SIGTERM is turned into an exception
for the duration of the conversion, so ``kill`` cleans up the temporary
file just as Ctrl-C does.
"""

from __future__ import annotations

import signal
import sys

from .. import formats as registry
from ._common import (
    OUTPUT_FORMATS,
    add_chain_flags,
    add_format_flag,
    add_json_flag,
    block_size_argument,
    cluster_size_argument,
    chain_options,
    emit_json,
    plural,
)

HELP = (
    f"convert an image from any format vhdcore reads ({', '.join(registry.names(False))}, "
    f"chains included) to any it writes ({', '.join(OUTPUT_FORMATS)})"
)


def add_arguments(parser):
    parser.add_argument("source", metavar="SRC", help="input image, or - for stdin")
    parser.add_argument("destination", metavar="DST", help="output file, or - for stdout")
    add_format_flag(parser)
    parser.add_argument(
        "-O",
        "--output-format",
        dest="out_format",
        choices=OUTPUT_FORMATS,
        help=f"output format: {', '.join(OUTPUT_FORMATS)}; a format's name means its default "
             f"subformat (vhd and vpc, qemu's name, mean dynamic); default: from DST's suffix "
             f"(.vhd: dynamic), else raw; fixed with --azure, dynamic with --xen",
    )
    parser.add_argument(
        "--block-size",
        type=block_size_argument,
        metavar="SIZE",
        help="block size of a dynamic output: 4K to 256M (default 2M; qemu misreads blocks "
        "below 4K, sizes other than 512K and 2M get a warning)",
    )
    parser.add_argument(
        "--cluster-size",
        type=cluster_size_argument,
        metavar="SIZE",
        help="cluster size of a qcow2 output: 512 to 2M (default 64K, as qemu-img)",
    )
    parser.add_argument(
        "-c",
        "--compress",
        action="store_true",
        help="qcow2 output: deflate every cluster that shrinks (zlib, as qemu-img -c); "
        "to a file only",
    )
    parser.add_argument("-p", "--progress", action="store_true", help="show progress on stderr")
    add_chain_flags(parser)
    parser.add_argument(
        "--digest",
        action="store_true",
        help="print the SHA-256 of the virtual disk (equal to sha256sum of the raw image)",
    )
    parser.add_argument(
        "--azure",
        action="store_true",
        help="a fixed VHD for Azure: size rounded up to a whole MiB, at most 32 TiB",
    )
    parser.add_argument(
        "--xen",
        action="store_true",
        help=(
            "a VHD for Xen / XCP-ng (blktap): creator tap, 2M blocks, blktap's batmap, so "
            "vhd-util resize accepts it"
        ),
    )
    parser.add_argument("--force", action="store_true", help="replace an existing DST")
    parser.add_argument(
        "--no-sync",
        dest="fsync",
        action="store_false",
        help="do not fsync the output before renaming it into place (faster, not crash-safe)",
    )
    add_json_flag(parser)


class _Terminated(Exception):
    """SIGTERM arrived: unwind so the temporary file is removed."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def run(args) -> int:
    from ..formats.vhd.blocksize import check_new_block_size
    from ..ops.convert import convert
    from ..sizes import format_size

    report = sys.stderr if args.destination == "-" else sys.stdout
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (embedded use)
        previous = None
    try:
        result = convert(
            args.source,
            args.destination,
            src_format=args.src_format,
            out_format=args.out_format,
            block_size=args.block_size,
            azure=args.azure,
            xen=args.xen,
            force=args.force,
            digest=args.digest,
            progress=args.progress,
            fsync=args.fsync,
            open_options=chain_options(args),
            options={"cluster_size": args.cluster_size, "compress": args.compress or None},
        )
    except _Terminated:
        print("vhdcore convert: terminated; no destination was written", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    # An unusual block size is a warning on stderr (seen even with --json).
    unusual = check_new_block_size(result.block_size) if result.block_size else None
    if unusual is not None:
        print(f"vhdcore convert: warning: {unusual}", file=sys.stderr)
    if args.json:
        if report is sys.stdout:
            emit_json(result.to_dict())
        else:
            import json

            json.dump(result.to_dict(), sys.stderr, indent=2)
            sys.stderr.write("\n")
        return 0
    out = result.output_format
    if result.block_size:
        out += f", {format_size(result.block_size)} blocks"
    source = result.input_format
    if result.input_format == "vhd":
        source += f" {result.input_type}"  # vhd dynamic, vhd differencing
    allocated = (
        f"; {plural(result.blocks_allocated, 'block')} allocated"
        if result.blocks_allocated is not None
        else ""
    )
    on_disk = (
        f" ({format_size(result.disk_usage)} on disk)" if result.disk_usage is not None else ""
    )
    lines = [
        f"converted {result.source} ({source}) -> {result.destination} ({out})",
        f"  virtual size {format_size(result.virtual_size)} ({result.virtual_size} bytes)",
        (
            f"  read {format_size(result.bytes_read)}, skipped "
            f"{format_size(result.bytes_unread)} known to be zero without reading"
        ),
        (
            f"  wrote {format_size(result.bytes_written)} of data{on_disk}; "
            f"{format_size(result.bytes_zero)} left as zeros{allocated}"
        ),
        f"  {result.seconds:.2f} s, {format_size(int(result.throughput))}/s",
    ]
    if result.digest:
        lines.append(f"sha256: {result.digest}")
        if result.source_digest != result.digest:
            lines.append(f"sha256 of the source before padding: {result.source_digest}")
    for note in result.notes:
        if note != unusual:
            lines.append(f"note: {note}")
    print("\n".join(lines), file=report)
    return 0
