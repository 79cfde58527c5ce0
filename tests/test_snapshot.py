"""Snapshot: an empty differencing child that reads as its parent and protects it."""

from __future__ import annotations

import json

import numpy as np
import pytest

import vhdcore
from vhdcore import errors
from vhdcore.formats.vhd.commit import commit
from vhdcore.formats.vhd.snapshot import snapshot

MiB = 1024 * 1024


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_snapshot_reads_as_parent_and_isolates_writes(tmp_path, rng, peers, kind):
    parent = tmp_path / "base.vhd"
    data = rng.integers(0, 256, 3 * MiB, dtype=np.uint8).tobytes()
    with vhdcore.create(
        parent, 3 * MiB, type=kind, block_size=None if kind == "fixed" else MiB
    ) as image:
        image.write(0, data)
    before = parent.read_bytes()
    info = snapshot(parent, tmp_path / "snap.vhd")
    assert info["type"] == "differencing" and info["parent_uuid"]
    assert info["chain"][1]["filename"] == str(parent)
    with vhdcore.open(tmp_path / "snap.vhd", "r+") as child:
        assert child.block_size == (MiB if kind == "dynamic" else 2 * MiB)
        assert child.read(0, len(data)) == data
        child.write(1000, b"changed")
    assert parent.read_bytes() == before
    peers.run("qemu-img", "info", "-f", "vpc", tmp_path / "snap.vhd")
    peers.run("vhdiinfo", tmp_path / "snap.vhd")


def test_snapshot_of_a_snapshot_and_commit_back(tmp_path):
    base = tmp_path / "base.vhd"
    with vhdcore.create(base, 2 * MiB) as image:
        image.write(0, b"base")
    snapshot(base, tmp_path / "s1.vhd")
    with vhdcore.open(tmp_path / "s1.vhd", "r+") as image:
        image.write(4, b"-one")
    snapshot(tmp_path / "s1.vhd", tmp_path / "s2.vhd")
    with vhdcore.open(tmp_path / "s2.vhd", "r+") as image:
        assert len(image.chain) == 3
        image.write(8, b"-two")
    commit(tmp_path / "s2.vhd", remove=True)
    commit(tmp_path / "s1.vhd", remove=True)
    with vhdcore.open(base) as image:
        assert image.read(0, 12) == b"base-one-two"


def test_qemu_made_parent(tmp_path, peers):
    parent = tmp_path / "q.vhd"
    peers.run("qemu-img", "create", "-q", "-f", "vpc", parent, "5M")
    peers.run("qemu-io", "-f", "vpc", "-c", "write -P 0x42 0 1M", parent)
    snapshot(parent, tmp_path / "c.vhd")
    with vhdcore.open(tmp_path / "c.vhd") as child:
        assert child.virtual_size == child.parent.virtual_size
        assert child.read(0, MiB) == b"\x42" * MiB


def test_refusals_and_cli(tmp_path, cli):
    parent = tmp_path / "p.vhd"
    with vhdcore.create(parent, MiB):
        pass
    code, out, err = cli("snapshot", parent, tmp_path / "c.vhd", "--json")
    assert code == 0, err
    assert json.loads(out)["type"] == "differencing"
    code, out, err = cli("snapshot", parent, tmp_path / "c.vhd")
    assert code == 1 and "exists" in err
    code, out, err = cli("snapshot", parent, tmp_path / "c.vhd", "--force")
    assert code == 0 and "created snapshot" in out
    with pytest.raises(FileExistsError):
        snapshot(parent, parent, overwrite=True)
    with pytest.raises(FileNotFoundError):
        snapshot(tmp_path / "missing.vhd", tmp_path / "x.vhd")
    assert not (tmp_path / "x.vhd").exists()
    (tmp_path / "junk.vhd").write_bytes(b"not a vhd" * 100)
    with pytest.raises(errors.VHDError):
        snapshot(tmp_path / "junk.vhd", tmp_path / "x.vhd")
    assert not (tmp_path / "x.vhd").exists()
