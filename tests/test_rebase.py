"""Rebase (safe and unsafe) against an in-memory model, and a crash at every write."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import assert_checks_clean
from helpers import random_writes as _random_writes

import vhdcore
from vhdcore import errors
from vhdcore.disk.extent import DATA
from vhdcore.formats.vhd.chain import locator_payloads
from vhdcore.formats.vhd.check import check
from vhdcore.formats.vhd.locators import decode_locator
from vhdcore.formats.vhd.rebase import rebase

MiB = 1024 * 1024


def random_writes(image, model, rng, count, max_len=150_000, zero_fraction=0.25):
    _random_writes(image, model, rng, count, max_len=max_len, zero_fraction=zero_fraction)




def chain(tmp_path, rng, size=4 * MiB, block=512 * 1024):
    """base <- mid <- child, each with random writes; returns paths and the child's model."""
    model = bytearray(size)
    paths = [tmp_path / n for n in ("base.vhd", "mid.vhd", "child.vhd")]
    with vhdcore.create(paths[0], size, block_size=block) as image:
        random_writes(image, model, rng, 10)
    for parent, path in zip(paths, paths[1:]):
        with vhdcore.create(path, parent=parent) as image:
            random_writes(image, model, rng, 10)
    return paths, model


def check_child(peers, path, model, parent):
    with vhdcore.open(path) as image:
        assert image.parent.path == str(parent)
        assert image.read(0, len(model)) == bytes(model)
        assert not [p for p in image.header.validate(
            path, 512, image.file_size, 4, image.footer.current_size) if p.severity == "error"]
        payloads = locator_payloads(image)
        texts = {loc.code: decode_locator(loc.code, payloads[i])
                 for i, loc in image.header.used_locators}
    assert texts[b"W2ku"] == str(parent)
    assert texts[b"W2ru"].startswith(".")
    peers.run("qemu-img", "info", "-f", "vpc", path)
    peers.run("vhdiinfo", path)
    assert_checks_clean(path)  # the old locators' space may be left as a leak


def test_safe_rebase_keeps_the_view(tmp_path, rng, peers):
    (base, mid, child), model = chain(tmp_path, rng)
    # onto the grandparent: the middle layer's sectors move into the child
    result = rebase(child, base)
    assert result.bytes_copied > 0 and result.old_parent == str(mid)
    check_child(peers, child, model, base)
    # onto an unrelated image with other contents, a fixed one, then back
    other = tmp_path / "other.vhd"
    with vhdcore.create(other, len(model), type="fixed") as image:
        image.write(0, b"\x99" * len(model))
    rebase(child, other)
    check_child(peers, child, model, other)
    result = rebase(child, mid)
    check_child(peers, child, model, mid)
    # the base is untouched by all of this
    with vhdcore.open(base) as image:
        assert image.footer.disk_type == 3


def test_random_rebases_against_model(tmp_path, rng):
    size = 3 * MiB
    models = []
    paths = []
    for i in range(3):
        path = tmp_path / f"p{i}.vhd"
        model = bytearray(size)
        with vhdcore.create(path, size, block_size=[256 * 1024, MiB, 2 * MiB][i]) as image:
            random_writes(image, model, rng, 8)
        paths.append(path)
        models.append(model)
    child = tmp_path / "child.vhd"
    model = bytearray(models[0])
    with vhdcore.create(child, parent=paths[0], block_size=512 * 1024) as image:
        random_writes(image, model, rng, 10)
    for step in range(6):
        target = paths[int(rng.integers(0, 3))]
        rebase(child, target)
        with vhdcore.open(child, "r+") as image:
            assert image.parent.path == str(target)
            assert image.read(0, size) == bytes(model), step
            random_writes(image, model, rng, 3)


def test_unsafe_rebase_and_relink(tmp_path, rng):
    (base, mid, child), model = chain(tmp_path, rng)
    with vhdcore.open(child) as image:
        own = [e for e in image.extents() if e.state == DATA]
        own_data = [(e.offset, image.read(e.offset, e.length)) for e in own]
    with vhdcore.open(base) as image:
        expected = bytearray(image.read(0, len(model)))
    for offset, data in own_data:
        expected[offset : offset + len(data)] = data
    result = rebase(child, base, unsafe=True)
    assert result.unsafe and result.bytes_copied == 0
    with vhdcore.open(child) as image:
        assert image.parent.path == str(base)
        assert image.read(0, len(model)) == bytes(expected)
    # relink after moving the parent: the child no longer opens, then does
    elsewhere = tmp_path / "moved"
    elsewhere.mkdir()
    shutil.move(base, elsewhere / "base.vhd")
    shutil.move(mid, elsewhere / "mid.vhd")
    with pytest.raises(errors.ParentNotFoundError):
        vhdcore.open(child)
    rebase(child, elsewhere / "base.vhd", unsafe=True)
    with vhdcore.open(child) as image:
        assert image.read(0, len(model)) == bytes(expected)


