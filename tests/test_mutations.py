"""Hostile images: flip fields of valid images and demand a VHDError or a correct read.

Each case takes a small valid image (fixed, dynamic with many small blocks,
differencing over a dynamic parent, and the blktap and differencing layouts
of :mod:`vhdcore.testing.samples`), changes one field (or a few bytes) of its
metadata, optionally recomputes the checksum so the change gets past it
(and copies the changed footer to both places, so it also gets past the
primary/copy comparison), and runs every reader over it:

open, ``info.describe``, ``extents()``, a read of the whole image (bounded:
images over :data:`READ_LIMIT` virtual bytes are read at 128 scattered,
unaligned 497-byte windows, as libvhdi's fuzzer does), ``check``, and a
conversion to raw.

Each must either raise a :class:`~vhdcore.errors.VHDError` or succeed; a
successful read must agree with the allocation map and with the raw
conversion, and when the field changed carries no meaning for the
contents (timestamps, creator, original size, UUID of a non-parent, ...)
it must equal the original contents. Anything else (another exception, a
hang past :data:`TIME_LIMIT` seconds) fails the test. ``check`` must
never raise for a damaged image, and an image it calls clean must open.

Every case is deterministic (``derandomize``) so CI sees the same inputs
on both backends. CI runs the grid on ten key values per field; the full
grid (28 values per field) and more random examples run with, e.g.::

    VHDCORE_MUTATION_FULL=1 VHDCORE_MUTATION_EXAMPLES=5000 VHDCORE_MUTATION_RANDOM=1 \\
        VHDCORE_BACKEND=cython python -m pytest tests/test_mutations.py -s
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import uuid as uuidlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vhdcore
from vhdcore import errors
from vhdcore.formats.vhd import check
from vhdcore.formats.vhd.footer import Footer
from vhdcore.formats.vhd.header import DynamicHeader
from vhdcore.formats.vhd.image import VHDWarning
from vhdcore.formats.vhd.info import describe
from vhdcore.ops.convert import convert
from vhdcore.testing import samples

KiB = 1024
MiB = 1024 * KiB
READ_LIMIT = 16 * MiB
TIME_LIMIT = 20
EXAMPLES = int(os.environ.get("VHDCORE_MUTATION_EXAMPLES", "100"))
FULL = bool(os.environ.get("VHDCORE_MUTATION_FULL"))
RANDOM = bool(os.environ.get("VHDCORE_MUTATION_RANDOM"))
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)

#: Count of cases run, by outcome, for the README figures (printed at the end).
TALLY = {"refused": 0, "read": 0}
DISAGREE = []
GRID = []


# ---------------------------------------------------------------------------
# the fields


@dataclass(frozen=True)
class Field:
    name: str
    where: str  # "footer", "header", "locator", "bat"
    offset: int  # within the structure (locator: within entry 0; bat: entry index)
    width: int
    neutral: bool = False  # changing it must not change the contents


FOOTER_FIELDS = [
    Field("cookie", "footer", 0, 8),
    Field("features", "footer", 8, 4),
    Field("format_version", "footer", 12, 4),
    Field("data_offset", "footer", 16, 8),
    Field("timestamp", "footer", 24, 4, neutral=True),
    Field("creator_app", "footer", 28, 4),
    Field("creator_version", "footer", 32, 4, neutral=True),
    Field("creator_os", "footer", 36, 4, neutral=True),
    Field("original_size", "footer", 40, 8, neutral=True),
    Field("current_size", "footer", 48, 8),
    Field("geometry", "footer", 56, 4),
    Field("disk_type", "footer", 60, 4),
    Field("checksum", "footer", 64, 4),
    Field("uuid", "footer", 68, 16),
    Field("saved_state", "footer", 84, 1),
    Field("hidden", "footer", 85, 1),
]
HEADER_FIELDS = [
    Field("h_cookie", "header", 0, 8),
    Field("h_data_offset", "header", 8, 8),
    Field("table_offset", "header", 16, 8),
    Field("header_version", "header", 24, 4),
    Field("max_table_entries", "header", 28, 4),
    Field("block_size", "header", 32, 4),
    Field("h_checksum", "header", 36, 4),
    Field("parent_uuid", "header", 40, 16),
    Field("parent_timestamp", "header", 56, 4, neutral=True),
    Field("parent_name", "header", 64, 16),
]
LOCATOR_FIELDS = [
    Field("loc_code", "locator", 0, 4),
    Field("loc_space", "locator", 4, 4),
    Field("loc_length", "locator", 8, 4),
    Field("loc_reserved", "locator", 12, 4),
    Field("loc_offset", "locator", 16, 8),
]
BAT_FIELDS = [Field(f"bat[{i}]", "bat", i, 4) for i in (0, 1, 2, 3)]
ALL_FIELDS = FOOTER_FIELDS + HEADER_FIELDS + LOCATOR_FIELDS + BAT_FIELDS


# ---------------------------------------------------------------------------
# the valid images


@dataclass
class Base:
    name: str
    path: Path
    raw: bytes
    content: bytes
    type: str
    data_offset: int = 0
    table_offset: int = 0


def _build_bases(directory: Path):
    rng = np.random.default_rng(99)
    bases = {}
    made = []
    ids = {"uuid": uuidlib.UUID(int=0x5EED), "timestamp": 946684800 + 86400 * 9000}
    with vhdcore.create(directory / "fixed.vhd", 64 * KiB, type="fixed", **ids) as image:
        image.write(1000, rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    made.append(("fixed", directory / "fixed.vhd"))
    with vhdcore.create(directory / "dynamic.vhd", 96 * KiB, block_size=4 * KiB, **ids) as image:
        for offset in (0, 9 * KiB + 100, 40 * KiB, 95 * KiB):
            image.write(offset, rng.integers(1, 256, 1000, dtype=np.uint8).tobytes())
    made.append(("dynamic", directory / "dynamic.vhd"))
    with vhdcore.create(directory / "parent.vhd", 96 * KiB, block_size=4 * KiB,
                        uuid=uuidlib.UUID(int=0xBA5E), timestamp=ids["timestamp"]) as image:
        image.write(0, rng.integers(1, 256, 50 * KiB, dtype=np.uint8).tobytes())
    with vhdcore.create(directory / "child.vhd", parent=directory / "parent.vhd", **ids) as image:
        image.write(3 * KiB, rng.integers(1, 256, 6000, dtype=np.uint8).tobytes())
        image.write(60 * KiB + 512, rng.integers(1, 256, 512, dtype=np.uint8).tobytes())
    made.append(("differencing", directory / "child.vhd"))
    for name in ("valid_blktap", "valid_differencing"):
        sample = samples.generate(name, directory / name)
        made.append((name, Path(sample.path)))
    for name, path in made:
        raw = path.read_bytes()
        with vhdcore.open(path) as image:
            content = image.read(0, image.virtual_size)
            base = Base(name, path, raw, content, image.type)
            if image.header is not None:
                base.data_offset = image.footer.data_offset
                base.table_offset = image.header.table_offset
        bases[name] = base
    return bases


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return _build_bases(tmp_path_factory.mktemp("bases"))


# ---------------------------------------------------------------------------
# applying a mutation


def _fix_footer(data: bytearray, at: int) -> None:
    footer = Footer.from_bytes(bytes(data[at : at + 512]))
    data[at : at + 512] = footer.to_bytes()


def _fix_header(data: bytearray, at: int) -> None:
    if at + 1024 <= len(data):
        header = DynamicHeader.from_bytes(bytes(data[at : at + 1024]))
        data[at : at + 1024] = header.to_bytes()


def mutate(base: Base, field: Field, value: int, fix: str, footer_copy: bool) -> bytes:
    """``base.raw`` with ``field`` set to ``value``; ``fix``: "none", "checksum"."""
    data = bytearray(base.raw)
    size = len(data)
    packed = (value % (1 << (8 * field.width))).to_bytes(field.width, "big")
    if field.where == "footer":
        places = [size - 512]
        if footer_copy and base.type != "fixed":
            places.append(0)
        for at in places:
            data[at + field.offset : at + field.offset + field.width] = packed
            if fix == "checksum" and field.name != "checksum":
                _fix_footer(data, at)
        return bytes(data)
    if base.type == "fixed":
        # Fixed disks have no header: poke the same relative place in the data.
        at = min(field.offset, size - 512 - field.width)
        data[at : at + field.width] = packed
        return bytes(data)
    header_at = base.data_offset
    if field.where == "header":
        at = header_at + field.offset
    elif field.where == "locator":
        at = header_at + 576 + field.offset
    else:
        at = base.table_offset + 4 * field.offset
    data[at : at + field.width] = packed
    if fix == "checksum" and field.where in ("header", "locator") and field.name != "h_checksum":
        _fix_header(data, header_at)
    return bytes(data)


def original_value(base: Base, field: Field) -> int:
    if field.where == "footer":
        at = len(base.raw) - 512 + field.offset
    elif base.type == "fixed":
        at = min(field.offset, len(base.raw) - 512 - field.width)
    elif field.where == "header":
        at = base.data_offset + field.offset
    elif field.where == "locator":
        at = base.data_offset + 576 + field.offset
    else:
        at = base.table_offset + 4 * field.offset
    return int.from_bytes(base.raw[at : at + field.width], "big")


def interesting_values(base: Base, field: Field):
    bits = 8 * field.width
    top = (1 << bits) - 1
    size = len(base.raw)
    orig = original_value(base, field)
    values = {0, 1, 2, 511, 512, 513, 1024, 1536, size, size - 512, size - 511, size + 512,
              size // 512, size // 512 - 1, 1 << (bits - 1), top, top - 1, orig + 1,
              orig - 1, orig * 2, orig // 2, orig + 512, orig ^ 1, 0xFF000000 * 512,
              0xFF000000, 1 << 31, 60 << 40, 2040 << 30}
    return sorted(v & top for v in values)


def key_values(base: Base, field: Field):
    bits = 8 * field.width
    top = (1 << bits) - 1
    size = len(base.raw)
    orig = original_value(base, field)
    values = {0, 1, 512, size - 512, size + 512, 1 << (bits - 1), top, orig + 1, orig ^ 1,
              0xFF000000}
    return {v & top for v in values}


# ---------------------------------------------------------------------------
# running the readers


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    def alarm(signum, frame):
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _read_all(image) -> bytes:
    size = image.virtual_size
    out = bytearray(size)
    view = memoryview(out)
    step = 1 << 20
    for offset in range(0, size, step):
        image.readinto(offset, view[offset : offset + step])
    return bytes(out)


def _from_extents(image) -> bytes:
    out = bytearray(image.virtual_size)
    for extent in image.extents():
        if extent.state != "zero":
            member = image.chain[extent.depth]
            out[extent.offset : extent.end] = member._file.pread(extent.file_offset, extent.length)
    return bytes(out)


def exercise(path: Path, base: Base, neutral: bool, label: str, convert: bool = True):
    """Run every reader over ``path``; returns "refused" or "read".

    ``convert=False`` skips the conversion to raw (the slowest reader: it
    starts a read-ahead thread), which the grid runs on one case in four.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", VHDWarning)
        with time_limit(TIME_LIMIT):
            outcome, data = _open_and_read(path, base, neutral, label)
            _check_and_convert(path, outcome, data if convert else None, label)
    TALLY[outcome] += 1
    return outcome


