"""Shared machinery for the kernel benchmarks (bench_zero, bench_checksum,
bench_bitmap, bench_bat).

Each kernel's table (``benchmark.group``) compares, on one payload size,
the compiled kernel, its pure-Python reference twin and, where Python or
numpy already has a C-speed idiom for the job, that idiom: a kernel must
beat the idiom or it does not earn its place. After a timed run a summary
prints the ratios the README quotes (compiled/reference at 2 MiB, compiled
against the best idiom, zero detection against a numpy copy).

``make bench`` runs them timed; ``make bench-smoke`` (CI) runs each once
with ``--benchmark-disable`` so they cannot rot.
"""

from __future__ import annotations

import importlib
import os
from collections import defaultdict

import numpy as np
import pytest

from vhdcore import _reference

KiB = 1024
MiB = 1024 * KiB
SIZES = {"4KiB": 4 * KiB, "2MiB": 2 * MiB, "64MiB": 64 * MiB}
BAT_UNUSED = 0xFFFFFFFF

# The pure-Python reference walks every byte or bit in the interpreter: on
# 64 MiB that is minutes per round (bitmaps: tens of minutes), so there are
# no reference rows at 64 MiB; the 2 MiB ratio is the one that is reported.
NO_REFERENCE_SIZES = ("64MiB",)
# Reference rows above 4 KiB take up to seconds per call: they are timed
# over a few rounds (pedantic) rather than pytest-benchmark's calibration.
SLOW_ROUNDS = 3

# Kinds of row, and their role in the summary. Bench files spell them as
# plain strings: conftest is not importable under --import-mode=importlib.
COMPILED, REFERENCE, IDIOM, BASELINE = "compiled", "reference", "idiom", "baseline"

_results: dict[tuple[str, str], dict[str, tuple[str, float]]] = defaultdict(dict)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "kernel_table(rows, sizes=None): parametrise a kernel benchmark over payload "
        "sizes and (row, kind) pairs; kind is compiled, reference, idiom or baseline",
    )


def pytest_generate_tests(metafunc):
    """Turn a ``kernel_table`` marker into (size, row, kind) parameters, ids "size-row"."""
    marker = metafunc.definition.get_closest_marker("kernel_table")
    if marker is None:
        return
    rows = marker.args[0]
    sizes = marker.kwargs.get("sizes") or tuple(SIZES)
    params = []
    for size in sizes:
        for row, kind in rows:
            assert kind in (COMPILED, REFERENCE, IDIOM, BASELINE), kind
            if kind == REFERENCE and size in NO_REFERENCE_SIZES:
                continue
            params.append(pytest.param(size, row, kind, id=f"{size}-{row}"))
    metafunc.parametrize(("size", "row", "kind"), params)


@pytest.fixture(scope="session")
def compiled_kernels():
    """The compiled module: fails under VHDCORE_BACKEND=cython when missing, else skips."""
    try:
        return importlib.import_module("vhdcore._kernels")
    except ImportError as exc:
        if os.environ.get("VHDCORE_BACKEND", "").strip().lower() == "cython":
            pytest.fail(f"vhdcore._kernels is not built: {exc}")
        pytest.skip(f"vhdcore._kernels is not built: {exc}")


@pytest.fixture(scope="session")
def twins(compiled_kernels):
    return {COMPILED: compiled_kernels, REFERENCE: _reference}