def test_unsafe_rebase_needs_no_old_parent_after_commit_remove(tmp_path, rng, peers, cli):
    """base <- s1 <- s2 <- s3: commit s2 --remove, then relink s3 to s1 (qemu-img rebase -u)."""
    size = 4 * MiB
    paths = [tmp_path / f"{n}.vhd" for n in ("base", "s1", "s2", "s3")]
    model = bytearray(size)
    with vhdcore.create(paths[0], size, block_size=512 * 1024) as image:
        random_writes(image, model, rng, 8)
    for parent, path in zip(paths, paths[1:]):
        with vhdcore.create(path, parent=parent) as image:
            random_writes(image, model, rng, 8)
    expected = tmp_path / "expected.raw"
    expected.write_bytes(bytes(model))
    _base, s1, s2, s3 = paths
    code, _out, err = cli("commit", s2, "--remove")
    assert code == 0 and not s2.exists(), err
    with pytest.raises(errors.ParentNotFoundError):
        vhdcore.open(s3)
    code, out, err = cli("rebase", s3, s1, "--unsafe")
    assert code == 0, err
    assert "s2.vhd" in out  # the old parent is named from the child's locators
    with vhdcore.open(s3) as image:
        assert image.parent.path == str(s1)
        assert image.read(0, size) == bytes(model)
    assert check(s3, parents=True).exit_code == 0
    flat = tmp_path / "flat.vhd"
    vhdcore.convert(s3, flat, out_format="dynamic")
    peers.run("qemu-img", "compare", "-f", "vpc", "-F", "raw", flat, expected)


def test_a_detached_child_refuses_reads_and_writes(tmp_path):
    base, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    vhdcore.create(base, 1 * MiB).close()
    vhdcore.create(child, parent=base).close()
    base.unlink()
    with vhdcore.VHD(child, "r+", _without_parent=True) as image:
        with pytest.raises(errors.UnsupportedError, match="without its parent"):
            image.read(0, 512)
        with pytest.raises(errors.UnsupportedError, match="without its parent"):
            image.write(0, b"x" * 512)


def test_long_parent_path_relocates_locators(tmp_path, rng, peers):
    (base, mid, child), model = chain(tmp_path, rng)
    deep = tmp_path / ("d" * 200) / ("e" * 200)
    deep.mkdir(parents=True)
    far = deep / "far.vhd"
    shutil.copy(base, far)
    with vhdcore.open(child) as image:
        first = int(image.bat[image.bat != 0xFFFFFFFF].min()) * 512
        space = sum(loc.space_bytes for _i, loc in image.header.used_locators)
    result = rebase(child, far)
    assert result.locator_placement == "appended" and result.blocks_moved >= 1
    check_child(peers, child, model, far)
    with vhdcore.open(child) as image:
        assert sum(loc.space_bytes for _i, loc in image.header.used_locators) > space
        assert max(loc.data_end for _i, loc in image.header.used_locators) > first
    # a short path afterwards fits in the space the old locators left
    result = rebase(child, base)
    assert result.locator_placement == "gap" and result.blocks_moved == 0
    check_child(peers, child, model, base)


def test_refusals(tmp_path, rng, cli):
    (base, mid, child), model = chain(tmp_path, rng, size=2 * MiB)
    with vhdcore.create(tmp_path / "small.vhd", MiB):
        pass
    with pytest.raises(errors.LimitError, match="virtual size"):
        rebase(child, tmp_path / "small.vhd")
    with pytest.raises(errors.ChainLoopError):
        rebase(mid, child)
    with pytest.raises(errors.UnsupportedError):
        rebase(base, mid)
    before = child.read_bytes()
    code, out, err = cli("rebase", child, tmp_path / "small.vhd")
    assert code == 1 and "virtual size" in err
    assert child.read_bytes() == before
    code, out, err = cli("rebase", child, base, "--json", "-p")
    assert code == 0, err
    report = json.loads(out)
    assert report["new_parent"] == str(base) and not report["unsafe"]
    code, out, err = cli("rebase", child, mid, "--unsafe")
    assert code == 0 and "unsafe" in out, err




def test_crash_at_every_write(tmp_path, rng, crasher):
    """A crash anywhere leaves the child opening (on its old or new parent)
    with the same view; rerunning the rebase finishes it."""
    (base, mid, child), model = chain(tmp_path, rng, size=2 * MiB, block=256 * 1024)
    deep = tmp_path / ("x" * 250)
    deep.mkdir()
    target = deep / "target.vhd"
    shutil.copy(base, target)  # a long path: the locators must move
    pristine = child.read_bytes()
    crashed, total = crasher(None, rebase, child, target)
    assert not crashed and total >= 4
    for limit in range(1, total + 1):
        child.write_bytes(pristine)
        crashed, _ = crasher(limit, rebase, child, target)
        assert crashed
        with vhdcore.open(child, "r+") as image:
            assert image.parent.path in (str(mid), str(target))
            assert image.read(0, len(model)) == bytes(model), limit
        assert_checks_clean(child, deep=False)
        rebase(child, target)
        with vhdcore.open(child) as image:
            assert image.parent.path == str(target)
            assert image.read(0, len(model)) == bytes(model), limit
        assert_checks_clean(child)
