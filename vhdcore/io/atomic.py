"""Atomic placement: a new file appears whole, or not at all.

Every operation that makes a file (``create``, ``convert``, ``compact``
to a new name, the repair backup) builds it under a temporary name beside
the destination (the same directory, so the final step cannot cross file
systems), fsyncs it, and only then gives it its name, fsyncing the
directory after. A crash or an error at any point leaves the destination
as it was: absent, or the old file. The temporary names share one scheme,
``.NAME.vhdcore-tmp-XXXXXXXX``, so :func:`remove_stale_temps` can sweep the
leftovers of killed runs, and error messages never show them (the handle
is opened under the destination's name).

Without ``replace`` the final step is ``link`` and ``unlink``, which fails
if the destination appeared meanwhile; with it, ``rename`` replaces it.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator, List, Optional

from ..errors import LockedError, storage_error
from .imagefile import open_image_file

#: What marks a temporary name as ours.
TEMP_MARK = ".vhdcore-tmp-"
#: A leftover younger than this (seconds) may belong to a run still starting
#: (created, not yet locked): the sweep leaves it alone.
STALE_AFTER = 5.0


def temp_path(dst) -> str:
    """A fresh temporary name beside ``dst``."""
    directory, name = os.path.split(os.path.abspath(os.fspath(dst)))
    return os.path.join(directory, f".{name}{TEMP_MARK}{os.urandom(4).hex()}")


def remove_stale_temps(dst) -> List[str]:
    """Delete leftovers of killed runs writing ``dst``; returns their names.

    A leftover is a ``.NAME.vhdcore-tmp-*`` file beside ``dst`` that nobody
    holds locked and that is older than :data:`STALE_AFTER` seconds.
    """
    directory, name = os.path.split(os.path.abspath(os.fspath(dst)))
    prefix = f".{name}{TEMP_MARK}"
    removed = []
    try:
        names = [entry.name for entry in os.scandir(directory) if entry.name.startswith(prefix)]
    except OSError:
        return removed
    for leftover in names:
        path = os.path.join(directory, leftover)
        try:
            if time.time() - os.lstat(path).st_mtime < STALE_AFTER:
                continue
            handle = open_image_file(path, writable=True)
        except (LockedError, OSError):
            continue  # a live run holds it, or it is already gone
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
        finally:
            handle.close()
    return removed


def fsync_directory(path) -> None:
    """Make the directory entry of ``path`` durable (where the system allows)."""
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - a directory we cannot open
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def place(tmp: str, dst, *, replace: bool, exists: Callable[[], BaseException],
          durable: bool = True) -> None:
    """Give the finished ``tmp`` the name ``dst``.

    Args:
        replace: replace an existing ``dst``; otherwise refuse one, even
            one that appeared after the caller checked.
        exists: the error to raise when ``dst`` exists and may not be replaced.
        durable: fsync the directory afterwards.

    Raises:
        StorageError: the rename or link failed, naming ``dst``.
    """
    dst = os.fspath(dst)
    try:
        if replace:
            os.replace(tmp, dst)
        else:
            os.link(tmp, dst)  # fails, atomically, if dst appeared meanwhile
            os.unlink(tmp)
    except FileExistsError:
        raise exists() from None
    except OSError as exc:
        raise storage_error(exc, dst, "cannot put the finished file in place") from exc
    if durable:
        fsync_directory(dst)


@contextlib.contextmanager
def new_file(dst, *, replace: bool, exists: Callable[[], BaseException],
             durable: bool = True, mode: Optional[int] = None) -> Iterator:
    """A writable :class:`~vhdcore.io.imagefile.ImageFile` that becomes ``dst`` on success.

    The handle is a new temporary file beside ``dst``, locked and named
    ``dst`` in errors. When the block ends normally it is fsynced (if
    ``durable``), closed and placed (see :func:`place`); when it raises,
    the temporary file is removed and ``dst`` is untouched.

    Args:
        mode: permission bits to set at once (a backup holding image bytes
            is ``0o600``); default the usual ``0o644`` less the umask.
    """
    tmp = temp_path(dst)
    out = open_image_file(tmp, writable=True, create=True, name=os.fspath(dst))
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        yield out
        if durable:
            out.flush()
        out.close()
        place(tmp, dst, replace=replace, exists=exists, durable=durable)
    except BaseException:
        out.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


__all__ = [
    "STALE_AFTER",
    "TEMP_MARK",
    "fsync_directory",
    "new_file",
    "place",
    "remove_stale_temps",
    "temp_path",
]
