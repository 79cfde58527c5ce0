"""Commit speed: fold 512 MiB of scattered changes into a 2 GiB parent, against cp.

The workload: a 2 GiB dynamic parent with half its 2 MiB blocks holding
data, and a differencing child holding 512 MiB in 4096 runs of 128 KiB
scattered over the whole disk (every child block is touched; about half
of the parent blocks the commit fills are new). The baseline is ``cp`` of
a 512 MiB file on the same file system, measured in the same run, twice:
plain (cp leaves the data in the page cache; on ext4 it is an in-kernel
copy) and followed by ``sync FILE`` (durable, as a commit is: it fsyncs
the parent before returning). Each round starts from a fresh copy of the
parent and a flushed page cache (``os.sync``), outside the timing.

Run: ``python -m pytest benchmarks/bench_commit.py`` (add ``-s`` to see
the ratio lines). Under ``--benchmark-disable`` (CI's smoke run) the
sizes shrink to a 64 MiB parent and 16 MiB of changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

import vhdcore
from vhdcore.formats.vhd.commit import commit

MiB = 1024 * 1024
RUN = 128 * 1024
ROUNDS = 5

_times: dict = {}


@pytest.fixture(scope="module")
def workload(tmp_path_factory, request):
    smoke = request.config.getoption("benchmark_disable", False)
    parent_size, changes = (64 * MiB, 16 * MiB) if smoke else (2048 * MiB, 512 * MiB)
    root = tmp_path_factory.mktemp("commit")
    rng = np.random.default_rng(11)
    noise = rng.integers(0, 256, 64 * MiB, dtype=np.uint8).tobytes()

    def chunk(i, n):
        offset = (i * 4099 * 512) % (len(noise) - n)
        return memoryview(noise)[offset : offset + n]

    pristine = root / "parent.orig.vhd"
    block = 2 * MiB
    with vhdcore.create(pristine, parent_size) as image:
        blocks = sorted(rng.choice(parent_size // block, parent_size // block // 2,
                                   replace=False).tolist())
        for start in range(0, len(blocks), 32):
            image.write_many([(b * block, chunk(b, block)) for b in blocks[start : start + 32]])
    parent = root / "parent.vhd"
    shutil.copyfile(pristine, parent)
    child = root / "child.vhd"
    with vhdcore.create(child, parent=parent) as image:
        slots = sorted(rng.choice(parent_size // RUN, changes // RUN, replace=False).tolist())
        for start in range(0, len(slots), 512):
            image.write_many([(s * RUN, chunk(s + 7, RUN)) for s in slots[start : start + 512]])
    source = root / "source.bin"
    with open(source, "wb") as f:
        for start in range(0, changes, len(noise)):
            f.write(noise[: min(len(noise), changes - start)])
    os.sync()
    return {"root": root, "pristine": pristine, "parent": parent, "child": child,
            "source": source, "changes": changes, "parent_size": parent_size}


def _fresh_parent(workload):
    shutil.copyfile(workload["pristine"], workload["parent"])
    os.sync()


def _fresh_target(workload):
    target = workload["root"] / "copy.bin"
    if target.exists():
        target.unlink()
    os.sync()


def _group(workload):
    return f"commit {workload['changes'] // MiB} MiB into {workload['parent_size'] // MiB} MiB"


def _record(benchmark, name):
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        _times[name] = stats.stats.median


def test_commit(benchmark, workload):
    benchmark.group = _group(workload)
    benchmark.name = "vhdcore commit"
    benchmark.extra_info["bytes"] = workload["changes"]
    benchmark.pedantic(lambda: commit(workload["child"]),
                       setup=lambda: _fresh_parent(workload), rounds=ROUNDS, iterations=1)
    _record(benchmark, "commit")
    # The timed commits did the work: the parent now reads as the child.
    with vhdcore.open(workload["child"]) as child, vhdcore.open(workload["parent"]) as parent:
        for offset in range(0, workload["parent_size"], 64 * MiB):
            assert parent.read(offset, MiB) == child.read(offset, MiB)


@pytest.mark.parametrize("durable", [False, True], ids=["cp", "cp+sync"])
def test_cp(benchmark, workload, durable):
    benchmark.group = _group(workload)
    benchmark.name = "cp + sync FILE" if durable else "cp"
    benchmark.extra_info["bytes"] = workload["changes"]
    target = workload["root"] / "copy.bin"

    def copy():
        subprocess.run(["cp", str(workload["source"]), str(target)], check=True)
        if durable:
            subprocess.run(["sync", str(target)], check=True)

    benchmark.pedantic(copy, setup=lambda: _fresh_target(workload), rounds=ROUNDS, iterations=1)
    _record(benchmark, "cp+sync" if durable else "cp")


def test_ratio(workload, capsys):
    """Print the ratios the README quotes (only after a timed run)."""
    if not {"commit", "cp", "cp+sync"} <= _times.keys():
        pytest.skip("timings are only recorded when benchmarks run (not --benchmark-disable)")
    commit_time = _times["commit"]
    lines = [
        f"commit {workload['changes'] // MiB} MiB into {workload['parent_size'] // MiB} MiB: "
        f"{commit_time:.3f} s median of {ROUNDS} "
        f"({workload['changes'] / commit_time / MiB:.0f} MiB/s)",
        f"cp {_times['cp']:.3f} s -> commit/cp = {commit_time / _times['cp']:.2f}x",
        f"cp + sync {_times['cp+sync']:.3f} s -> commit/(cp+sync) = "
        f"{commit_time / _times['cp+sync']:.2f}x",
    ]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