def _open_and_read(path, base, neutral, label):
    try:
        image = vhdcore.open(path)
    except errors.VHDError:
        return "refused", None
    data = None
    try:
        with image:
            json.dumps(describe(image))
            extents = image.extents()
            assert sum(e.length for e in extents) == image.virtual_size, label
            if image.virtual_size <= READ_LIMIT:
                data = _read_all(image)
                assert data == _from_extents(image), f"{label}: read and extents disagree"
                if neutral:
                    assert data == base.content, f"{label}: a neutral field changed the contents"
            else:
                rng = random.Random(label)
                for _ in range(128):
                    image.read(rng.randrange(0, image.virtual_size - 497), 497)
    except errors.VHDError:
        return "refused", None
    return "read", data


def _check_and_convert(path, outcome, data, label):
    try:
        report = check.check(path)
    except errors.NotVHDError:
        # No sign of a VHD left (e.g. a fixed disk's only cookie mutated):
        # "could not check", and open must have refused it too.
        assert outcome == "refused", f"{label}: open read what check calls no VHD"
        return
    json.dumps(report.to_dict())
    if report.clean and outcome == "refused":
        DISAGREE.append(label)
    if data is None:
        return
    out = path.with_suffix(".raw")
    try:
        convert(path, out, out_format="raw", force=True, fsync=False)
    except errors.VHDError:
        return
    try:
        assert out.read_bytes() == data, f"{label}: convert and read disagree"
    finally:
        os.unlink(out)


