"""Argument types and output helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import sys

from ..sizes import parse_size


def size_argument(text: str) -> int:
    """argparse type for sizes such as ``512M``, ``10G`` or ``4096``."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """Add the ``--json`` flag every reporting command carries."""
    parser.add_argument(
        "--json", action="store_true", help="print a JSON object instead of text"
    )


def emit_json(data) -> None:
    """Print ``data`` as indented JSON on stdout."""
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
