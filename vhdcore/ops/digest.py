"""SHA-256 of a virtual disk's contents, whatever the container.

The digest is exactly ``sha256sum`` of the equivalent raw image: every
byte of the virtual disk, in order, holes and unallocated blocks included
as the zeros they read as. So a raw file, its fixed and dynamic VHDs and a
differencing chain that flattens to it all give the same value, and
``vhdcore convert --digest`` can be checked against ``sha256sum`` of the
source.

Zero runs are never read, but SHA-256 has no shortcut for them: every
64-byte block of zeros still goes through the compression function (about
2 GB/s here with the SHA extensions). They are fed from one shared buffer
of zeros, never allocated per run. A digest therefore costs time in
proportion to the *virtual* size; a tree digest with a precomputed
zero-block hash (blkhash) would not, but would not match ``sha256sum``.
"""

from __future__ import annotations

import time
from typing import Optional

from ..io.rawfile import ZEROS_VIEW

#: Bytes read per step when digesting (a multiple of every block size up to 4 MiB).
CHUNK = 4 << 20


class Hasher:
    """An incremental SHA-256 over a virtual disk, fed in order."""

    def __init__(self, algorithm: str = "sha256"):
        import hashlib  # here, not at import: most conversions do not hash

        self.algorithm = algorithm
        self._hash = hashlib.new(algorithm)
        self.length = 0

    def update(self, data) -> None:
        """Add bytes (any buffer)."""
        self._hash.update(data)
        self.length += len(data)

    def zeros(self, count: int) -> None:
        """Add ``count`` zero bytes from the shared zero buffer."""
        self.length += count
        update = self._hash.update
        step = len(ZEROS_VIEW)
        while count >= step:
            update(ZEROS_VIEW)
            count -= step
        if count:
            update(ZEROS_VIEW[:count])

    def copy(self) -> "Hasher":
        other = Hasher.__new__(Hasher)
        other.algorithm = self.algorithm
        other._hash = self._hash.copy()
        other.length = self.length
        return other

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def digest(image, *, fmt: Optional[str] = None, progress=None, open_options=None) -> str:
    """The SHA-256 (hex) of the virtual disk contents of ``image``.

    Args:
        image: a path (raw or VHD, detected from the footer unless ``fmt``
            says), ``"-"`` for stdin, an open :class:`vhdcore.formats.vhd.image.VHD`, or
            a :class:`vhdcore.disk.sources.Source`.
        fmt: ``"raw"`` or ``"vhd"`` to skip detection.
        progress: an optional :class:`vhdcore.progress.Progress`.
        open_options: keyword arguments for :func:`vhdcore.open` of a VHD
            (its chain policy).

    Raises:
        VHDError: the image cannot be read.
    """
    return digest_report(image, fmt=fmt, progress=progress, open_options=open_options)["sha256"]


def digest_report(image, *, fmt: Optional[str] = None, progress=None,
                  open_options=None) -> dict:
    """:func:`digest` plus what was read: a dict for ``vhdcore digest --json``."""
    from ..disk.prefetch import Prefetch
    from ..disk.sources import as_source

    source, owned = as_source(image, fmt, open_options)
    started = time.monotonic()
    try:
        hasher = Hasher()
        read = 0
        # Reads run ahead on the prefetch thread while this one hashes.
        with Prefetch(source, CHUNK, CHUNK, 3) as pieces:
            for offset, length, view in pieces:
                if view is None:
                    hasher.zeros(length)
                else:
                    hasher.update(view)
                    read += length
                if progress is not None:
                    progress.update(offset + length)
        if progress is not None:
            progress.finish()
        return {
            "image": source.name,
            "format": source.format,
            "type": source.kind,
            "virtual_size": source.virtual_size,
            "sha256": hasher.hexdigest(),
            "bytes_read": read,
            "seconds": round(time.monotonic() - started, 6),
        }
    finally:
        if owned:
            source.close()


__all__ = ["Hasher", "digest", "digest_report"]
