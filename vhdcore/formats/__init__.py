"""The format registry: every place that chooses a format asks here.

Each format is a subpackage (or a module, for ``raw``) that defines one
:class:`Format` named ``FORMAT``; :data:`ENTRIES` lists them in detection
order. Detection, ``convert -f/-O``, ``info``, the CLI's choices and the
error for an unknown name all come from these entries, so adding a format
is its subpackage plus one line in :data:`ENTRIES`.

Entries are cheap to import: a format's heavy modules (its image class,
its writers) are imported by its ``open`` and ``writer`` functions when
called, so ``python -m vhdcore`` stays quick.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple

from ..errors import UnsupportedError

#: The format modules, in the order help texts and messages list them.
#: Detection tries every format with a ``detect``; a file none recognises
#: is ``raw``.
ENTRIES = ("raw", "vhd", "qcow2")


@dataclass(frozen=True)
class Format:
    """One format's registry entry.

    Attributes:
        name: the canonical name (``-f``, ``-O``, reports).
        description: a few words for help texts.
        aliases: other names accepted for it (qemu calls VHD ``vpc``).
        detect: ``detect(file) -> bool`` on an open
            :class:`~vhdcore.io.imagefile.ImageFile`: whether its magic is there.
            ``None`` for a format recognised only when nothing else is (raw).
        open: ``open(path, **options)`` -> a read-only
            :class:`~vhdcore.disk.virtual.VirtualDisk`.
        writer: ``writer(subformat, out, **options)`` -> a
            :class:`~vhdcore.disk.virtual.Sink`, or ``None`` if the format
            cannot be written.
        subformats: what ``writer`` can write (``fixed``, ``dynamic``).
        default_subformat: what ``-O NAME`` writes.
        extensions: file suffixes that make an output this format by default.
        max_size: largest virtual size per subformat (bytes).
        options: per subformat, the conversion options it takes
            (e.g. ``block_size``); others are ignored with a note.
        random_access: whether reading needs a seekable file (not a pipe).
        check_options: ``check_options(subformat, options, dst, notes) ->
            options``: the writer options checked and completed (defaults),
            notes added for what is unusual; ``None``: taken as they are.
        output_size: ``output_size(source_size, subformat, notes, **targets)
            -> size``: the output's virtual size (rounding, limits);
            ``None``: the source's size, within ``max_size``.
        targets: output flags only this format understands (VHD's
            ``azure`` and ``xen``); asking another format for one is refused.
        check: ``check(path, parents=, deep=, **options)`` -> a report with
            ``exit_code`` and ``to_dict()`` (``vhdcore check``); ``None``:
            the format is not checked.
        describe: ``describe(path, warn, **options) -> dict``: what ``info``
            reports (``warn(message)`` for what is wrong but not fatal).
        open_image: ``open_image(path, mode, **options)`` -> the format's own
            image object for :func:`vhdcore.open` (``mode`` ``"r"`` or
            ``"r+"``); ``None``: :attr:`open`, read-only.
    """

    name: str
    description: str
    open: Callable
    aliases: Tuple[str, ...] = ()
    detect: Optional[Callable] = None
    writer: Optional[Callable] = None
    subformats: Tuple[str, ...] = ()
    default_subformat: Optional[str] = None
    extensions: Tuple[str, ...] = ()
    max_size: Mapping[str, int] = field(default_factory=dict)
    options: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    random_access: bool = True
    check_options: Optional[Callable] = None
    output_size: Optional[Callable] = None
    targets: Tuple[str, ...] = ()
    open_image: Optional[Callable] = None
    describe: Optional[Callable] = None
    check: Optional[Callable] = None


_formats: Dict[str, Format] = {}


def _load() -> Dict[str, Format]:
    if not _formats:
        for entry in ENTRIES:
            fmt = importlib.import_module(f"{__name__}.{entry}").FORMAT
            _formats[fmt.name] = fmt
    return _formats


def formats() -> Tuple[Format, ...]:
    """Every registered format, in :data:`ENTRIES` order."""
    return tuple(_load().values())


def names(aliases: bool = True) -> Tuple[str, ...]:
    """Input format names for ``-f``: each name, then its aliases."""
    out = []
    for fmt in formats():
        out.append(fmt.name)
        if aliases:
            out.extend(fmt.aliases)
    return tuple(out)


def get(name: str) -> Format:
    """The format called ``name`` (or one of its aliases).

    Raises:
        UnsupportedError: no registered format has that name.
    """
    for fmt in formats():
        if name == fmt.name or name in fmt.aliases:
            return fmt
    raise UnsupportedError(
        f"unknown input format {name!r}: use {_or(names(aliases=False))}"
    )


def output_names() -> Tuple[str, ...]:
    """Output names for ``-O``: every subformat (``raw``, ``fixed``, ``dynamic``),
    then each writable format's name and aliases (meaning its default subformat)."""
    out = []
    for fmt in formats():
        out.extend(s for s in fmt.subformats if s not in out)
    for fmt in formats():
        if fmt.writer is not None:
            out.extend(n for n in (fmt.name, *fmt.aliases) if n not in out)
    return tuple(out)


