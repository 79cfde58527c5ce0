"""Compatibility alias: this module lives at :mod:`vhdcore.formats.vhd.check`.

The README documents ``vhdcore.check``; the alias makes both names one module
object, so setting an attribute through either is seen through both.
"""

import sys

from .formats.vhd import check as _module

sys.modules[__name__] = _module
