"""``vhdcore compare``: content equality of any two images, exit codes as qemu-img."""

from __future__ import annotations

import json
import re

import pytest

import vhdcore
from vhdcore.ops.compare import compare_images

KiB = 1024
MiB = 1024 * KiB


def write_raw(path, size, pieces):
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, data in pieces:
            handle.seek(offset)
            handle.write(data)
    return path


@pytest.fixture
def pair(tmp_path, rng):
    data = rng.bytes(100 * KiB)
    a = write_raw(tmp_path / "a.raw", 6 * MiB, [(MiB, data)])
    b = tmp_path / "b.vhd"
    vhdcore.convert(a, b)
    return a, b, data


def test_equal_images_of_different_formats(pair, cli):
    a, b, _ = pair
    code, out, err = cli("compare", a, b)
    assert (code, out) == (0, "Images are identical.\n"), err


@pytest.mark.parametrize("where", [MiB + 5, MiB + 100 * KiB + 17, 5 * MiB + 3, 0])
def test_first_difference_is_reported_like_qemu(tmp_path, pair, cli, peers, where):
    a, _, _ = pair
    c = tmp_path / "c.raw"
    c.write_bytes(a.read_bytes())
    with open(c, "r+b") as handle:
        handle.seek(where)
        old = handle.read(1)
        handle.seek(where)
        handle.write(bytes([old[0] ^ 0x5A]))
    c_vhd = tmp_path / "c.vhd"
    vhdcore.convert(c, c_vhd)
    code, out, _ = cli("compare", a, c_vhd)
    assert code == 1
    assert out == f"Content mismatch at offset {where}!\n"
    qemu = peers.run("qemu-img", "compare", "-f", "raw", "-F", "vpc", a, c_vhd, check=False)
    assert qemu.returncode == 1
    # qemu-img 7.2 reports the start of the differing sector; we report the byte.
    assert int(re.search(r"offset (\d+)", qemu.stdout).group(1)) == where // 512 * 512


def test_size_mismatch_with_zero_tail_is_equal(tmp_path, pair, cli):
    a, _, data = pair
    longer = write_raw(tmp_path / "longer.raw", 9 * MiB, [(MiB, data)])
    code, out, _ = cli("compare", a, longer)
    assert code == 0
    assert "size mismatch" in out and "all zeros" in out and "Images are identical." in out


def test_size_mismatch_with_data_in_the_tail_differs(tmp_path, pair, cli):
    a, _, data = pair
    longer = write_raw(tmp_path / "longer.raw", 9 * MiB, [(MiB, data), (8 * MiB + 3, b"x")])
    code, out, _ = cli("compare", longer, a)
    assert code == 1 and f"Content mismatch at offset {8 * MiB + 3}!" in out


def test_json_report(pair, cli):
    a, b, _ = pair
    code, out, _ = cli("compare", a, b, "--json")
    assert code == 0
    report = json.loads(out)
    assert report == {
        "a": str(a),
        "b": str(b),
        "format_a": "raw",
        "type_a": "raw",
        "format_b": "vhd",
        "type_b": "dynamic",
        "size_a": 6 * MiB,
        "size_b": 6 * MiB,
        "identical": True,
        "first_difference": None,
    }


def test_forced_formats(tmp_path, pair, cli):
    a, _, _ = pair
    fixed = tmp_path / "f.vhd"
    vhdcore.convert(a, fixed, out_format="fixed")
    code, out, _ = cli("compare", "-f", "raw", "-F", "vhd", a, fixed)
    assert code == 0
    code, out, _ = cli("compare", "-F", "raw", a, fixed)  # the footer is extra data then
    assert code == 1 and f"offset {6 * MiB}" in out


def test_errors_exit_2(tmp_path, pair, cli):
    a, _, _ = pair
    code, out, err = cli("compare", a, tmp_path / "missing.raw")
    assert code == 2 and out == "" and err.count("\n") == 1
    code, _, err = cli("compare", "-F", "vhd", a, a)
    assert code == 2


def test_library_reads_only_what_it_must(pair):
    a, b, _ = pair
    report = compare_images(a, b)
    assert report["identical"] and report["first_difference"] is None
