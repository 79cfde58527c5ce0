"""Compatibility alias: this module lives at :mod:`vhdcore.ops.digest`.

The README documents ``vhdcore.digest``; the alias makes both names one module
object, so setting an attribute through either is seen through both.
"""

import sys

from .ops import digest as _module

sys.modules[__name__] = _module
