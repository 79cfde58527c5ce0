"""vhdcore: a fast, trustworthy engine for VHD virtual disk images.

The public API is a few nouns: ``VHD``, ``open``, ``create``, ``convert``
and the errors in :mod:`vhdcore.errors`. ``BACKEND`` says whether the
compiled kernels or their pure-Python reference twins are in use.
"""

from __future__ import annotations

from . import errors
from ._backend import BACKEND
from .errors import VHDError

__version__ = "0.1.0"

__all__ = ["BACKEND", "VHDError", "errors", "__version__"]
