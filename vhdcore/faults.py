"""Compatibility alias: this module lives at :mod:`vhdcore.testing.faults`.

The README documents ``vhdcore.faults``; the alias makes both names one module
object, so setting an attribute through either is seen through both.
"""

import sys

from .testing import faults as _module

sys.modules[__name__] = _module
