"""Human-readable sizes and counts: ``512M`` in, ``512 MiB`` and ``1 block`` out.

Suffixes are binary, as in qemu-img: K, M, G, T, P and E multiply by
powers of 1024; an optional trailing ``B`` or ``iB`` is accepted and a
bare number is bytes.
"""

from __future__ import annotations

import re

_UNITS = {"": 0, "B": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes meant by ``text`` (``'10G'`` → 10737418240).

    Raises:
        ValueError: the text is not a size, or a fraction leaves part of a byte.
    """
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"invalid size {text!r}: use a number with an optional K, M, G or T")
    number, unit = match.groups()
    scale = 1024 ** _UNITS[unit.upper()]
    if "." in number:
        whole, frac = number.split(".")
        numerator = int(whole + frac) * scale
        denominator = 10 ** len(frac)
        if numerator % denominator:
            raise ValueError(f"invalid size {text!r}: not a whole number of bytes")
        return numerator // denominator
    return int(number) * scale


def format_size(size: int) -> str:
    """``size`` bytes in the largest binary unit that keeps it readable."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.2f}".rstrip("0").rstrip(".") + f" {unit}"
        value /= 1024
    return f"{size} B"  # unreachable


def plural(count: int, word: str, many: str | None = None) -> str:
    """``"1 block"``, ``"2 blocks"``: a count and its noun, agreeing.

    ``many`` is the plural when it is not ``word + "s"`` (``"entry"``,
    ``"entries"``).
    """
    return f"{count} {word if count == 1 else (many or word + 's')}"
