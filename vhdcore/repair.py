"""Compatibility alias: this module lives at :mod:`vhdcore.formats.vhd.repair`.

The README documents ``vhdcore.repair``; the alias makes both names one module
object, so setting an attribute through either is seen through both.
"""

import sys

from .formats.vhd import repair as _module

sys.modules[__name__] = _module