class Payloads:
    """Deterministic inputs, built once per session and shared by every row.

    Buffers are materialised (every page written): a fresh ``bytes(n)`` is
    backed by the kernel's shared zero page, which would make any scan of it
    look faster than memory can go.
    """

    def __init__(self):
        self._cache = {}
        self._rng = np.random.default_rng(20261125)

    def _get(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def zeros(self, size: str) -> bytes:
        return self._get(("zeros", size), lambda: np.full(SIZES[size], 0, np.uint8).tobytes())

    def noise(self, size: str) -> bytes:
        return self._get(
            ("noise", size),
            lambda: self._rng.integers(0, 256, SIZES[size], dtype=np.uint8).tobytes(),
        )

    def random_bitmap(self, size: str) -> bytes:
        """Uniformly random bytes of a ``"<n>KiB-random"`` size: a run boundary
        every other bit, the worst case for the run kernels."""
        nbytes = int(size.split("KiB")[0]) * KiB
        # Its own generator, so adding it changed no other payload.
        rng = np.random.default_rng(nbytes)
        return self._get(
            ("random", size), lambda: rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()
        )

    def runs_bitmap(self, size: str) -> bytes:
        """A sector bitmap of alternating runs, 1 to 255 bits long (mean 128).

        Built at 2 MiB and cut or repeated to size: expanding 512 Mi bits
        one by one for 64 MiB would take longer than the benchmarks.
        """

        def build():
            bits = SIZES["2MiB"] * 8
            lengths = self._rng.integers(1, 256, bits // 64 + 2)
            values = (np.arange(lengths.size) % 2).astype(np.uint8)
            return np.packbits(np.repeat(values, lengths)[:bits]).tobytes()

        pattern = self._get(("runs", "2MiB"), build)
        return self._get(
            ("runs", size), lambda: (pattern * (SIZES[size] // len(pattern) + 1))[: SIZES[size]]
        )

    def bat(self, entries: int, allocated_share: float = 0.5, cluster: int = 1) -> np.ndarray:
        """A full table with a share of blocks allocated in clusters of
        ``cluster`` virtual blocks, laid out in the file in shuffled order
        (a guest writing all over its disk), 2 MiB blocks and 512-byte
        bitmaps after a 1536-byte header and the table itself."""

        def build():
            clusters = entries // cluster
            chosen = self._rng.choice(clusters, int(clusters * allocated_share), replace=False)
            blocks = (chosen[:, None] * cluster + np.arange(cluster)).ravel()
            order = self._rng.permutation(blocks.size)
            first = (1536 + 4 * entries) // 512
            bat = np.full(entries, BAT_UNUSED, dtype=np.uint32)
            bat[blocks] = (first + order * (2 * MiB + 512) // 512).astype(np.uint32)
            return bat

        return self._get(("bat", entries, allocated_share, cluster), build)


@pytest.fixture(scope="session")
def payloads():
    return Payloads()


@pytest.fixture
def measure(benchmark):
    """measure(kernel, size, row, kind, fn, *args): time one row of a table."""

    def run(kernel, size, row, kind, function, *args):
        benchmark.group = f"{kernel} {size}"
        benchmark.name = row
        benchmark.extra_info.update(kernel=kernel, size=size, row=row, kind=kind)
        if kind == REFERENCE and size != "4KiB":
            result = benchmark.pedantic(function, args, rounds=SLOW_ROUNDS, iterations=1)
        else:
            result = benchmark(function, *args)
        stats = getattr(benchmark, "stats", None)
        if stats is not None:
            _results[(kernel, size)][row] = (kind, stats.stats.min)
        return result

    return run


def _ratio_lines():
    """Summary lines: compiled/reference, compiled vs best idiom, vs copy."""
    lines = []
    order = {size: i for i, size in enumerate(SIZES)}
    for (kernel, size), rows in sorted(
        _results.items(), key=lambda item: (item[0][0], order.get(item[0][1], 9))
    ):
        compiled = next((t for k, t in rows.values() if k == COMPILED), None)
        if compiled is None:
            continue
        parts = [f"{kernel:<13} {size:>6}  compiled {compiled * 1e6:>11.1f} us"]
        reference = next((t for k, t in rows.values() if k == REFERENCE), None)
        if reference is not None:
            parts.append(f"reference/compiled {reference / compiled:>9.0f}x")
        idioms = [(t, name) for name, (k, t) in rows.items() if k == IDIOM]
        if idioms:
            best, name = min(idioms)
            parts.append(f"best idiom '{name}' {best * 1e6:.1f} us -> {best / compiled:.2f}x")
        for name, (k, t) in rows.items():
            if k == BASELINE:
                parts.append(f"'{name}' {t * 1e6:.1f} us -> {t / compiled:.2f}x")
        lines.append("; ".join(parts))
    return lines


def pytest_terminal_summary(terminalreporter):
    lines = _ratio_lines()
    if lines:
        # Minimum times: the machine is shared, and other work only ever
        # adds time, so the fastest round is the least disturbed one.
        terminalreporter.section("vhdcore kernels: ratios of minimum times (>1x: compiled wins)")
        for line in lines:
            terminalreporter.write_line(line)
