"""Recognise other disk formats by their magic, so they are refused by name.

vhdcore reads the formats of its registry (raw, VHD, qcow2). Without this
table a VHDX or VMDK file given to ``convert`` would be copied as raw bytes
into a VHD, silently: the worst outcome a migration tool can have. Each
entry says where a format's magic lies and how to name what was found. A
registered format found here (qcow2 given to a VHD-only command, or on a
pipe) is named too, with what reads it instead.

Detection reads only the first :data:`HEAD_SIZE` bytes. A VHD footer at the
end of the file wins over anything at the start (a fixed VHD's data may
itself begin with a qcow2 header), so callers probe here only once the
file has shown no VHD footer. ``-f raw`` never probes.
"""

from __future__ import annotations

import os
import re
import struct
from typing import Callable, NamedTuple, Optional

from ..errors import ForeignFormatError, NotVHDError
from .vhd.constants import DYNAMIC_COOKIE, FOOTER_COOKIE, FOOTER_SIZE, LEGACY_FOOTER_SIZE

#: Bytes of the file's start that :func:`identify` looks at.
HEAD_SIZE = 1024


class Found(NamedTuple):
    """A foreign image: ``format`` as qemu names it, ``what`` for messages."""

    format: str
    what: str
    #: Advice that replaces the default (convert it with qemu-img).
    hint: str = ""


def _qcow(head: bytes) -> Optional[Found]:
    # qcow (version 1) and qcow2 (versions 2 and 3) share their magic.
    version = struct.unpack_from(">I", head, 4)[0] if len(head) >= 8 else 0
    if version == 1:
        return Found("qcow", "a qcow (version 1) image")
    return Found("qcow2", f"a qcow2 image (version {version})" if version else "a qcow2 image")


def _vmdk_sparse(head: bytes) -> Optional[Found]:
    # flags (LE u32 at 8): bit 16 compressed grains; compressAlgorithm (LE
    # u16 at 77): 1 = deflate. Both mark a streamOptimized extent.
    flags = struct.unpack_from("<I", head, 8)[0] if len(head) >= 12 else 0
    algorithm = struct.unpack_from("<H", head, 77)[0] if len(head) >= 79 else 0
    if flags & (1 << 16) or algorithm == 1:
        return Found("vmdk", "a VMDK image (streamOptimized)")
    return Found("vmdk", "a VMDK image (monolithicSparse)")


_EXTENT = re.compile(rb'^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+(\w+)\s+"([^"]+)"', re.M)


def _vmdk_descriptor(head: bytes) -> Optional[Found]:
    what = "a VMDK descriptor (text naming the files that hold the data)"
    extents = _EXTENT.findall(head)
    if len(extents) == 1 and extents[0][1].upper() == b"FLAT":
        # monolithicFlat: the one extent is a raw file vhdcore can read.
        name = extents[0][2].decode("utf-8", "replace")
        return Found("vmdk", what, f"its data is in {name!r}, a raw disk that vhdcore reads")
    return Found("vmdk", what)


def _vdi(head: bytes) -> Optional[Found]:
    # The signature 0xbeda107f (LE) at 0x40, after a 64-byte text banner.
    if len(head) >= 0x44 and head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        return Found("vdi", "a VDI (VirtualBox) image")
    return None


def _text_start(head: bytes) -> bytes:
    return head.lstrip(b"\xef\xbb\xbf \t\r\n")[:64].lower()


#: ``(test of the head, what to report)``, in the order they are tried.
PROBES: tuple[tuple[Callable[[bytes], bool], Callable[[bytes], Optional[Found]]], ...] = (
    (lambda h: h[:4] == b"QFI\xfb", _qcow),
    (lambda h: h[:4] == b"QED\x00", lambda h: Found("qed", "a QED image")),
    (lambda h: h[:8] == b"vhdxfile", lambda h: Found("vhdx", "a VHDX image")),
    (lambda h: h[:4] == b"KDMV", _vmdk_sparse),
    (lambda h: h[:4] == b"COWD", lambda h: Found("vmdk", "a VMDK image (ESX sparse, COWD)")),
    (lambda h: _text_start(h).startswith(b"# disk descriptorfile"), _vmdk_descriptor),
    (lambda h: True, _vdi),
)


def identify(head: bytes) -> Optional[Found]:
    """The foreign format whose magic starts ``head``, or ``None``.

    Args:
        head: the first bytes of the file (:data:`HEAD_SIZE` suffice).
    """
    head = bytes(head[:HEAD_SIZE])
    for matches, found in PROBES:
        if matches(head):
            result = found(head)
            if result is not None:
                return result
    return None


