"""Argument types and output helpers shared by the subcommands.

Every value the command line takes is checked by one of the argument
types here, at parse time: a bad size, block size or count is then a
usage error (exit 64) like any other mistake in the command line, the
same code whatever is wrong with the value.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from .. import formats as registry
from ..formats.vhd.constants import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from ..sizes import format_size, parse_size, plural  # noqa: F401 (plural: for the commands)


def size_argument(text: str) -> int:
    """argparse type for sizes such as ``512M``, ``10G`` or ``4096``."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: ``-f`` values, from the registry: every format's name and aliases
#: (``vpc`` is qemu's name for VHD, accepted where users type it).
INPUT_FORMATS = registry.names()
#: ``-O`` values: every subformat, then each writable format's names.
OUTPUT_FORMATS = registry.output_names()


def block_size_argument(text: str) -> int:
    """argparse type for ``--block-size``: a power of two the format allows."""
    size = size_argument(text)
    if not MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE or size & (size - 1):
        raise argparse.ArgumentTypeError(
            f"invalid block size {text!r}: a power of two from {format_size(MIN_BLOCK_SIZE)} "
            f"to {format_size(MAX_BLOCK_SIZE)} (e.g. 512K or 2M)"
        )
    return size


def cluster_size_argument(text: str) -> int:
    """argparse type for ``--cluster-size``: a power of two qcow2 allows (512 B to 2 MiB)."""
    size = size_argument(text)
    if not 512 <= size <= 2 << 20 or size & (size - 1):
        raise argparse.ArgumentTypeError(
            f"invalid cluster size {text!r}: a power of two from 512 to 2M (e.g. 64K)"
        )
    return size


def count_argument(text: str) -> int:
    """argparse type for counts such as ``--max-chain-depth``: a whole number from 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: a whole number from 1")
    return int(text)


def add_format_flag(parser: argparse.ArgumentParser,
                    help: Optional[str] = None) -> None:
    """Add ``-f/--format`` (as ``src_format``) for commands that read any image."""
    if help is None:
        help = (f"image format: {', '.join(INPUT_FORMATS)}; default: detected from the "
                f"image's magic (a file no format recognises is raw; the magic of a format "
                f"vhdcore does not read is refused); raw never probes")
    parser.add_argument("-f", "--format", dest="src_format", choices=INPUT_FORMATS, help=help)


def add_vhd_format_flag(parser: argparse.ArgumentParser) -> None:
    """``-f vhd|vpc`` for commands that read only VHDs, as ``qemu-img check -f vpc`` is typed.

    Nothing to choose: a file that is not a VHD is refused by name either way.
    """
    parser.add_argument(
        "-f", "--format", dest="src_format", choices=("vhd", "vpc"),
        help="the image format: vhd (qemu's vpc), the only one this command reads",
    )


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """Add the ``--json`` flag every reporting command carries."""
    parser.add_argument(
        "--json", action="store_true", help="print a JSON object instead of text"
    )


def emit_json(data) -> None:
    """Print ``data`` as indented JSON on stdout."""
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def add_chain_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that govern which parent files a differencing chain may open."""
    parser.add_argument(
        "--allow-parent-dir", action="append", default=[], metavar="DIR",
        help="also allow parents in DIR (repeatable; the image's own directory is always allowed)",
    )
    parser.add_argument(
        "--allow-symlinks", action="store_true",
        help="follow symbolic links in parent paths (the target must still be in an allowed dir)",
    )
    parser.add_argument(
        "--max-chain-depth", type=count_argument, default=None, metavar="N",
        help="refuse chains of more than N images (default 30)",
    )


def chain_options(args) -> dict:
    """Keyword arguments for ``vhdcore.open`` from :func:`add_chain_flags`' flags."""
    return {
        "allow_parent_dirs": tuple(getattr(args, "allow_parent_dir", ()) or ()),
        "allow_symlinks": bool(getattr(args, "allow_symlinks", False)),
        "max_chain_depth": getattr(args, "max_chain_depth", None),
    }
