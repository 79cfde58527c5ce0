"""Commit (coalesce) against an in-memory model, the peers, and a crash at every write."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_checks_clean
from helpers import random_writes as _random_writes

import vhdcore
from vhdcore import errors
from vhdcore.formats.vhd.commit import commit
from vhdcore.formats.vhd.snapshot import snapshot

MiB = 1024 * 1024


def random_writes(image, model, rng, count, max_len=200_000, zero_fraction=0.2):
    _random_writes(image, model, rng, count, max_len=max_len, zero_fraction=zero_fraction)




def qemu_compare(peers, image, model, tmp_path):
    raw = tmp_path / "expected.raw"
    raw.write_bytes(bytes(model))
    peers.run("qemu-img", "compare", "-q", "-f", "vpc", "-F", "raw", image, raw)
    peers.run("qemu-img", "info", "-f", "vpc", image)
    peers.run("vhdiinfo", image)




def make_pair(tmp_path, rng, *, parent_type="dynamic", size=6 * MiB, parent_block=MiB,
              child_block=None, parent_writes=12, child_writes=12):
    """A parent and a snapshot child with random writes.

    Returns ``(parent, child, parent_model, child_model)``.
    """
    parent = tmp_path / "parent.vhd"
    child = tmp_path / "child.vhd"
    model = bytearray(size)
    fixed = parent_type == "fixed"  # a fixed image takes no block size
    with vhdcore.create(
        parent, size, type=parent_type, block_size=None if fixed else parent_block
    ) as image:
        random_writes(image, model, rng, parent_writes)
    parent_model = bytes(model)
    options = {} if child_block is None else {"block_size": child_block}
    with vhdcore.create(child, parent=parent, **options) as image:
        random_writes(image, model, rng, child_writes)
    return parent, child, parent_model, bytes(model)


@pytest.mark.parametrize(
    "parent_type, parent_block, child_block",
    [
        ("dynamic", MiB, None),
        ("dynamic", 2 * MiB, 512 * 1024),  # child blocks smaller than the parent's
        ("dynamic", 512 * 1024, MiB),  # child blocks larger than the parent's
        ("fixed", MiB, 512 * 1024),
    ],
)
def test_commit_matches_model_and_peers(tmp_path, rng, peers, parent_type, parent_block,
                                        child_block):
    parent, child, _, expected = make_pair(
        tmp_path, rng, parent_type=parent_type, parent_block=parent_block, child_block=child_block
    )
    child_bytes = child.read_bytes()
    result = commit(child)
    assert result.parent == str(parent)
    assert result.parent_type == parent_type
    assert result.bytes_copied > 0 and not result.child_removed
    assert child.read_bytes() == child_bytes  # the child is only read
    with vhdcore.open(parent) as image:
        assert image.read(0, len(expected)) == expected
    with vhdcore.open(child) as image:  # the child still reads the same
        assert image.read(0, len(expected)) == expected
    qemu_compare(peers, parent, expected, tmp_path)
    assert_checks_clean(parent)
    # Committing again is harmless: nothing changes.
    commit(child)
    with vhdcore.open(parent) as image:
        assert image.read(0, len(expected)) == expected


def test_commit_into_differencing_parent_three_deep(tmp_path, rng):
    size = 5 * MiB
    model = bytearray(size)
    base, mid, leaf = (tmp_path / n for n in ("base.vhd", "mid.vhd", "leaf.vhd"))
    with vhdcore.create(base, size, block_size=512 * 1024) as image:
        random_writes(image, model, rng, 10)
    base_model = bytes(model)
    with vhdcore.create(mid, parent=base) as image:
        random_writes(image, model, rng, 10)
    with vhdcore.create(leaf, parent=mid) as image:
        random_writes(image, model, rng, 10)
        # zeros written over data the chain holds must survive the commit
        image.write(100_000, bytes(70_000))
        model[100_000:170_000] = bytes(70_000)
    base_bytes = base.read_bytes()
    result = commit(leaf, remove=True)
    assert result.child_removed and not leaf.exists()
    assert base.read_bytes() == base_bytes  # only the immediate parent changes
    with vhdcore.open(mid) as image:
        assert image.read(0, size) == bytes(model)
    with vhdcore.open(base) as image:
        assert image.read(0, size) == base_model


def test_commit_random_chains_against_model(tmp_path, rng):
    for round_ in range(4):
        folder = tmp_path / f"r{round_}"
        folder.mkdir()
        size = int(rng.integers(2, 7)) * MiB + int(rng.integers(0, 8)) * 512
        block = [512 * 1024, MiB, 2 * MiB][int(rng.integers(0, 3))]
        model = bytearray(size)
        parent = folder / "p.vhd"
        with vhdcore.create(parent, size, block_size=block) as image:
            random_writes(image, model, rng, int(rng.integers(0, 15)))
        with vhdcore.create(folder / "c.vhd", parent=parent) as image:
            random_writes(image, model, rng, int(rng.integers(1, 25)), zero_fraction=0.3)
        commit(folder / "c.vhd")
        with vhdcore.open(parent) as image:
            assert image.read(0, size) == bytes(model)


def test_qemu_made_parent(tmp_path, rng, peers):
    parent = tmp_path / "q.vhd"
    peers.run("qemu-img", "create", "-q", "-f", "vpc", parent, "10M")
    peers.run("qemu-io", "-f", "vpc", "-c", "write -P 0x5a 1M 3M", parent)
    with vhdcore.open(parent) as image:
        size = image.virtual_size
        model = bytearray(image.read(0, size))
    snapshot(parent, tmp_path / "snap.vhd")
    with vhdcore.open(tmp_path / "snap.vhd", "r+") as image:
        random_writes(image, model, rng, 15)
    commit(tmp_path / "snap.vhd")
    qemu_compare(peers, parent, model, tmp_path)


def test_refusals(tmp_path):
    with vhdcore.create(tmp_path / "d.vhd", MiB):
        pass
    with pytest.raises(errors.UnsupportedError, match="not a differencing"):
        commit(tmp_path / "d.vhd")
    with vhdcore.create(tmp_path / "c.vhd", parent=tmp_path / "d.vhd"):
        pass
    with vhdcore.open(tmp_path / "d.vhd", "r+"):  # another writer holds the parent
        with pytest.raises(errors.LockedError):
            commit(tmp_path / "c.vhd", remove=True)
    assert (tmp_path / "c.vhd").exists()


def test_cli(tmp_path, rng, cli):
    parent, child, _, expected = make_pair(tmp_path, rng, size=3 * MiB)
    code, out, err = cli("commit", child, "--json", "-p", "--remove")
    assert code == 0, err
    report = json.loads(out)
    assert report["child_removed"] and report["bytes_copied"] > 0
    assert not child.exists()
    with vhdcore.open(parent) as image:
        assert image.read(0, len(expected)) == expected
    code, out, err = cli("commit", parent)
    assert code == 1 and "not a differencing" in err


def sectors(data):
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, 512)


@pytest.mark.parametrize("parent_type", ["dynamic", "fixed"])
def test_crash_at_every_write(tmp_path, rng, crasher, parent_type):
    """A crash at any write leaves the parent opening for writing, each sector
    reading old or new, the child byte-identical; a rerun finishes the job."""
    work = tmp_path / "work"
    work.mkdir()
    parent, child, parent_model, expected = make_pair(
        work, rng, parent_type=parent_type, size=3 * MiB, parent_block=512 * 1024,
        parent_writes=5, child_writes=8,
    )
    pristine = {p: p.read_bytes() for p in (parent, child)}
    crashed, total = crasher(None, commit, child)
    assert not crashed and total > 3
    old, new = sectors(parent_model), sectors(expected)
    for limit in range(1, total + 1):
        for path, data in pristine.items():
            path.write_bytes(data)
        crashed, _ = crasher(limit, commit, child)
        assert crashed, limit
        assert child.read_bytes() == pristine[child]
        with vhdcore.open(parent, "r+") as image:  # opens for writing: footer intact
            now = sectors(image.read(0, len(expected)))
            if image.type != "fixed":
                raw = parent.read_bytes()
                assert raw[:512] == raw[-512:]
        assert_checks_clean(parent, deep=False)
        ok = ((now == old).all(axis=1) | (now == new).all(axis=1)).all()
        assert ok, f"crash at write {limit}: a sector reads neither old nor new"
        commit(child)
        with vhdcore.open(parent) as image:
            assert image.read(0, len(expected)) == expected, limit
        assert_checks_clean(parent)
