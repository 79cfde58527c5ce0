"""vhdcore: a fast, trustworthy engine for VHD virtual disk images.

The public API is a few nouns: ``VHD``, ``open``, ``create``, ``convert``
and the errors in :mod:`vhdcore.errors`. ``BACKEND`` says whether the
compiled kernels or their pure-Python reference twins are in use.
"""

from __future__ import annotations

from . import errors
from ._backend import BACKEND
from .convert import convert
from .create import create
from .errors import VHDError
from .image import VHD, open

__version__ = "0.1.0"

__all__ = ["BACKEND", "VHD", "VHDError", "convert", "create", "errors", "open", "__version__"]
