"""``vhdcore demo``: the sample conversion runs, verifies itself and is quick."""

from __future__ import annotations

import os

from vhdcore.commands.demo import make_sample

MiB = 1024 * 1024


def test_demo_runs_and_verifies(cli):
    code, out, err = cli("demo", "--size", "8M")
    assert code == 0, err
    for step in ("raw -> dynamic", "dynamic -> fixed", "fixed -> raw"):
        assert step in out
    assert out.count(" ok") == 3 and "MISMATCH" not in out
    assert "byte-identical" in out and "files removed" in out


def test_demo_keeps_files_with_dir(tmp_path, cli):
    code, out, _ = cli("demo", "--size", "4M", "--dir", tmp_path)
    assert code == 0
    (run,) = os.listdir(tmp_path)
    names = sorted(os.listdir(tmp_path / run))
    assert names == ["roundtrip.raw", "sample-fixed.vhd", "sample.raw", "sample.vhd"]
    assert f"files kept in {tmp_path / run}" in out


def test_sample_is_deterministic_and_realistic(tmp_path):
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    made = make_sample(a, 16 * MiB)
    make_sample(b, 16 * MiB)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[510:512] == b"\x55\xaa"
    assert all(made[kind] > 0 for kind in ("random", "text", "zeros", "holes"))
    assert sum(made.values()) == 16 * MiB
    assert os.stat(a).st_blocks * 512 < 16 * MiB  # holes stay holes
