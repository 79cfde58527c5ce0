"""Start-up cost: the everyday commands run without importing numpy.

Importing numpy is about 60 ms, half of a short command's start-up (a
conversion of an empty image is otherwise over in milliseconds). Opening,
reading, mapping, hashing, comparing and converting images use the stdlib
and the kernels; numpy stays for the vectorised work of check, repair,
resize and compact. These tests run each command in a fresh interpreter
that refuses to import numpy at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import vhdcore

REFUSE_NUMPY = """
import sys

class RefuseNumpy:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ImportError("numpy imported by: " + " ".join(sys.argv))

sys.meta_path.insert(0, RefuseNumpy())
from vhdcore import cli
status = cli.main(sys.argv[1:])
assert "numpy" not in sys.modules
sys.exit(status)
"""


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("startup")
    raw = root / "disk.raw"
    with open(raw, "wb") as handle:
        handle.truncate(8 << 20)
        handle.seek(1 << 20)
        handle.write(os.urandom(300_000))
        handle.seek(5 << 20)
        handle.write(bytes(1 << 20))  # written zeros
    dynamic = root / "disk.vhd"
    vhdcore.convert(raw, dynamic)
    child = root / "child.vhd"
    with vhdcore.create(child, parent=dynamic) as image:
        image.write(3 << 20, b"\x5a" * 70_000)
    return {"root": root, "raw": raw, "dynamic": dynamic, "child": child}


def _run(*argv):
    done = subprocess.run(
        [sys.executable, "-c", REFUSE_NUMPY, *map(str, argv)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("source", "out_format"),
    [
        ("raw", "dynamic"),
        ("raw", "fixed"),
        ("dynamic", "raw"),
        ("dynamic", "fixed"),
        ("child", "raw"),
        ("child", "dynamic"),
    ],
)
def test_convert_needs_no_numpy(images, source, out_format):
    out = images["root"] / f"out-{source}.{out_format}"
    report = json.loads(
        _run("convert", images[source], out, "-O", out_format, "--json", "--force", "--digest")
    )
    expected = vhdcore.convert(
        images[source], images["root"] / "check.raw", out_format="raw", force=True, digest=True
    )
    assert report["digest"] == expected.digest


def test_queries_need_no_numpy(images):
    info = json.loads(_run("info", images["child"], "--json"))
    assert info["blocks"]["allocated"] == 1
    extents = json.loads(_run("map", images["child"], "--json"))
    states = {(e["state"], e["depth"]) for e in extents}
    assert ("parent", 1) in states
    assert {"offset": 3 << 20, "length": 70144, "state": "data", "depth": 0}.items() <= next(
        e for e in extents if e["state"] == "data"
    ).items()
    _run("digest", images["dynamic"])
    _run("compare", images["raw"], images["dynamic"])


def test_the_numpy_view_of_the_table_follows_writes_and_reloads(tmp_path):
    """``VHD.bat`` (numpy) shares memory with the table the image works on."""
    path = tmp_path / "d.vhd"
    with vhdcore.create(path, 8 << 20) as image:
        table = image.bat
        assert table.tolist() == [0xFFFFFFFF] * 4
        image.write(2 << 20, b"\x01" * 512)
        assert table[1] != 0xFFFFFFFF and image.allocated_blocks == 1
        image.reload()
        assert image.bat is not table and image.bat.tolist() == table.tolist()


def test_help_needs_no_numpy():
    """The parser is built from every command's module; none imports its operation
    (or numpy) until it runs."""
    assert "convert" in _run("--help")
    for verb in ("check", "repair", "resize", "compact", "commit", "rebase", "snapshot",
                 "create", "info"):
        assert "usage:" in _run(verb, "--help")
