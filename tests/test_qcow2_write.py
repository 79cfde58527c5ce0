"""Writing qcow2: what vhdcore writes, qemu checks clean, reads identical and writes into.

The referees are ``qemu-img check`` (no corruption, no leak), ``qemu-img
compare`` against the raw source and ``qemu-io`` writing into the result;
vhdcore's own reader must read the same bytes. Without qemu the tests
skip, and fail in CI.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import vhdcore
from vhdcore.errors import ArgumentLimitError, ConversionError

KiB, MiB = 1 << 10, 1 << 20
REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.peer


def _sparse(path, size, runs, seed=7):
    rng = random.Random(seed)
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, length in runs:
            handle.seek(offset)
            handle.write(rng.randbytes(length).replace(b"\0", b"\1"))


def _text(length: int) -> bytes:
    words = [b"qcow2", b"cluster", b"refcount", b"table", b"deflate", b"sector", b"\n"]
    rng = random.Random(3)
    out = bytearray()
    while len(out) < length:
        out += rng.choice(words) + b" "
    return bytes(out[:length])


def _make_source(kind: str, path: Path) -> Path:
    if kind == "sparse":
        _sparse(path, 16 * MiB, [(0, 4096), (700_000, 1000), (2 * MiB - 512, 1536),
                                 (5 * MiB + 123, 200 * KiB), (16 * MiB - 512, 512)])
    elif kind == "dense":
        path.write_bytes(os.urandom(4 * MiB))
    elif kind == "zeros":
        with open(path, "wb") as handle:
            handle.truncate(3 * MiB)
    elif kind == "odd":  # not a whole cluster, nor a whole sector
        _sparse(path, MiB + 12345, [(0, 70_000), (MiB + 12000, 345)])
    elif kind == "large":  # many L2 tables and refcount blocks with small clusters
        _sparse(path, 64 * MiB, [(0, 8 * MiB), (20 * MiB + 4096, 3 * MiB),
                                 (40 * MiB - 100, 200), (64 * MiB - 4096, 4096)])
    elif kind == "text":
        with open(path, "wb") as handle:
            handle.truncate(8 * MiB)
            handle.write(_text(6 * MiB))
    return path


def _check_clean(peers, path) -> dict:
    done = peers.run("qemu-img", "check", "-f", "qcow2", "--output=json", path, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["check-errors"] == 0, report
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report
    return report


def _compare(peers, raw, image) -> None:
    done = peers.run("qemu-img", "compare", "-f", "raw", "-F", "qcow2", raw, image, check=False)
    assert done.returncode == 0 and "identical" in done.stdout, done.stdout + done.stderr


def _read(path) -> bytes:
    with vhdcore.open(path) as disk:
        buffer = bytearray(disk.virtual_size)
        assert disk.readinto(0, buffer) == len(buffer)
        return bytes(buffer)


def _padded(raw: Path) -> bytes:
    data = raw.read_bytes()
    return data + bytes(-len(data) % 512)


def _assert_good(peers, raw, image) -> dict:
    report = _check_clean(peers, image)
    _compare(peers, raw, image)
    assert _read(image) == _padded(raw)
    return report


CASES = [
    pytest.param(kind, cluster, compress, id=f"{kind}-{cluster // KiB}K{'-c' if compress else ''}")
    for kind in ("sparse", "dense", "zeros", "odd", "text")
    for cluster in (4 * KiB, 64 * KiB, 2 * MiB)
    for compress in (False, True)
] + [
    pytest.param("large", 4 * KiB, False, id="large-4K"),
    pytest.param("large", 64 * KiB, True, id="large-64K-c"),
    pytest.param("large", 2 * MiB, False, id="large-2048K"),
]


@pytest.mark.parametrize("kind, cluster, compress", CASES)
def test_conversion_checks_clean_and_reads_identical(tmp_path, peers, kind, cluster, compress):
    raw = _make_source(kind, tmp_path / "src.raw")
    out = tmp_path / "out.qcow2"
    result = vhdcore.convert(raw, out, out_format="qcow2", cluster_size=cluster,
                             compress=compress)
    assert result.output_format == "qcow2" and result.virtual_size == len(_padded(raw))
    assert 0 <= result.bytes_written <= result.virtual_size
    report = _assert_good(peers, raw, out)
    if kind == "zeros":
        assert report.get("allocated-clusters", 0) == 0
    if compress and kind in ("text", "sparse"):
        assert report.get("compressed-clusters", 0) > 0


def test_qemu_writes_into_it_and_vhdcore_reads_the_writes(tmp_path, peers):
    raw = _make_source("sparse", tmp_path / "src.raw")
    for compress in (False, True):
        out = tmp_path / f"out{compress}.qcow2"
        vhdcore.convert(raw, out, compress=compress)  # .qcow2 means qcow2
        peers.run("qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 1M 64k",
                  "-c", "write -P 0xab 5M 4k", out)
        _check_clean(peers, out)
        expected = bytearray(raw.read_bytes())
        expected[MiB : MiB + 64 * KiB] = b"\xcd" * (64 * KiB)
        expected[5 * MiB : 5 * MiB + 4 * KiB] = b"\xab" * (4 * KiB)
        assert _read(out) == expected


def test_a_dynamic_vhd_source(tmp_path, peers):
    raw = _make_source("sparse", tmp_path / "src.raw")
    vhd = tmp_path / "src.vhd"
    vhdcore.convert(raw, vhd)
    for compress in (False, True):
        out = tmp_path / f"out{compress}.qcow2"
        result = vhdcore.convert(vhd, out, out_format="qcow2", compress=compress)
        assert result.input_format == "vhd"
        _assert_good(peers, raw, out)


def test_compression_shrinks_compressible_data_and_says_zlib(tmp_path, peers):
    raw = _make_source("text", tmp_path / "src.raw")
    plain, packed = tmp_path / "plain.qcow2", tmp_path / "packed.qcow2"
    vhdcore.convert(raw, plain)
    vhdcore.convert(raw, packed, compress=True)
    assert packed.stat().st_size * 3 < plain.stat().st_size
    info = json.loads(peers.run("qemu-img", "info", "--output=json", packed).stdout)
    assert info["format-specific"]["data"]["compression-type"] == "zlib"
    assert info["format-specific"]["data"]["refcount-bits"] == 16
    assert info["cluster-size"] == 64 * KiB


def test_compressed_output_is_the_same_every_time(tmp_path):
    """The deflate threads finish in any order; the file may not depend on it."""
    raw = _make_source("text", tmp_path / "src.raw")
    first, second = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    vhdcore.convert(raw, first, compress=True, cluster_size=4 * KiB)
    vhdcore.convert(raw, second, compress=True, cluster_size=4 * KiB)
    assert first.read_bytes() == second.read_bytes()


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.mark.parametrize("cluster", ["4K", "64K", "2M"])
def test_streaming_to_a_pipe_and_to_a_redirected_file(tmp_path, peers, cluster):
    raw = _make_source("sparse", tmp_path / "src.raw")
    argv = [sys.executable, "-m", "vhdcore", "convert", str(raw), "-", "-O", "qcow2",
            "--cluster-size", cluster]
    piped = subprocess.run(argv, capture_output=True, env=_env())
    assert piped.returncode == 0, piped.stderr
    out = tmp_path / "piped.qcow2"
    out.write_bytes(piped.stdout)
    _assert_good(peers, raw, out)
    redirected = tmp_path / "redirected.qcow2"
    with open(redirected, "wb") as handle:
        done = subprocess.run(argv, stdout=handle, stderr=subprocess.PIPE, env=_env())
    assert done.returncode == 0, done.stderr
    assert redirected.read_bytes() == piped.stdout
    _assert_good(peers, raw, redirected)


def test_what_cannot_be_streamed_is_refused_by_name(tmp_path):
    raw = _make_source("sparse", tmp_path / "src.raw")
    base = [sys.executable, "-m", "vhdcore", "convert"]
    compressed = subprocess.run([*base, str(raw), "-", "-O", "qcow2", "-c"],
                                capture_output=True, env=_env())
    assert compressed.returncode != 0 and not compressed.stdout
    assert b"compressed qcow2 cannot be streamed" in compressed.stderr
    piped = subprocess.run([*base, "-", "-", "-O", "qcow2"], input=raw.read_bytes(),
                           capture_output=True, env=_env())
    assert piped.returncode != 0 and not piped.stdout
    assert b"stdin is a pipe" in piped.stderr


def test_a_pipe_source_to_a_file(tmp_path, peers):
    raw = _make_source("odd", tmp_path / "src.raw")
    out = tmp_path / "out.qcow2"
    done = subprocess.run(
        [sys.executable, "-m", "vhdcore", "convert", "-", str(out), "-c"],
        input=raw.read_bytes(), capture_output=True, env=_env(),
    )
    assert done.returncode == 0, done.stderr
    _assert_good(peers, raw, out)


def test_the_cli_compresses_and_others_ignore_it_with_a_note(tmp_path, peers, cli):
    raw = _make_source("text", tmp_path / "src.raw")
    code, out, err = cli("convert", raw, tmp_path / "out.qcow2", "-c", "--cluster-size", "16K")
    assert code == 0 and "(qcow2)" in out, err
    report = _assert_good(peers, raw, tmp_path / "out.qcow2")
    assert report.get("compressed-clusters", 0) > 0
    code, out, err = cli("convert", raw, tmp_path / "out.vhd", "-c")
    assert code == 0 and "--compress applies to qcow2 output only" in out, err


def test_a_bad_cluster_size_is_refused_before_anything_is_written(tmp_path):
    raw = _make_source("zeros", tmp_path / "src.raw")
    for size in (256, 3 * KiB, 4 * MiB):
        with pytest.raises(ArgumentLimitError, match="cluster size"):
            vhdcore.convert(raw, tmp_path / "out.qcow2", cluster_size=size)
    assert not (tmp_path / "out.qcow2").exists()


def test_a_disk_too_large_for_small_clusters_is_refused(tmp_path):
    path = tmp_path / "big.raw"
    with open(path, "wb") as handle:
        handle.truncate(1 << 40)  # 1 TiB in 512-byte clusters needs a 256 MiB L1 table
    with pytest.raises(vhdcore.errors.LimitError, match="L1 table"):
        vhdcore.convert(path, tmp_path / "big.qcow2", cluster_size=512)
    assert not (tmp_path / "big.qcow2").exists()


def test_stream_refusals_through_the_api(tmp_path):
    from vhdcore.formats import get
    from vhdcore.io.rawfile import StreamWriter

    with open(tmp_path / "sink", "wb") as handle:
        stream = StreamWriter(handle.fileno())
        with pytest.raises(ConversionError, match="compressed qcow2"):
            get("qcow2").writer("qcow2", stream, compress=True)
        with pytest.raises(ConversionError, match="first pass"):
            get("qcow2").writer("qcow2", stream)
