"""The ``vhdcore`` command line: a table of subcommands, one module each.

Every module in :mod:`vhdcore.commands` whose name does not start with an
underscore is a subcommand. It defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``, and may set
``ERROR_EXIT`` (the exit code for a failure; 1 unless the command's peer
convention says otherwise, e.g. ``compare`` uses 2 as ``qemu-img`` does).

A :class:`~vhdcore.errors.VHDError` or ``OSError`` becomes one line on
stderr naming the command and the problem, never a traceback.

Start-up matters (a conversion of an empty image is over in a few
milliseconds): when the first argument names a command, only that
command's module is imported and given a parser; the full table is built
only for ``--help``, ``--version`` and mistakes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import warnings

from . import __version__, commands
from .errors import VHDError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: The reader of our stdout went away (``vhdcore map | head``): exit as a
#: tool killed by SIGPIPE would, quietly.
EXIT_BROKEN_PIPE = 141


def command_names() -> list[str]:
    """The subcommands, sorted: the public modules of :mod:`vhdcore.commands`."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_")
    )


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: every command, or only the command ``only``."""
    parser = argparse.ArgumentParser(
        prog="vhdcore",
        description="Inspect, create, convert, check and repair VHD disk images.",
    )
    parser.add_argument("--version", action="version", version=f"vhdcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in [only] if only else command_names():
        module = importlib.import_module(f"{commands.__name__}.{name}")
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code.

    Ctrl-C at any point, the command's imports and argument parsing
    included, is one line and exit 130, never a traceback. While it runs,
    a warning (a damaged footer read through its copy, ...) prints as one
    line ``vhdcore CMD: warning: MESSAGE`` instead of Python's
    file-and-source-line form.
    """
    if argv is None:
        argv = sys.argv[1:]
    name = argv[0] if argv and not argv[0].startswith("-") else ""
    prefix = f"vhdcore {name}".rstrip()

    def show_warning(message, category, filename, lineno, file=None, line=None):
        print(f"{prefix}: warning: {message}", file=file or sys.stderr)

    shown = warnings.showwarning
    warnings.showwarning = show_warning
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        warnings.showwarning = shown


def _run(argv: list[str]) -> int:
    only = argv[0] if argv and argv[0] in command_names() else None
    args = build_parser(only).parse_args(argv)
    module = args._module
    error_exit = getattr(module, "ERROR_EXIT", EXIT_ERROR)
    try:
        return int(module.run(args))
    except VHDError as exc:
        print(f"vhdcore {args.command}: {exc}", file=sys.stderr)
        return error_exit
    except BrokenPipeError:
        # Python ignores SIGPIPE; say nothing, and keep the interpreter's
        # final flush of stdout from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"vhdcore {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return error_exit


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
