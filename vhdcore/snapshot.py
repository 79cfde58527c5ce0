"""Compatibility alias: this module lives at :mod:`vhdcore.formats.vhd.snapshot`.

The README documents ``vhdcore.snapshot``; the alias makes both names one module
object, so setting an attribute through either is seen through both.
"""

import sys

from .formats.vhd import snapshot as _module

sys.modules[__name__] = _module
