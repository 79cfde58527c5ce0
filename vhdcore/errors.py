"""One exception hierarchy for every module and both kernel backends.

Messages name the file, the structure, the field, the offset and both
values, e.g. ``disk.vhd: footer checksum mismatch at 0x1ffe00: stored
0x0000f1d2, computed 0x0000f1d3``; the CLI prints them as they are.
"""

from __future__ import annotations


class VHDError(Exception):
    """Root of every error vhdcore raises about an image or an operation."""


class FormatError(VHDError, ValueError):
    """The bytes are not a well-formed VHD structure."""


class ChecksumError(FormatError):
    """A stored checksum does not match the bytes it covers."""


class CorruptImageError(FormatError):
    """Structures parse but contradict each other or the file."""


class UsageError(VHDError, ValueError):
    """The caller asked wrongly: a bad value, or options that contradict each other.

    Raised before anything is opened for writing or changed. The command
    line exits 64 (``EX_USAGE``) for it, as for a mistyped flag, so a
    script can tell "called wrongly" from "could not do it" (1) and from
    ``check``'s verdicts (2, 3).
    """


class UnsupportedError(VHDError):
    """A valid image or request that vhdcore does not handle."""


class LimitError(VHDError, ValueError):
    """A size, count or depth beyond what the format or a policy allows."""


class ArgumentLimitError(LimitError, UsageError):
    """A size or block size the caller asked for lies beyond what the format allows.

    Both a :class:`LimitError` and a :class:`UsageError`: nothing was
    changed, and asking for another value fixes it (exit 64). A limit
    met by the data (a source too large for a dynamic VHD) stays a plain
    :class:`LimitError`.
    """


class ParentNotFoundError(VHDError, FileNotFoundError):
    """No parent locator of a differencing disk leads to a readable file."""


class ParentMismatchError(VHDError):
    """A parent was found but is not the one the child was made from."""


class ChainLoopError(VHDError):
    """A differencing chain refers back to one of its own members."""


class ReadOnlyError(VHDError):
    """A write was attempted through a read-only handle."""


class OutOfRangeError(VHDError, ValueError):
    """An access lies outside the virtual disk."""


class LockedError(VHDError):
    """Another writer holds the image."""


class ConversionError(VHDError):
    """A conversion could not be completed; the destination was not created."""


class UnsafeParentError(VHDError):
    """A parent locator leads outside the allowed directories or through a symlink."""
