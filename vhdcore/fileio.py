"""Compatibility alias: this module lives at :mod:`vhdcore.io.imagefile`.

The README documents ``vhdcore.fileio``; the alias makes both names one module
object, so setting an attribute through either is seen through both.
"""

import sys

from .io import imagefile as _module

sys.modules[__name__] = _module