def output(name: str) -> Tuple[Format, str]:
    """``(format, subformat)`` that output name ``name`` writes.

    Raises:
        UnsupportedError: nothing writes ``name``.
    """
    for fmt in formats():
        if fmt.writer is not None and name in fmt.subformats:
            return fmt, name
    for fmt in formats():
        if fmt.writer is not None and (name == fmt.name or name in fmt.aliases):
            return fmt, fmt.default_subformat
    subformats = [s for fmt in formats() for s in fmt.subformats]
    raise UnsupportedError(f"unknown output format {name!r}: use {_or(subformats)}")


def output_for_path(path: str) -> Optional[Tuple[Format, str]]:
    """The output an unspecified ``-O`` means for ``path``, from its suffix.

    Raises:
        UnsupportedError: the suffix is a format vhdcore reads but does not
            write: raw bytes under that name would mislead.
    """
    lowered = path.lower()
    for fmt in formats():
        if any(lowered.endswith(e) for e in fmt.extensions):
            if fmt.writer is None:
                raise UnsupportedError(
                    f"{path}: vhdcore reads {fmt.name} but does not write it; choose the "
                    f"output with -O ({_or(output_names())})"
                )
            return fmt, fmt.default_subformat
    return None


def detect(file) -> Format:
    """The format of an open :class:`~vhdcore.io.imagefile.ImageFile`, by its magic.

    The first entry whose ``detect`` recognises the file, else the first
    entry without a ``detect`` (raw).
    """
    fallback = None
    for fmt in formats():
        if fmt.detect is None:
            fallback = fallback or fmt
        elif fmt.detect(file):
            return fmt
    return fallback


def detect_path(path) -> Format:
    """The format of the file at ``path`` for commands that must not guess raw.

    A file whose magic no format recognises is taken for the first format
    with an ``open_image`` (VHD): it may be a damaged one, and its open
    says what is wrong (or that the file is no image at all). A caller
    that means raw says ``format="raw"``.
    """
    from ..io.imagefile import open_image_file

    with open_image_file(path) as file:
        fmt = detect(file)
    if fmt.detect is None:
        fmt = next(f for f in formats() if f.open_image is not None)
    return fmt


def open_image(path, mode: str = "r", format: Optional[str] = None, **options):  # noqa: A002
    """Open ``path`` in its format (by magic, or ``format``): what ``vhdcore.open`` does.

    A file no format recognises is refused unless ``format="raw"`` says
    it is a raw disk: the image a caller meant to open may simply be
    damaged, and the first registered format with magic at the end of the
    file (VHD) is asked to say what is wrong with it.

    Raises:
        UnsupportedError: ``format`` is unknown, or the format cannot be
            opened in ``mode``.
        ImageError: the file is no usable image of its format.
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"mode must be 'r' or 'r+', not {mode!r}")
    fmt = get(format) if format is not None else detect_path(path)
    if fmt.open_image is not None:
        return fmt.open_image(path, mode, **options)
    if mode != "r":
        raise UnsupportedError(f"{os.fspath(path)}: {fmt.name} images open read-only here")
    return fmt.open(path, **options)


def _or(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


__all__ = [
    "ENTRIES",
    "Format",
    "detect",
    "detect_path",
    "formats",
    "get",
    "names",
    "output",
    "output_for_path",
    "open_image",
    "output_names",
]
