"""``check`` on fully allocated dynamic images: linear in the BAT, well under a second.

Images of 100 GiB, 2000 GiB and 2040 GiB (the format's maximum: 1,044,480
BAT entries) with every block allocated and data areas left as holes
(only metadata and the final footer are written: the files are sparse, a
few MiB on disk). Two layouts: ``contiguous`` (blocks in table order, as
written by a sequential fill or a conversion) and ``shuffled`` (blocks in
a random file order, as after a guest wrote all over its disk: the table
must be sorted). One run times ``check`` on each, the CLI as a process on
the largest, and ``check --deep`` on an image whose blocks carry all-ones
bitmaps (as qemu writes them: only the bitmaps are read).

``test_scaling`` then asserts, from interleaved best-of-N timings in one
run, that the 2000 GiB contiguous check costs at most 25 times the
100 GiB one (20 times the entries) and, with the compiled kernels, that
every check stays well under a second; it prints the figures.

Under ``--benchmark-disable`` (CI's smoke run) every benchmark runs once;
the images are the same (sparse), so this still takes a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vhdcore._backend import BACKEND
from vhdcore.formats.vhd.check import check
from vhdcore.testing import samples

GiB = 1024**3
BLOCK = 2 * 1024 * 1024
SIZES = {"100GiB": 100 * GiB, "2000GiB": 2000 * GiB, "2040GiB": 2040 * GiB}
LAYOUTS = ("contiguous", "shuffled")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("check")
    built = {
        (name, layout): samples.build_full_dynamic(
            root / f"{name}-{layout}.vhd", size, shuffled=layout == "shuffled"
        )
        for name, size in SIZES.items()
        for layout in LAYOUTS
    }
    smoke = request.config.getoption("benchmark_disable", False)
    deep_size = 4 * GiB if smoke else 100 * GiB
    built["deep"] = samples.build_full_dynamic(root / "deep.vhd", deep_size, bitmaps=True)
    return built


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(SIZES))
def test_check_full(benchmark, images, name, layout):
    benchmark.group = f"check, fully allocated dynamic image, {layout} blocks"
    benchmark.extra_info["bat_entries"] = SIZES[name] // BLOCK
    report = benchmark.pedantic(check, (images[name, layout],), rounds=5, iterations=1,
                                warmup_rounds=1)
    assert report.status == "clean", report.codes
    assert report.counts["allocated_blocks"] == SIZES[name] // BLOCK


def test_check_cli_process_2040(benchmark, images):
    """The whole command: interpreter start, imports, check, output."""
    benchmark.group = "vhdcore check as a process (2040 GiB, contiguous)"
    argv = [sys.executable, "-m", "vhdcore", "check", str(images["2040GiB", "contiguous"])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def run():
        return subprocess.run(argv, capture_output=True, env=env)

    result = benchmark.pedantic(run, rounds=3, iterations=1)
    assert result.returncode == 0, result.stderr


def test_check_deep_bitmaps(benchmark, images):
    benchmark.group = "check --deep, all-ones bitmaps (bitmaps read, no data)"
    report = benchmark.pedantic(check, (images["deep"],), {"deep": True}, rounds=1, iterations=1)
    assert report.clean and report.counts["deep_dirty_sectors"] == 0


def _interleaved_best(paths, rounds=15):
    """Best time per path, measured round-robin so load hits every path alike."""
    best = {path: float("inf") for path in paths}
    for _ in range(rounds):
        for path in paths:
            start = time.perf_counter()
            check(path)
            best[path] = min(best[path], time.perf_counter() - start)
    return best


def test_scaling(images, capsys, request):
    """One run, both sizes: cost grows with the table, not faster.

    The shuffled rows need the kernel's sort, seconds per call with the
    pure-Python reference: they are timed with the compiled kernels only.
    """
    rounds = 9 if request.config.getoption("benchmark_disable", False) else 15
    layouts = LAYOUTS if BACKEND == "cython" else ("contiguous",)
    keys = [(name, layout) for layout in layouts for name in SIZES]
    best = _interleaved_best([images[key] for key in keys], rounds)
    times = {key: best[images[key]] for key in keys}
    ratios = {
        layout: times["2000GiB", layout] / times["100GiB", layout] for layout in layouts
    }
    with capsys.disabled():
        print(f"\ncheck [{BACKEND} kernels], best of {rounds}:")
        for layout in layouts:
            print("  " + layout + ": " + ", ".join(
                f"{name} {times[name, layout] * 1e3:.2f} ms" for name in SIZES))
        print("  2000 GiB / 100 GiB (20x the entries): " + ", ".join(
            f"{layout} {ratio:.1f}x" for layout, ratio in ratios.items()))
    assert ratios["contiguous"] <= 25
    if BACKEND == "cython":
        assert max(times.values()) < 0.5