def near_cookie(data: bytes, cookie: bytes = FOOTER_COOKIE, slack: int = 2) -> bool:
    """``data`` is ``cookie`` with at most ``slack`` bytes wrong: a damaged VHD
    structure rather than no VHD at all."""
    if len(data) < len(cookie):
        return False
    return sum(a != b for a, b in zip(data, cookie)) <= slack


def shows_vhd(head: bytes, tails) -> bool:
    """Whether a file shows any sign of a VHD, even a damaged one.

    Args:
        head: the file's first bytes (at least 520 when it has them).
        tails: its last 512 and last 511 bytes (those the file has).

    Signs: a footer cookie, or one a byte or two off, at the end or at
    offset 0; a dynamic header cookie at 512; a last sector of 0xC7 bytes
    (blktap's tapdisk "kills" the footer of an image it has open). Without
    any, the file is a raw disk or another format's image.
    """
    if near_cookie(head[:8]) or any(near_cookie(tail[:8]) for tail in tails):
        return True
    if near_cookie(head[FOOTER_SIZE : FOOTER_SIZE + 8], DYNAMIC_COOKIE):
        return True
    return bool(tails) and tails[0] == _KILLED_FOOTER


#: A footer blktap's tapdisk overwrote while it had the image open.
_KILLED_FOOTER = b"\xc7" * FOOTER_SIZE


def refuse_unless_vhd(name, read, size: int) -> None:
    """Raise :func:`not_vhd_error` when nothing in a file of ``size`` bytes belongs to a VHD.

    ``read(offset, length, what) -> bytes`` is the caller's reader (an
    ImageFile's ``pread``, or check's counting reader): open and check
    apply the one rule, :func:`shows_vhd`, to the same bytes.
    """
    head = read(0, min(size, HEAD_SIZE), "start")
    tails = [
        read(size - length, length, "footer")
        for length in (FOOTER_SIZE, LEGACY_FOOTER_SIZE) if size >= length
    ]
    if not shows_vhd(head, tails):
        raise not_vhd_error(name, head)


def read_head(path) -> bytes:
    """The first :data:`HEAD_SIZE` bytes of ``path`` (fewer if it is shorter)."""
    with open(os.fspath(path), "rb") as handle:
        return handle.read(HEAD_SIZE)


def foreign_error(name, head: bytes, raw_hint: bool = False,
                  stream: bool = False) -> Optional[ForeignFormatError]:
    """The error refusing ``name`` when ``head`` is another format's, else ``None``.

    Args:
        name: the file, as the user gave it.
        head: its first bytes.
        raw_hint: say that ``-f raw`` reads the bytes anyway (for commands
            that read raw disks; ``check`` reads only VHDs).
        stream: ``head`` came from a pipe (a registered format found there
            needs the file instead).
    """
    found = identify(head)
    if found is None:
        return None
    if found.format in _registered():
        if stream:
            message = f"{name}: is {found.what}, which needs random access: save it to a file first"
        else:
            message = (
                f"{name}: is {found.what}, not a VHD: this operation reads only VHD images "
                f"({found.format} images are read by convert, digest, compare, map and info)"
            )
        return ForeignFormatError(message, found.format)
    hint = found.hint or "convert it to VHD with 'qemu-img convert -O vpc'"
    message = f"{name}: is {found.what}; vhdcore reads only {_readable()} images: {hint}"
    if raw_hint and not found.hint:
        message += ", or pass -f raw to read its bytes as a raw disk"
    return ForeignFormatError(message, found.format)


def _registered(aliases: bool = True):
    """The registry's input names (imported late: the registry imports VHD, which imports us)."""
    from . import names

    return names(aliases=aliases)


def _readable() -> str:
    """The registered formats, for messages: ``raw, VHD and qcow2``."""
    shown = [{"vhd": "VHD"}.get(name, name) for name in _registered(aliases=False)]
    return ", ".join(shown[:-1]) + " and " + shown[-1] if len(shown) > 1 else shown[0]


def not_vhd_error(name, head: bytes, raw_hint: bool = False) -> NotVHDError:
    """Why ``name`` (no VHD footer anywhere) cannot be read as a VHD.

    A foreign format is named (:class:`ForeignFormatError`); anything else
    is "not a VHD": a raw disk, most likely.
    """
    foreign = foreign_error(name, head, raw_hint)
    if foreign is not None:
        return foreign
    message = f"{name}: not a VHD (no footer cookie at the end of the file or at offset 0)"
    if raw_hint:
        message += "; a raw disk is read with -f raw"
    return NotVHDError(message)


__all__ = ["Found", "HEAD_SIZE", "PROBES", "foreign_error", "identify", "near_cookie",
           "not_vhd_error", "read_head", "shows_vhd"]
