"""``vhdcore compare A B``: do two images hold the same virtual disk?

Exit status as ``qemu-img compare``: 0 equal, 1 different, 2 error. The
mismatch offset is the first differing byte (qemu-img 7.2 prints the start
of its sector). When the sizes differ, the images are equal if the larger
one's extra part is all zeros (qemu-img's default, non-strict mode); the
report says so.
"""

from __future__ import annotations

from ._common import INPUT_FORMATS, add_chain_flags, add_json_flag, chain_options, emit_json

HELP = "compare the contents of two images of any formats (exit 0 equal, 1 different, 2 error)"
ERROR_EXIT = 2


def add_arguments(parser):
    parser.add_argument("first", metavar="A", help="first image (raw or VHD)")
    parser.add_argument("second", metavar="B", help="second image (raw or VHD)")
    parser.add_argument(
        "-f", dest="first_format", choices=INPUT_FORMATS,
        help="format of A: raw, or vhd (qemu's vpc) (default: detected)",
    )
    parser.add_argument(
        "-F", dest="second_format", choices=INPUT_FORMATS,
        help="format of B: raw, or vhd (qemu's vpc) (default: detected)",
    )
    parser.add_argument("-p", "--progress", action="store_true", help="show progress on stderr")
    add_chain_flags(parser)
    add_json_flag(parser)


def run(args) -> int:
    from ..ops.compare import compare_images
    from ..progress import Progress

    meter = Progress(None, label="compare", enabled=args.progress)
    report = compare_images(
        args.first, args.second, args.first_format, args.second_format, progress=meter,
        open_options=chain_options(args),
    )
    if args.json:
        emit_json(report)
    else:
        if report["size_a"] != report["size_b"]:
            print(
                f"Warning: Image size mismatch! ({args.first}: {report['size_a']} bytes, "
                f"{args.second}: {report['size_b']} bytes)"
            )
        if report["identical"]:
            if report["size_a"] != report["size_b"]:
                print("The extra part of the larger image is all zeros.")
            print("Images are identical.")
        else:
            print(f"Content mismatch at offset {report['first_difference']}!")
    return 0 if report["identical"] else 1
