"""``vhdcore demo``: the sample conversion runs, verifies itself and is quick."""

from __future__ import annotations

import os

from vhdcore.cli.demo import make_sample

MiB = 1024 * 1024


def test_demo_runs_and_verifies(cli):
    code, out, err = cli("demo", "--size", "8M")
    assert code == 0, err
    for step in ("raw -> dynamic", "dynamic -> fixed", "fixed -> raw"):
        assert step in out
    assert out.count(" ok") == 3 and "MISMATCH" not in out
    assert "byte-identical" in out and "files removed" in out


def test_demo_keeps_files_in_dir_itself(tmp_path, cli):
    code, out, _ = cli("demo", "--size", "4M", "--dir", tmp_path)
    assert code == 0
    names = sorted(os.listdir(tmp_path))
    assert names == ["roundtrip.raw", "sample-fixed.vhd", "sample.raw", "sample.vhd"]
    assert f"files kept in {tmp_path}\n" in out


def test_demo_dir_is_created_but_not_its_parent(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("demo", "--size", "1M", "--dir", "new")  # relative, made
    assert code == 0, err
    assert "roundtrip.raw" in os.listdir(tmp_path / "new")
    code, out, err = cli("demo", "--size", "1M", "--dir", "new")  # its files are there
    assert code == 1 and "new/sample.raw: exists from an earlier run" in err
    code, out, err = cli("demo", "--size", "1M", "--dir", tmp_path / "gone" / "x")
    assert code == 1 and out == ""
    assert f"{tmp_path / 'gone'} does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "gone").exists()


def test_demo_uses_the_size_asked_or_refuses_it(tmp_path, cli):
    code, out, err = cli("demo", "--size", "1M", "--dir", tmp_path / "a")
    assert code == 0, err
    assert os.path.getsize(tmp_path / "a" / "sample.raw") == MiB
    assert "1 MiB virtual" in out
    code, _, err = cli("demo", "--size", "1049088", "--dir", tmp_path / "b")  # 1M + 1 sector
    assert code == 0, err
    assert os.path.getsize(tmp_path / "b" / "roundtrip.raw") == 1049088
    for bad in ("1000", "512K", "1M1", "1048577"):  # too small, or not whole sectors
        code, out, err = cli("demo", "--size", bad)
        assert code == 64 and out == "", bad
        assert "invalid sample size" in err or "invalid size" in err


def test_sample_is_deterministic_and_realistic(tmp_path):
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    made = make_sample(a, 16 * MiB)
    make_sample(b, 16 * MiB)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[510:512] == b"\x55\xaa"
    assert all(made[kind] > 0 for kind in ("random", "text", "zeros", "holes"))
    assert sum(made.values()) == 16 * MiB
    assert os.stat(a).st_blocks * 512 < 16 * MiB  # holes stay holes
