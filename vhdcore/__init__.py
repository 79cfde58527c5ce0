"""vhdcore: a fast, trustworthy engine for virtual disk images (VHD, qcow2, raw).

The public API is a few nouns: ``open`` (any format, by magic), ``VHD``,
``create``, ``convert``
and the errors in :mod:`vhdcore.errors` (``ImageError`` at the root,
also named ``VHDError``). ``BACKEND`` says whether the
compiled kernels or their pure-Python reference twins are in use.
"""

from __future__ import annotations

import os as _os
import sys as _sys


def _started_as_the_cli() -> bool:
    """Whether this import is the ``vhdcore`` command starting up.

    ``python -m vhdcore`` imports the package while ``sys.argv[0]`` is still
    ``-m``; the console script is named ``vhdcore``.
    """
    first = _sys.argv[0] if _sys.argv else ""
    return first == "-m" or _os.path.basename(first) == "vhdcore"


try:
    from . import errors
    from ._backend import BACKEND
    from .errors import ImageError, VHDError
    from .formats import open_image as open
    from .formats.vhd.create import create
    from .formats.vhd.image import VHD
    from .ops.convert import convert
except KeyboardInterrupt:
    # Ctrl-C while the command's modules load: one line and 130, as any
    # later Ctrl-C; a program importing the library gets the interrupt.
    if not _started_as_the_cli():
        raise
    _sys.stderr.write("vhdcore: interrupted\n")
    raise SystemExit(130) from None

__version__ = "0.1.0"

__all__ = ["BACKEND", "VHD", "ImageError", "VHDError", "convert", "create", "errors", "open", "__version__"]
