"""Compatibility alias: this module lives at :mod:`vhdcore.testing.samples`.

The README documents ``vhdcore.samples``; the alias makes both names one module
object, so setting an attribute through either is seen through both.
"""

import sys

from .testing import samples as _module

sys.modules[__name__] = _module
