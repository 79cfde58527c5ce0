"""The ``vhdcore`` command line: a table of subcommands, one module each.

Every module of this package whose name does not start with an
underscore is a subcommand. It defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``, and may set
``ERROR_EXIT`` (the exit code for a failure; 1 unless the command's peer
convention says otherwise, e.g. ``compare`` uses 2 as ``qemu-img`` does).

A :class:`~vhdcore.errors.VHDError` or ``OSError`` becomes one line on
stderr naming the command and the problem, never a traceback.

Exit codes are one table for every command (:data:`EXIT_CODES`, printed
by ``vhdcore --help``): a mistake in the command line, caught by argparse
or raised as :class:`~vhdcore.errors.UsageError`, is 64 (``EX_USAGE``
from sysexits.h), apart from every verdict: argparse's own 2 would read
as ``check``'s "corrupt".

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
import re
import sys
import warnings

from .. import __version__
from ..errors import UsageError, VHDError

EXIT_OK = 0
EXIT_ERROR = 1
#: A mistake in the command line: unknown flag, missing argument, a bad
#: value, contradictory options. Nothing was opened for writing.
EXIT_USAGE = 64
EXIT_INTERRUPTED = 130
#: The reader of our stdout went away (``vhdcore map | head``): exit as a
#: tool killed by SIGPIPE would, quietly.
EXIT_BROKEN_PIPE = 141


#: The exit status table, for ``vhdcore --help`` (README "Commands" holds
#: the same table; a test keeps them equal to what the commands return).
EXIT_CODES = """\
exit status (the same for every command):
  0    success; check: no errors (warnings allowed); compare: identical
  1    could not do it: a file missing, unreadable, locked or not an image,
       the destination exists (use --force), an I/O error;
       compare: the images differ
  2    check: corruption found; repair: errors remain;
       compare: could not compare (compare's 1 and 2 are qemu-img's)
  3    check: only leaked space found (no errors)
  64   usage: unknown flag, missing or extra argument, a bad size, block
       size or count, options that contradict each other; nothing changed
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM); 141 stdout closed
"""


class _UsageMistake(Exception):
    """argparse found a mistake in the command line (raised instead of exiting 2)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser = parser
        self.message = message


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose mistakes become :data:`EXIT_USAGE`, not exit 2.

    A value that starts with ``-`` and a digit (``resize IMG -32M``,
    ``--block-size -4K``) is taken as a value, as Python 3.13's argparse
    does, so the argument's type says what is wrong with it instead of
    "expected one argument". No flag of ours starts with a digit.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message):
        raise _UsageMistake(self, message)


def command_names() -> list[str]:
    """The subcommands, sorted: the public modules of this package."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_")
    )


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: every command, or only the command ``only``."""
    parser = _Parser(
        prog="vhdcore",
        description="Inspect, create, convert, check and repair VHD disk images.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vhdcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in [only] if only else command_names():
        module = importlib.import_module(f"{__name__}.{name}")
        command = sub.add_parser(
            name, help=module.HELP, description=module.HELP,
            epilog="exit status: 0 success, 1 could not do it, 64 usage error; "
                   "'vhdcore --help' has the whole table",
        )
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
    try:
        args = build_parser(only).parse_args(argv)
    except _UsageMistake as mistake:
        mistake.parser.print_usage(sys.stderr)
        print(f"{mistake.parser.prog}: error: {mistake.message}", file=sys.stderr)
        return EXIT_USAGE
    module = args._module
    error_exit = getattr(module, "ERROR_EXIT", EXIT_ERROR)
    try:
        return int(module.run(args))
    except UsageError as exc:
        print(f"vhdcore {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
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
