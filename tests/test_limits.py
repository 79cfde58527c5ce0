"""Limits no header field can lift (reliability R11, R21-R25, M3, M7).

Nothing vhdcore allocates or loops over is sized by an untrusted count
without a bound derived from the file's size and the 2040 GiB maximum:
a hostile header is refused before anything is allocated, or the image
opens and every reader stays bounded in time and memory. Memory is
measured in a fresh subprocess (``resource.getrusage`` max RSS), so the
figures are the process's own.

Chains: the depth is bounded (30 by default, ``max_chain_depth`` /
``--max-chain-depth`` to change it), loops of any length are refused, and
parents are confined by the policy of :mod:`vhdcore.formats.vhd.chain` (see also
tests/test_parent_policy.py and tests/test_image.py, which this file does
not repeat).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
import uuid as uuidlib
from pathlib import Path

import pytest

import vhdcore
from vhdcore import errors
from vhdcore.formats.vhd.footer import Footer
from vhdcore.formats.vhd.header import DynamicHeader

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
REPO = Path(__file__).resolve().parents[1]
MAX_DYNAMIC = 0xFF000000 * 512
#: Extra resident memory any single hostile open (and its readers) may use.
RSS_BUDGET = 64 * MiB


def _rewrite(path, *, footer=None, header=None, at=512):
    """Rewrite the footer (both copies) and/or the header with changed fields."""
    import dataclasses

    raw = bytearray(Path(path).read_bytes())
    if footer:
        old = Footer.from_bytes(bytes(raw[-512:]))
        new = dataclasses.replace(old, **footer).to_bytes()
        raw[-512:] = new
        if old.disk_type != 2:
            raw[:512] = new
    if header:
        old = DynamicHeader.from_bytes(bytes(raw[at : at + 1024]))
        raw[at : at + 1024] = dataclasses.replace(old, **header).to_bytes()
    Path(path).write_bytes(bytes(raw))


def _small_dynamic(path, size=64 * KiB, block_size=4 * KiB):
    with vhdcore.create(path, size, block_size=block_size, uuid=uuidlib.UUID(int=7),
                        timestamp=0) as image:
        image.write(0, b"x" * 5000)
    return Path(path)


def _measure(script: str, tmp_path) -> dict:
    """Run ``script`` in a fresh interpreter; it sets ``outcome``. Returns RSS and time."""
    body = textwrap.dedent(
        """
        import json, resource, sys, time
        import vhdcore
        from vhdcore import errors
        import vhdcore.formats.vhd.check, vhdcore.formats.vhd.info
        def rss():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        before = rss()
        started = time.monotonic()
        outcome = None
        try:
        {script}
        except errors.VHDError as exc:
            outcome = "refused: " + type(exc).__name__ + ": " + str(exc)
        print(json.dumps({{"rss": rss() - before, "seconds": time.monotonic() - started,
                          "outcome": outcome}}))
        """
    ).format(script=textwrap.indent(textwrap.dedent(script), "    "))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# table sizes


def test_max_table_entries_all_ones_fails_before_allocating(tmp_path):
    path = _small_dynamic(tmp_path / "t.vhd", size=8 * KiB, block_size=4 * KiB)
    _rewrite(path, header={"max_table_entries": 0xFFFFFFFF})
    assert path.stat().st_size < 16 * KiB
    tracemalloc.start()
    try:
        with pytest.raises(errors.CorruptImageError, match="at most"):
            vhdcore.open(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MiB, f"refusing a 16 GiB table took {peak} bytes"
    from vhdcore.formats.vhd import check

    report = check.check(path)
    assert "header.table_size" in report.codes


def test_current_size_2040g_with_tiny_table_is_refused(tmp_path):
    """2040 GiB in 2 MiB blocks needs 1,044,480 entries: a 20 KiB file cannot hold them."""
    path = _small_dynamic(tmp_path / "t.vhd")
    _rewrite(path, footer={"current_size": MAX_DYNAMIC, "original_size": MAX_DYNAMIC},
             header={"block_size": 2 * MiB})
    with pytest.raises(errors.CorruptImageError, match="max table entries|needs"):
        vhdcore.open(path)


def _dynamic_2040g(tmp_path):
    """A 2040 GiB dynamic disk in a 40 KiB file: 256 MiB blocks, 8160 entries."""
    path = tmp_path / "huge.vhd"
    block = 256 * MiB
    entries = MAX_DYNAMIC // block
    table = 1536 + (entries * 4 + 511) // 512 * 512
    footer = Footer.new(3, MAX_DYNAMIC, uuid=uuidlib.UUID(int=9), timestamp=0)
    header = DynamicHeader.new(entries, block)
    raw = bytearray(table + 512)
    raw[:512] = footer.to_bytes()
    raw[512:1536] = header.to_bytes()
    raw[1536:table] = b"\xff" * (table - 1536)
    raw[table:] = footer.to_bytes()
    path.write_bytes(bytes(raw))
    return path


def test_2040g_dynamic_in_a_tiny_file_opens_with_bounded_memory_and_time(tmp_path):
    path = _dynamic_2040g(tmp_path)
    assert path.stat().st_size < 64 * KiB
    got = _measure(
        f"""
        import random
        with vhdcore.open({str(path)!r}) as image:
            assert image.virtual_size == {MAX_DYNAMIC}
            vhdcore.formats.vhd.info.describe(image)
            extents = image.extents()
            assert len(extents) == 1 and extents[0].state == "zero"
            rng = random.Random(1)
            for _ in range(64):
                assert image.read(rng.randrange(0, image.virtual_size - 497), 497) == bytes(497)
        report = vhdcore.formats.vhd.check.check({str(path)!r}, deep=True)
        assert report.clean, report.errors
        outcome = "opened"
        """,
        tmp_path,
    )
    assert got["outcome"] == "opened", got
    assert got["rss"] < RSS_BUDGET, got
    assert got["seconds"] < 10, got


def test_2040g_declared_everything_refused_fast_in_a_10k_file(tmp_path):
    """Every size field at its largest in a 10 KiB file: refused, bounded RSS."""
    path = _small_dynamic(tmp_path / "t.vhd", size=8 * KiB)  # create refuses 512 B blocks
    _rewrite(path, footer={"current_size": MAX_DYNAMIC},
             header={"max_table_entries": 0xFFFFFFFF, "block_size": 512})
    got = _measure(f"vhdcore.open({str(path)!r})\noutcome = 'opened'", tmp_path)
    assert got["outcome"].startswith("refused"), got
    assert got["rss"] < RSS_BUDGET and got["seconds"] < 5, got
    got = _measure(f"report = vhdcore.formats.vhd.check.check({str(path)!r}, deep=True)\n"
                   "outcome = 'checked' if report.errors else 'clean'", tmp_path)
    assert got["outcome"] == "checked", got
    assert got["rss"] < RSS_BUDGET and got["seconds"] < 5, got


def test_bat_of_a_large_file_is_not_multiplied(tmp_path):
    """A 4 MiB file whose table claims every entry: memory stays ~ the table's size."""
    size = MAX_DYNAMIC // 4  # 510 GiB in 512-byte blocks: far past MAX_BAT_BYTES
    path = _small_dynamic(tmp_path / "t.vhd", size=8 * KiB)  # create refuses 512 B blocks
    with open(path, "r+b") as f:  # make room for a 4 MiB table
        raw = bytearray(f.read())
        grown = raw[:-512] + bytes(4 * MiB) + raw[-512:]
        f.seek(0)
        f.write(grown)
    _rewrite(path, footer={"current_size": size},
             header={"max_table_entries": (4 * MiB) // 4, "block_size": 512})
    got = _measure(f"vhdcore.open({str(path)!r})\noutcome = 'opened'", tmp_path)
    assert got["outcome"].startswith("refused"), got
    assert got["rss"] < RSS_BUDGET, got


@pytest.mark.parametrize("size", [60 << 40, 4 << 40, MAX_DYNAMIC + 512])
def test_fixed_footer_claiming_more_than_the_file_is_refused(tmp_path, size):
    path = tmp_path / "f.vhd"
    with vhdcore.create(path, 64 * KiB, type="fixed", uuid=uuidlib.UUID(int=1), timestamp=0):
        pass
    _rewrite(path, footer={"current_size": size, "original_size": size})
    with pytest.raises(errors.VHDError, match="fixed disk|file"):
        vhdcore.open(path)


def test_sparse_4t_fixed_opens_and_reads(tmp_path, unavailable):
    """R6: a fixed VHD above 2040 GiB is legal (Azure) when the file really is that big."""
    path = tmp_path / "big.vhd"
    size = 4 << 40
    try:
        with open(path, "wb") as f:
            f.truncate(size + 512)
    except OSError as exc:
        unavailable(f"no 4 TiB sparse files here: {exc}")
    footer = Footer.new(2, size, uuid=uuidlib.UUID(int=2), timestamp=0)
    with open(path, "r+b") as f:
        f.seek(size)
        f.write(footer.to_bytes())
    with vhdcore.open(path) as image:
        assert image.virtual_size == size
        assert image.read(size - 512, 512) == bytes(512)


# ---------------------------------------------------------------------------
# locator payloads and names


def _child(tmp_path):
    with vhdcore.create(tmp_path / "p.vhd", 64 * KiB, uuid=uuidlib.UUID(int=11),
                        timestamp=0) as p:
        p.write(0, b"parent")
    with vhdcore.create(tmp_path / "c.vhd", parent=tmp_path / "p.vhd", timestamp=0):
        pass
    return tmp_path / "c.vhd"


@pytest.mark.parametrize("field, value", [
    ("data_length", 0xFFFFFFFF), ("data_space", 0xFFFFFFFF), ("data_offset", (1 << 64) - 512),
])
def test_locator_sizes_cannot_drive_reads(tmp_path, field, value):
    import dataclasses

    child = _child(tmp_path)
    header = DynamicHeader.from_bytes(child.read_bytes()[512:1536])
    locators = list(header.locators)
    locators = [dataclasses.replace(loc, **{field: value}) if not loc.is_unused else loc
                for loc in locators]
    _rewrite(child, header={"locators": tuple(locators)})
    got = _measure(
        f"""
        try:
            with vhdcore.open({str(child)!r}) as image:
                image.read(0, 6)
            outcome = "opened"
        finally:
            vhdcore.formats.vhd.check.check({str(child)!r}, parents=True)
        """,
        tmp_path,
    )
    assert got["rss"] < RSS_BUDGET and got["seconds"] < 5, got


# ---------------------------------------------------------------------------
# chains


def test_depth_31_chain_refused_by_default_and_allowed_on_request(tmp_path, cli):
    # Build from the root up with the limit lifted (create refuses a child
    # it could not open again under its own limit).
    previous = tmp_path / "d0.vhd"
    with vhdcore.create(previous, 16 * KiB, block_size=4 * KiB, timestamp=0) as image:
        image.write(0, b"root")
    for level in range(1, 31):
        path = tmp_path / f"d{level}.vhd"
        parent = vhdcore.open(previous, max_chain_depth=64)
        try:
            with vhdcore.create(path, parent=parent, timestamp=0, max_chain_depth=64):
                pass
        except errors.LimitError:
            pytest.fail(f"create refused a parent at depth {level}")
        finally:
            parent.close()
        previous = path
    leaf = previous
    with pytest.raises(errors.LimitError, match="30"):
        vhdcore.open(leaf)
    with vhdcore.open(leaf, max_chain_depth=31) as image:
        assert len(image.chain) == 31
        assert image.read(0, 4) == b"root"
    code, _, err = cli("info", leaf)
    assert code != 0 and "deeper than the limit" in err and len(err.strip().splitlines()) == 1
    code, out, _ = cli("info", leaf, "--max-chain-depth", "31")
    assert code == 0, out
    from vhdcore.formats.vhd import check

    assert not check.check(leaf, parents=True).clean
    assert check.check(leaf, parents=True, max_chain_depth=31).clean


def test_chain_of_three_that_loops_is_refused(tmp_path):
    """a <- b <- c, then a is replaced by a child of c with a's UUID: b -> a -> c -> b."""
    with vhdcore.create(tmp_path / "a.vhd", 16 * KiB, block_size=4 * KiB, timestamp=0) as a:
        a_uuid = a.uuid
    with vhdcore.create(tmp_path / "b.vhd", parent=tmp_path / "a.vhd", timestamp=0):
        pass
    with vhdcore.create(tmp_path / "c.vhd", parent=tmp_path / "b.vhd", timestamp=0):
        pass
    with vhdcore.create(tmp_path / "a2.vhd", parent=tmp_path / "c.vhd", uuid=a_uuid,
                        timestamp=0):
        pass
    os.replace(tmp_path / "a2.vhd", tmp_path / "a.vhd")
    started = time.monotonic()
    for leaf in ("a", "b", "c"):
        with pytest.raises(errors.ChainLoopError, match="loop"):
            vhdcore.open(tmp_path / f"{leaf}.vhd")
        from vhdcore.formats.vhd import check

        assert not check.check(tmp_path / f"{leaf}.vhd", parents=True).clean
    assert time.monotonic() - started < 10


def test_child_whose_only_locator_names_itself(tmp_path):
    """A crafted child: parent UUID = its own UUID, every locator = its own name."""
    child = _child(tmp_path)
    with vhdcore.open(child) as image:
        own = image.uuid
    _rewrite(child, header={"parent_uuid": own})
    os.unlink(tmp_path / "p.vhd")
    os.rename(child, tmp_path / "p.vhd")  # its locators name p.vhd: now itself
    with pytest.raises(errors.ChainLoopError):
        vhdcore.open(tmp_path / "p.vhd")


def test_create_reopens_with_the_callers_chain_policy(tmp_path):
    """create() used to reopen the new child allowing only its parent's directory: a
    grandparent elsewhere (allowed by the caller) made it fail, and leave the file.
    Now the caller's policy is the child's: a chain it would refuse is refused
    before any file is made, and one it allows opens again with the same options."""
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    with vhdcore.create(tmp_path / "a" / "base.vhd", 16 * KiB, block_size=4 * KiB) as base:
        base.write(0, b"base")
    parent = vhdcore.open(tmp_path / "a" / "base.vhd")
    with pytest.raises(errors.UnsafeParentError, match="allow-parent-dir"):
        vhdcore.create(tmp_path / "b" / "mid.vhd", parent=parent)
    assert not (tmp_path / "b" / "mid.vhd").exists()
    with vhdcore.create(tmp_path / "b" / "mid.vhd", parent=parent,
                        allow_parent_dirs=[tmp_path / "a"]):
        pass
    parent.close()
    both = [tmp_path / "a", tmp_path / "b"]
    with vhdcore.open(tmp_path / "b" / "mid.vhd", allow_parent_dirs=[tmp_path / "a"]) as mid:
        with pytest.raises(errors.UnsafeParentError):
            vhdcore.create(tmp_path / "c" / "leaf.vhd", parent=mid,
                           allow_parent_dirs=[tmp_path / "a"])
        assert not (tmp_path / "c" / "leaf.vhd").exists()
        with vhdcore.create(tmp_path / "c" / "leaf.vhd", parent=mid,
                            allow_parent_dirs=both) as leaf:
            assert leaf.read(0, 4) == b"base"
    with pytest.raises(errors.UnsafeParentError):
        vhdcore.open(tmp_path / "c" / "leaf.vhd")
    with vhdcore.open(tmp_path / "c" / "leaf.vhd", allow_parent_dirs=both) as leaf:
        assert leaf.read(0, 4) == b"base"
    with pytest.raises(errors.UnsafeParentError):
        vhdcore.open(tmp_path / "c" / "leaf.vhd")
    with vhdcore.open(tmp_path / "c" / "leaf.vhd",
                      allow_parent_dirs=[tmp_path / "a", tmp_path / "b"]) as leaf:
        assert leaf.read(0, 4) == b"base"
