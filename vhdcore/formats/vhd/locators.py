"""Parent locator payloads: decode, encode, and where to look for a parent.

A differencing disk names its parent several ways: ``W2ru`` (a relative
Windows path, UTF-16LE), ``W2ku`` (an absolute one, UTF-16LE), ``MacX``
(a UTF-8 ``file://`` URL) and the header's UTF-16BE parent name. Writers
disagree on details: blktap stores the same *relative* path in all three
locators and does not percent-encode its ``file://`` URL; Hyper-V stores
drive-letter paths. Everything here is pure string work: no filesystem
access, so the path policy (confining parents to a directory) can sit on
top and decide which candidate to open.
"""

from __future__ import annotations

import ntpath
import os
import urllib.parse
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import List, Mapping, Optional, Sequence, Tuple, Union

from ...errors import FormatError, UnsupportedError
from .constants import (
    PLATFORM_MAC,
    PLATFORM_MACX,
    PLATFORM_W2KU,
    PLATFORM_W2RU,
    PLATFORM_WI2K,
    PLATFORM_WI2R,
)

__all__ = [
    "decode_locator",
    "encode_locator",
    "candidate_paths",
    "relative_parent_path",
    "CANDIDATE_ORDER",
]

# The order candidate_paths tries the locator codes; the header's parent
# name comes last. Deprecated codes follow their modern equivalents.
CANDIDATE_ORDER = (PLATFORM_W2RU, PLATFORM_W2KU, PLATFORM_MACX, PLATFORM_WI2R, PLATFORM_WI2K)

_FILE_SCHEME = "file://"

PathLike = Union[str, "os.PathLike[str]"]


def _code(code) -> bytes:
    return code.encode("latin-1") if isinstance(code, str) else bytes(code)


def _strip_nuls(text: str, code: bytes) -> str:
    text = text.rstrip("\0")
    if "\0" in text:
        raise FormatError(f"{code.decode('latin-1')} locator holds a NUL inside the path")
    return text


def decode_locator(code, data) -> str:
    """The path or URL stored in a locator payload.

    ``W2ku``/``W2ru`` decode as UTF-16LE, ``MacX`` as a UTF-8 ``file://``
    URL whose path is returned percent-decoded (``file://localhost/x`` and
    ``file:///x`` give ``/x``; blktap's ``file://./x`` gives ``./x``).
    The deprecated ``Wi2r``/``Wi2k`` are read as single-byte strings
    (UTF-8 when valid, else Latin-1). Trailing NULs are padding.

    Raises:
        FormatError: undecodable bytes (odd UTF-16 length, lone
            surrogates, invalid UTF-8), a NUL inside the path, or a
            ``MacX`` payload that is not a ``file://`` URL.
        UnsupportedError: ``Mac `` (a Mac OS alias blob) or an unknown code.
    """
    code = _code(code)
    raw = bytes(data)
    name = code.decode("latin-1")
    if code in (PLATFORM_W2KU, PLATFORM_W2RU):
        if len(raw) % 2:
            # A stray padding byte; anything else is not UTF-16.
            if raw[-1:] != b"\0":
                raise FormatError(f"{name} locator has an odd length ({len(raw)} bytes) of UTF-16")
            raw = raw[:-1]
        while raw[-2:] == b"\0\0":
            raw = raw[:-2]
        try:
            text = raw.decode("utf-16-le")  # strict: lone surrogates raise
        except UnicodeDecodeError as exc:
            raise FormatError(f"{name} locator is not valid UTF-16LE: {exc.reason}") from None
        return _strip_nuls(text, code)
    if code == PLATFORM_MACX:
        try:
            text = _strip_nuls(raw.decode("utf-8"), code)
        except UnicodeDecodeError as exc:
            raise FormatError(f"MacX locator is not valid UTF-8: {exc.reason}") from None
        if not text.lower().startswith(_FILE_SCHEME):
            raise FormatError(f"MacX locator {text!r} is not a file:// URL")
        rest = text[len(_FILE_SCHEME) :]
        if rest.lower().startswith("localhost/"):
            rest = rest[len("localhost") :]
        try:
            path = urllib.parse.unquote(rest, errors="strict")
        except UnicodeDecodeError as exc:
            raise FormatError(f"MacX locator percent-escapes invalid UTF-8: {exc.reason}") from None
        return _strip_nuls(path, code)
    if code in (PLATFORM_WI2R, PLATFORM_WI2K):
        raw = raw.rstrip(b"\0")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        return _strip_nuls(text, code)
    if code == PLATFORM_MAC:
        raise UnsupportedError("Mac locators hold a Mac OS alias record, which vhdcore cannot read")
    raise UnsupportedError(f"unknown parent locator code {code!r}")


