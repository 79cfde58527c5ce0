"""One exception hierarchy for every module, every format and both kernel backends.

Messages name the file, the structure, the field, the offset and both
values, e.g. ``disk.vhd: footer checksum mismatch at 0x1ffe00: stored
0x0000f1d2, computed 0x0000f1d3``; the CLI prints them as they are.
"""

from __future__ import annotations


class ImageError(Exception):
    """Root of every error vhdcore raises about an image or an operation, in any format."""


#: The root's first name, from when VHD was the only format: the same class,
#: so every ``except VHDError`` catches what it always did, in every format.
VHDError = ImageError


class FormatError(VHDError, ValueError):
    """The bytes are not a well-formed structure of the image's format."""


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


class NotVHDError(FormatError):
    """The file holds no VHD at all: no footer cookie at its end or at offset 0.

    Kept apart from :class:`CorruptImageError` so ``check`` can say "could
    not check" (exit 1) for a raw disk given as a VHD instead of "corrupt".
    """


class ForeignFormatError(NotVHDError, UnsupportedError):
    """The file is an image of another format (qcow2, VHDX, VMDK, VDI, QED).

    Attributes:
        format_name: the format found by its magic, e.g. ``"qcow2"``.
    """

    def __init__(self, message: str, format_name: str = ""):
        super().__init__(message)
        self.format_name = format_name

    def __reduce__(self):
        return type(self), (str(self), self.format_name)


class StorageError(VHDError, OSError):
    """The operating system refused a read or a write: disk full, I/O error,
    a directory, a read-only file system, a permission.

    ``OSError`` alone often names no file (``pwrite`` on a full disk) or the
    wrong one (a conversion's temporary file); this one names the file the
    user gave and what was being done. It is still an ``OSError`` (with
    ``errno``, ``strerror`` and ``filename``), so ``except OSError`` code
    keeps working.
    """

    def __init__(self, message: str, errno: int | None = None, filename=None,
                 strerror: str | None = None):
        OSError.__init__(self, errno, strerror or message)
        self.filename = filename
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return type(self), (self.message, self.errno, self.filename, self.strerror)


def storage_error(exc: OSError, name, action: str) -> OSError:
    """``exc`` as a :class:`StorageError` naming ``name`` and ``action``.

    Args:
        exc: what the OS raised.
        name: the file to name: the user's file, not a temporary one.
        action: what was being done, e.g. ``"cannot write 4096 bytes at 0x200"``.

    Returns:
        ``exc`` itself when it is already a :class:`VHDError` (it named the
        file when it was made), else the new error (raise it ``from exc``).
    """
    if isinstance(exc, VHDError):
        return exc
    reason = exc.strerror or str(exc) or type(exc).__name__
    return StorageError(f"{name}: {action}: {reason}", exc.errno, str(name), exc.strerror)
