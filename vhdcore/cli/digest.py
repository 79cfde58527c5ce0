"""``vhdcore digest IMAGE``: SHA-256 of the virtual disk, equal to ``sha256sum`` of its raw form."""

from __future__ import annotations

from ._common import add_chain_flags, add_format_flag, add_json_flag, chain_options, emit_json

HELP = "SHA-256 of an image's virtual disk contents (the same for raw, fixed, dynamic, chains)"


def add_arguments(parser):
    parser.add_argument("image", help="a raw or VHD image, or - for stdin")
    add_format_flag(parser)
    parser.add_argument("-p", "--progress", action="store_true", help="show progress on stderr")
    add_chain_flags(parser)
    add_json_flag(parser)


def run(args) -> int:
    from ..disk.sources import open_source
    from ..ops.digest import digest_report
    from ..progress import Progress

    with open_source(args.image, args.src_format, chain_options(args)) as source:
        meter = Progress(source.virtual_size, label="sha256", enabled=args.progress)
        report = digest_report(source, progress=meter)
    report["image"] = args.image
    if args.json:
        emit_json(report)
    else:
        # The sha256sum line format, so the output can be checked with sha256sum -c
        # against the raw image of the same name.
        print(f"{report['sha256']}  {args.image}")
    return 0
