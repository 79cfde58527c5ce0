"""``check``: every structural rule of a VHD, reported, never raised.

:func:`check` reads an image (read-only: not one byte changes) and returns
a :class:`CheckReport` listing every :class:`~vhdcore.problems.Problem` it
finds, graded ``error`` / ``warning`` / ``leak``, each with a stable code,
a message naming the file, the structure, the offset and the values, and
the byte offset it is about. It follows blktap's ``vhd-util check`` rules
(both footers, dynamic header, parent fields, BAT placement, batmap,
parent locators, file size) with three differences on purpose:

* it reports everything it can instead of stopping at the first finding;
  only a problem that leaves nothing to check against (no footer at all,
  no dynamic header) stops it, and the report says so (``stopped``);
* the BAT overlap test sorts (``kernels.bat_scan``) instead of comparing
  pairs, and the last partial block is checked like every other;
* leaked space (file bytes no structure accounts for, e.g. an orphan block
  left by a crash between extending the file and writing the BAT) is
  reported as in ``qemu-img check``, and ``deep`` adds the data rules
  (non-zero sectors under clear bitmap bits).

Exit codes (:attr:`CheckReport.exit_code`, as ``qemu-img check``): 0 clean
(warnings allowed), 2 corruption found, 3 only leaks, 1 could not check
(the CLI's code for an ``OSError`` such as a missing file, and for a file
that is no VHD at all: a raw disk, or another format's image, for which
:func:`check` raises :class:`~vhdcore.errors.NotVHDError` instead of
reporting the raw bytes at its end as a damaged footer).

The default check reads the footers, the header, the BAT, the batmap and
the locator payloads, nothing else, and never loops over blocks in Python:
its cost is one BAT read plus a sort.

The rules live in one module per part of the file: :mod:`.footers`, :mod:`.tables`
(header, table, batmap, placement), :mod:`.leaks`, :mod:`.deep` and :mod:`.parents`;
:mod:`.report` says what a check returns.
"""

from __future__ import annotations

import os
import time
from typing import Optional, Sequence

from ....errors import (
    CorruptImageError,
    NotVHDError,
    ParentNotFoundError,
)
from ....io.imagefile import open_image_file
from ....problems import Problem
from ..chain import ParentPolicy, file_identity
from ..constants import (
    DISK_FIXED,
    DISK_TYPE_NAMES,
)
from .base import (
    MIN_LEAK,
    _Stop,
)
from .deep import DeepRules
from .footers import FooterRules
from .leaks import LeakRules
from .parents import ParentRules, _chain_rules
from .report import (
    EXIT_CANNOT_CHECK,
    EXIT_CLEAN,
    EXIT_CORRUPT,
    EXIT_LEAKS,
    PROBLEM_CODES,
    CheckReport,
    Leak,
)
from .tables import TableRules

__all__ = [
    "check",
    "CheckReport",
    "Leak",
    "EXIT_CLEAN",
    "EXIT_CANNOT_CHECK",
    "EXIT_CORRUPT",
    "EXIT_LEAKS",
    "MIN_LEAK",
    "PROBLEM_CODES",
]


def check(
    path,
    parents: bool = False,
    deep: bool = False,
    *,
    allow_parent_dirs: Sequence = (),
    allow_symlinks: bool = False,
    max_chain_depth: Optional[int] = None,
    now: Optional[float] = None,
) -> CheckReport:
    """Check an image and report every problem found; never modifies the file.

    Args:
        path: the image.
        parents: check every member of a differencing chain fully, plus
            the chain rules (equal block sizes, parent not smaller than the
            child). Without it a differencing disk's parent is only found
            and its UUID compared.
        deep: also read every allocated block's bitmap and the data under
            clear bits (bounded per block, streaming), which must be zero.
        allow_parent_dirs, allow_symlinks, max_chain_depth: the parent
            policy, as for :func:`vhdcore.open`: parents are looked for
            only in the leaf's directory and these, never through links.
        now: Unix time to judge footer timestamps by (default: now).

    Returns:
        The :class:`CheckReport`; damaged images never raise.

    Raises:
        OSError: the image cannot be opened or read at all (missing file,
            permission, I/O error): "could not check", exit code 1.
        NotVHDError: the file shows no sign of a VHD (no footer cookie, not
            even a damaged one, at its end or at offset 0; no dynamic
            header): "could not check" too. :class:`ForeignFormatError`
            (a subclass) names the format when the magic shows one.
    """
    policy = ParentPolicy.for_leaf(
        path, allow_parent_dirs=allow_parent_dirs, allow_symlinks=allow_symlinks,
        max_depth=max_chain_depth,
    )
    return _check_member(
        os.fspath(path), parents=parents, deep=deep, policy=policy,
        now=time.time() if now is None else now, depth=0, seen=(),
    )


def _check_member(path, *, parents, deep, policy, now, depth, seen) -> CheckReport:
    with open_image_file(path) as image_file:
        checker = _Checker(path, image_file, now=now, deep=deep)
        report = checker.run()
        parent_path = None
        if report.type == "differencing" and report.header is not None and not report.stopped:
            parent_path = checker.check_parent(policy, depth, seen)
    if parents and parent_path is not None:
        own = seen + (file_identity(path),)
        try:
            parent = _check_member(
                parent_path, parents=True, deep=deep, policy=policy, now=now,
                depth=depth + 1, seen=own,
            )
        except (OSError, NotVHDError) as exc:
            report.problems.append(Problem(
                "parent.unreadable",
                f"{path}: parent {parent_path} cannot be read: "
                f"{getattr(exc, 'strerror', None) or exc}",
                "error", None, ParentNotFoundError,
            ))
        else:
            report.parent = parent
            _chain_rules(report, parent)
    return report


class _Checker(FooterRules, TableRules, LeakRules, DeepRules, ParentRules):
    """Checks one image file; :meth:`run` fills a :class:`CheckReport`."""

    def run(self) -> CheckReport:
        report = self.report
        try:
            report.file_size = self.size = self.f.size()
            self._locate_footer()
            footer = report.footer
            report.type = DISK_TYPE_NAMES.get(footer.disk_type)
            report.virtual_size = footer.virtual_size
            if footer.disk_type == DISK_FIXED:
                report.end_of_data = footer.current_size
                return report
            self._check_dynamic()
        except _Stop:
            pass
        except CorruptImageError as exc:
            # A short read: the file changed size while being checked.
            self.add("file.short_read", f"{exc}; checking stopped", offset=None)
            report.stopped = str(exc)
        return report