def encode_locator(code, path: PathLike) -> bytes:
    """The payload for a locator of ``code`` naming ``path``.

    ``W2ru`` takes a path relative to the child's directory and stores it
    Windows-style (``.\\parent.vhd``, ``..\\base\\parent.vhd``); ``W2ku``
    stores the path as given, with backslashes for a Windows path and
    unchanged for a POSIX one; ``MacX`` stores ``file://`` plus the path
    percent-encoded as UTF-8. No NUL terminator is written.

    Raises:
        ValueError: an empty path, a NUL, lone surrogates, an absolute
            path for ``W2ru``, or an unsupported ``code``.
    """
    code = _code(code)
    text = os.fspath(path)
    if not text:
        raise ValueError("a parent locator needs a non-empty path")
    if "\0" in text:
        raise ValueError("a parent locator path must not contain NUL")
    if code == PLATFORM_W2RU:
        if _is_absolute(text):
            raise ValueError(f"W2ru needs a relative path, not {text!r}")
        windows = text.replace("/", "\\")
        if not (windows.startswith(".\\") or windows.startswith("..\\")):
            windows = ".\\" + windows
        return windows.encode("utf-16-le")
    if code == PLATFORM_W2KU:
        if PureWindowsPath(text).drive or text.startswith("\\"):
            text = text.replace("/", "\\")
        return text.encode("utf-16-le")
    if code == PLATFORM_MACX:
        return (_FILE_SCHEME + urllib.parse.quote(text, safe="/", errors="strict")).encode("ascii")
    raise ValueError(f"vhdcore writes W2ru, W2ku and MacX locators, not {code!r}")


def relative_parent_path(child_path: PathLike, parent_path: PathLike) -> str:
    """The parent's path relative to the child's directory (pure string work)."""
    child_dir = os.path.dirname(os.path.abspath(os.fspath(child_path)))
    return os.path.relpath(os.path.abspath(os.fspath(parent_path)), child_dir)


def _is_absolute(text: str) -> bool:
    return text.startswith(("/", "\\")) or bool(PureWindowsPath(text).drive)


def _to_local(text: str, child_dir: Path) -> Optional[Path]:
    """A locator path as a local path, or None when it cannot name a local file."""
    windows = PureWindowsPath(text)
    if os.name == "nt":
        local = Path(text)
        return local if local.is_absolute() else child_dir / local
    if windows.drive:
        # C:\dir\parent.vhd or \\server\share\... : not a path on this host.
        return None
    posix = text.replace("\\", "/")
    if posix.startswith("/"):
        return Path(posix)
    return child_dir / PurePosixPath(posix)


def _basename(name: str) -> str:
    return ntpath.basename(name.replace("/", "\\"))


def _payload(payloads, index: int, code: bytes):
    if payloads is None:
        return None
    if isinstance(payloads, Mapping):
        if index in payloads:
            return payloads[index]
        return payloads.get(code)
    if index < len(payloads):
        return payloads[index]
    return None


def candidate_paths(
    child_path: PathLike,
    header,
    payloads: Union[Mapping, Sequence, None],
) -> List[Tuple[bytes, Path]]:
    """Where to look for the parent, in the order to try, without touching disk.

    Order: ``W2ru`` resolved against the child's directory, ``W2ku``,
    ``MacX``, the deprecated ``Wi2r``/``Wi2k``, then the basename of the
    header's parent name beside the child (code ``b"name"``). Relative
    paths in any locator are resolved against the child's directory, as
    blktap does. Undecodable payloads, Windows drive paths on POSIX and
    duplicates are skipped.

    Args:
        child_path: the differencing disk's path.
        header: its :class:`~vhdcore.formats.vhd.header.DynamicHeader`.
        payloads: the bytes read at each used locator's data offset: a
            sequence aligned with ``header.locators`` or a mapping keyed
            by locator index (or by platform code). Payloads longer than
            the locator's data length are cut to it.

    Returns:
        ``[(code, Path), ...]``; the paths are not normalised or resolved.
    """
    child_dir = Path(os.fspath(child_path)).parent
    found = {}
    for index, locator in enumerate(header.locators):
        if locator.is_unused or locator.code not in CANDIDATE_ORDER:
            continue
        data = _payload(payloads, index, locator.code)
        if data is None:
            continue
        data = bytes(data)[: locator.data_length] if locator.data_length else bytes(data)
        try:
            text = decode_locator(locator.code, data)
        except (FormatError, UnsupportedError):
            continue
        if not text:
            continue
        local = _to_local(text, child_dir)
        if local is not None:
            found.setdefault(locator.code, []).append(local)

    result: List[Tuple[bytes, Path]] = []
    seen = set()

    def offer(code: bytes, path: Path) -> None:
        if path not in seen:
            seen.add(path)
            result.append((code, path))

    for code in CANDIDATE_ORDER:
        for path in found.get(code, ()):
            offer(code, path)
    name = header.parent_name
    base = _basename(name) if name else ""
    if base and "\ufffd" not in base and "\0" not in base and base not in (".", ".."):
        offer(b"name", child_dir / base)
    return result
