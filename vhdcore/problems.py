"""The record every ``validate()`` returns, and the one way to act on it.

Structures never raise from ``validate()``: they list what is wrong so that
``check`` can report everything at once, while ``open`` calls
:func:`raise_for` and stops at the first error. Each problem carries the
exception class that ``raise_for`` would use, so the decision of *which*
error a rule produces lives next to the rule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List, Optional, Type

from .errors import CorruptImageError, VHDError

__all__ = ["Problem", "raise_for", "errors_in", "where", "SEVERITIES"]

# "leak" marks space that no structure references: harmless for reading,
# reclaimable by repair. Only "error" makes raise_for raise.
SEVERITIES = ("error", "warning", "leak")


@dataclass(frozen=True)
class Problem:
    """One finding about an image.

    Attributes:
        code: stable dotted code, e.g. ``"footer.checksum"``; tests and
            tools match on it, so never reword it.
        message: a full sentence naming the file, structure, field, offset
            and values.
        severity: ``"error"``, ``"warning"`` or ``"leak"``.
        offset: byte offset in the file the problem is about, if any.
        error: the :class:`VHDError` subclass :func:`raise_for` raises.
    """

    code: str
    message: str
    severity: str = "error"
    offset: Optional[int] = None
    error: Type[VHDError] = CorruptImageError

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


def where(path) -> str:
    """The name a message gives the file: its path, or ``<image>`` for bytes with none."""
    text = os.fspath(path) if path != "" else ""
    return text or "<image>"


def errors_in(problems: Iterable[Problem]) -> List[Problem]:
    """The problems of severity ``"error"``, in order."""
    return [problem for problem in problems if problem.severity == "error"]


def raise_for(problems: Iterable[Problem]) -> None:
    """Raise the exception of the first ``"error"`` problem, if any.

    Warnings and leaks never raise.

    Raises:
        VHDError: the first error's ``error`` class, with its message.
    """
    for problem in problems:
        if problem.severity == "error":
            raise problem.error(problem.message)
