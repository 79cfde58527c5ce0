"""``vhdcore digest``: SHA-256 of the virtual disk, equal to sha256sum of the raw image."""

from __future__ import annotations

import hashlib
import json

import pytest

import vhdcore
from vhdcore.ops.digest import Hasher, digest, digest_report

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def sample(tmp_path, rng):
    path = tmp_path / "sample.raw"
    with open(path, "wb") as handle:
        handle.truncate(6 * MiB)
        for offset, data in (
            (0, rng.bytes(40 * KiB)),
            (2 * MiB + 512, bytes(64 * KiB)),
            (4 * MiB - 100, rng.bytes(300)),
        ):
            handle.seek(offset)
            handle.write(data)
    return path


def test_same_digest_for_every_container(tmp_path, sample):
    expected = hashlib.sha256(sample.read_bytes()).hexdigest()
    assert digest(sample) == expected
    for fmt in ("fixed", "dynamic"):
        out = tmp_path / f"x-{fmt}.vhd"
        vhdcore.convert(sample, out, out_format=fmt)
        assert digest(out) == expected
        with vhdcore.open(out) as image:  # an open VHD works too
            assert digest(image) == expected
    assert digest(tmp_path / "x-fixed.vhd", fmt="raw") != expected  # raw includes the footer


def test_chain_digest(tmp_path, rng):
    base, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    content = bytearray(4 * MiB)
    with vhdcore.create(base, 4 * MiB) as image:
        image.write(0, b"p" * 3000)
        content[0:3000] = b"p" * 3000
    with vhdcore.create(child, parent=base) as image:
        image.write(1024, b"c" * 512)
        content[1024:1536] = b"c" * 512
    assert digest(child) == hashlib.sha256(content).hexdigest()


def test_zeros_are_hashed_from_a_shared_buffer():
    hasher = Hasher()
    hasher.zeros(10 * MiB + 7)
    assert hasher.length == 10 * MiB + 7
    assert hasher.hexdigest() == hashlib.sha256(bytes(10 * MiB + 7)).hexdigest()


def test_cli_prints_a_sha256sum_line(tmp_path, sample, cli):
    code, out, err = cli("digest", sample)
    assert code == 0, err
    assert out == f"{hashlib.sha256(sample.read_bytes()).hexdigest()}  {sample}\n"


def test_cli_json(tmp_path, sample, cli):
    vhd = tmp_path / "x.vhd"
    vhdcore.convert(sample, vhd)
    code, out, err = cli("digest", vhd, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["sha256"] == hashlib.sha256(sample.read_bytes()).hexdigest()
    assert report["format"] == "vhd" and report["type"] == "dynamic"
    assert report["virtual_size"] == 6 * MiB
    assert report["bytes_read"] < 3 * MiB  # unallocated blocks are not read


def test_digest_of_stdin_pipe(sample, cli_process):
    done = cli_process("digest", "-", input=sample.read_bytes())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0].decode() == hashlib.sha256(sample.read_bytes()).hexdigest()


def test_report_counts_only_data_runs(sample):
    report = digest_report(sample)
    assert report["bytes_read"] <= 40 * KiB + 64 * KiB + 300 + 3 * 4 * KiB


def test_unreadable_image_is_one_line_error(tmp_path, cli):
    code, out, err = cli("digest", tmp_path / "missing.vhd")
    assert code == 1 and out == "" and err.count("\n") == 1
