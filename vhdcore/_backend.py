"""The one place that decides which kernels the rest of vhdcore uses.

``VHDCORE_BACKEND`` selects: ``auto`` (default) takes the compiled module
when it is importable and the pure-Python reference otherwise; ``cython``
insists on the compiled module and fails loudly without it, so CI can never
test the reference twice by accident; ``reference`` forces the twin.
Every other module does ``from ._backend import kernels``.
"""

from __future__ import annotations

import os

from . import _reference

_VALID = ("auto", "cython", "reference")


def _load():
    choice = os.environ.get("VHDCORE_BACKEND", "auto").strip().lower() or "auto"
    if choice not in _VALID:
        raise ImportError(
            f"VHDCORE_BACKEND={choice!r} is not one of {', '.join(_VALID)}"
        )
    if choice == "reference":
        return _reference, "reference"
    try:
        from . import _kernels
    except ImportError as exc:
        if choice == "cython":
            raise ImportError(
                "VHDCORE_BACKEND=cython but the compiled extension "
                f"vhdcore._kernels is not importable: {exc}"
            ) from exc
        return _reference, "reference"
    return _kernels, "cython"


kernels, BACKEND = _load()

__all__ = ["kernels", "BACKEND"]