def _write(base: Base, raw: bytes) -> Path:
    path = base.path.parent / f"mutant-{base.path.name}"
    path.write_bytes(raw)
    return path


# ---------------------------------------------------------------------------
# the tests


def test_every_field_at_boundary_values(bases):
    """A fixed grid: every field x boundary values x checksum fixed or not."""
    cases = 0
    for base in bases.values():
        fields = FOOTER_FIELDS if base.type == "fixed" else ALL_FIELDS
        small = len(base.raw) < MiB
        fixes = (("none", False), ("checksum", True)) if small else (("checksum", True),)
        for field in fields:
            values = interesting_values(base, field)
            if not FULL:
                # CI's share: the values that most often sit on a rule's edge.
                values = [v for v in values if v in key_values(base, field)]
            if not small:
                # The layouts from vhdcore.samples are a few MiB: fewer values.
                values = values[:: max(1, len(values) // 4)]
            for value in values:
                for fix, copy in fixes:
                    raw = mutate(base, field, value, fix, copy)
                    label = f"{base.name}.{field.name}={value:#x} fix={fix}"
                    exercise(_write(base, raw), base, field.neutral and fix != "none", label,
                             convert=cases % 4 == 0)
                    cases += 1
    assert cases > 500
    GRID.append(cases)
    print(f"\nmutation grid: {cases} cases, {TALLY}")


@HYPOTHESIS
@given(data=st.data())
def test_random_field_values(bases, data):
    base = data.draw(st.sampled_from(sorted(bases)), label="base")
    base = bases[base]
    fields = FOOTER_FIELDS if base.type == "fixed" else ALL_FIELDS
    field = data.draw(st.sampled_from(fields), label="field")
    value = data.draw(st.integers(0, (1 << (8 * field.width)) - 1), label="value")
    fix = data.draw(st.sampled_from(["none", "checksum"]), label="fix")
    copy = data.draw(st.booleans(), label="copy")
    raw = mutate(base, field, value, fix, copy)
    label = f"{base.name}.{field.name}={value:#x} fix={fix} copy={copy}"
    exercise(_write(base, raw), base, field.neutral and fix != "none" and copy, label)


@HYPOTHESIS
@given(data=st.data())
def test_random_bytes_in_metadata(bases, data):
    """Overwrite a few bytes anywhere in the metadata (and in block bitmaps)."""
    base = bases[data.draw(st.sampled_from(sorted(bases)), label="base")]
    raw = bytearray(base.raw)
    size = len(raw)
    regions = [(size - 512, size)]
    if base.type != "fixed":
        end = min(size, base.table_offset + 4096)
        regions += [(0, 512), (base.data_offset, base.data_offset + 1024), (base.table_offset, end)]
    edits = data.draw(st.lists(st.tuples(st.sampled_from(regions), st.integers(0, 1 << 20),
                                         st.integers(0, 255)), min_size=1, max_size=6))
    for (lo, hi), where, byte in edits:
        raw[lo + where % (hi - lo)] = byte
    if data.draw(st.booleans(), label="fix checksums"):
        _fix_footer(raw, size - 512)
        if base.type != "fixed":
            raw[0:512] = raw[size - 512 : size]
            _fix_header(raw, base.data_offset)
    exercise(_write(base, bytes(raw)), base, False, f"{base.name} bytes {edits}")


@HYPOTHESIS
@given(data=st.data())
def test_truncated_and_extended_files(bases, data):
    base = bases[data.draw(st.sampled_from(sorted(bases)), label="base")]
    cut = data.draw(st.integers(0, len(base.raw) + 4096), label="length")
    raw = base.raw[:cut] + bytes(max(0, cut - len(base.raw)))
    exercise(_write(base, raw), base, False, f"{base.name} length {cut}")


def test_structural_hazards(bases):
    """The research checklist's named cases (R13/R14/R18, iotest 088)."""
    dyn = bases["dynamic"]
    cases = []
    bat = dyn.table_offset
    entry = int.from_bytes(dyn.raw[bat : bat + 4], "big")
    for name, value in (("zero", 0), ("into BAT", bat // 512), ("into footer",
                        (len(dyn.raw) - 512) // 512), ("duplicate", entry), ("overlap", entry + 1),
                        ("past EOF", len(dyn.raw) // 512 + 10), ("max-1", 0xFFFFFFFE)):
        raw = bytearray(dyn.raw)
        raw[bat + 4 : bat + 8] = value.to_bytes(4, "big")
        cases.append((f"bat {name}", bytes(raw)))
    for block_size in (0, 0x80, 0x12345678, 3 * 512, 1 << 31, 512, 1 << 28, 1 << 29):
        raw = bytearray(dyn.raw)
        raw[dyn.data_offset + 32 : dyn.data_offset + 36] = block_size.to_bytes(4, "big")
        _fix_header(raw, dyn.data_offset)
        cases.append((f"block size {block_size}", bytes(raw)))
    for name, base in bases.items():
        if base.type != "differencing":
            continue
        for offset in (0, 1, 511, base.table_offset, len(base.raw) - 512, len(base.raw), 1 << 62):
            raw = bytearray(base.raw)
            at = base.data_offset + 576 + 16
            raw[at : at + 8] = offset.to_bytes(8, "big")
            _fix_header(raw, base.data_offset)
            cases.append((f"{name} locator offset {offset}", bytes(raw)))
        raw = bytearray(base.raw)
        raw[base.data_offset + 40 : base.data_offset + 56] = uuidlib.uuid4().bytes
        _fix_header(raw, base.data_offset)
        cases.append((f"{name} parent uuid", bytes(raw)))
    for label, raw in cases:
        outcome = exercise(_write(dyn, raw), dyn, False, label)
        if label.startswith("bat ") or "parent uuid" in label:
            assert outcome == "refused", label


def teardown_module(module):
    print(f"\nmutation outcomes: {TALLY}")
    print("check clean but open refused:", *DISAGREE, sep="\n  ")
