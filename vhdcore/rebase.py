"""Compatibility alias: this module lives at :mod:`vhdcore.formats.vhd.rebase`.

The README documents ``vhdcore.rebase``; the alias makes both names one module
object, so setting an attribute through either is seen through both.
"""

import sys

from .formats.vhd import rebase as _module

sys.modules[__name__] = _module
