"""A bounded, seeded run of the fuzzing harness (fuzz/fuzz_vhd.py), and its findings.

CI runs the atheris (libFuzzer) engine for a fixed number of inputs with a
fixed seed, in a subprocess, over the seed corpus that fuzz/make_corpus.py
writes, and the seeded random-mutation engine for as many again (it covers
the same targets without libFuzzer, and still runs where atheris cannot
be installed). Either one failing means the harness met an input that
raised something other than a VHDError.

Run longer (an hour, both cores)::

    python fuzz/make_corpus.py /tmp/corpus
    VHDCORE_BACKEND=cython python fuzz/fuzz_vhd.py /tmp/corpus \\
        -max_total_time=3600 -jobs=2 -seed=1 -max_len=65536

or set ``VHDCORE_FUZZ_RUNS=100000`` for this test. Each finding the
harness has made is kept below as a regression test that builds the input
programmatically.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid as uuidlib
from pathlib import Path

import pytest

import vhdcore
from vhdcore import errors

REPO = Path(__file__).resolve().parents[1]
FUZZ = REPO / "fuzz"
RUNS = int(os.environ.get("VHDCORE_FUZZ_RUNS", "1000"))
SEED = 20261125
KiB = 1024


def _env(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["VHDCORE_FUZZ_WORKDIR"] = str(tmp_path / "work")
    return env


@pytest.fixture
def corpus(tmp_path):
    out = tmp_path / "corpus"
    result = subprocess.run([sys.executable, str(FUZZ / "make_corpus.py"), str(out)],
                            env=_env(tmp_path), capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert len(list(out.iterdir())) >= 50
    return out


def _run(argv, tmp_path):
    result = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_vhd.py"), *argv], cwd=tmp_path, env=_env(tmp_path),
        capture_output=True, text=True, timeout=240, check=False,
    )
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
    assert result.returncode == 0, f"the fuzzing harness found something:\n{tail}"
    return result.stdout + result.stderr


def test_atheris_seeded_run(corpus, tmp_path, unavailable):
    try:
        import atheris  # noqa: F401
    except ImportError:
        unavailable("atheris is not installed (pip install atheris); the mutation loop still runs")
    out = _run([str(corpus), f"-atheris_runs={RUNS}", f"-seed={SEED}", "-max_len=65536",
                "-timeout=30", "-rss_limit_mb=4096", f"-artifact_prefix={tmp_path}/"], tmp_path)
    assert f"Done {RUNS}" in out


def test_mutation_loop_seeded_run(corpus, tmp_path):
    out = _run(["--mutate", str(corpus), f"-runs={RUNS}", f"-seed={SEED}"], tmp_path)
    assert "no findings" in out


# ---------------------------------------------------------------------------
# regressions: inputs the fuzzer and the mutation tests found


def _fixed(tmp_path, size=8 * KiB):
    path = tmp_path / "f.vhd"
    with vhdcore.create(path, size, type="fixed", uuid=uuidlib.UUID(int=1), timestamp=0):
        pass
    return path


def _patch_footer(path, offset, value: bytes, fix_checksum=True):
    from vhdcore.formats.vhd.footer import Footer

    raw = bytearray(path.read_bytes())
    at = len(raw) - 512
    raw[at + offset : at + offset + len(value)] = value
    if fix_checksum:
        raw[at:] = Footer.from_bytes(bytes(raw[at:])).to_bytes()
    path.write_bytes(bytes(raw))


def test_fixed_footer_with_bad_checksum_is_refused(tmp_path):
    """Found by tests/test_mutations.py: fixed footers were never validated at open."""
    path = _fixed(tmp_path)
    _patch_footer(path, 8, b"\0\0\0\0", fix_checksum=False)
    with pytest.raises(errors.ChecksumError, match="checksum"):
        vhdcore.open(path)


def test_fixed_footer_of_unknown_type_is_refused(tmp_path):
    """Was a KeyError (DISK_TYPE_NAMES[7]) instead of a VHDError."""
    path = _fixed(tmp_path)
    _patch_footer(path, 60, (7).to_bytes(4, "big"))
    with pytest.raises(errors.VHDError, match="disk type"):
        vhdcore.open(path)


@pytest.mark.parametrize("size", [60 << 40, (1 << 64) - 512, 1 << 63])
def test_fixed_footer_larger_than_its_file_is_refused(tmp_path, size):
    """Was accepted: reads then died with OverflowError past 2**63 or read the footer as data."""
    path = _fixed(tmp_path)
    _patch_footer(path, 48, size.to_bytes(8, "big"))
    with pytest.raises(errors.VHDError):
        vhdcore.open(path)
