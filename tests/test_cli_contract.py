"""The command line's contract: one exit-code table, argument values, JSON shapes, wording.

What a script relies on: a usage mistake is 64 and never a verdict, the
same kind of bad value gets the same code, ``--json`` has the same keys
for every kind of image, and counts agree with their nouns.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import vhdcore
from vhdcore import errors
from vhdcore.cli import EXIT_CODES, EXIT_USAGE, command_names
from vhdcore.testing import samples

MiB = 1024 * 1024
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def images(tmp_path):
    """A dynamic, a fixed and a differencing image, and a raw file (10 MiB each)."""
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(10 * MiB)
        f.write(os.urandom(3 * MiB))
    dynamic, fixed, child = tmp_path / "dyn.vhd", tmp_path / "fixed.vhd", tmp_path / "child.vhd"
    vhdcore.convert(raw, dynamic)
    vhdcore.convert(raw, fixed, out_format="fixed")
    vhdcore.create(child, parent=dynamic).close()
    return {"dynamic": dynamic, "fixed": fixed, "differencing": child, "raw": raw}


# -- the table ---------------------------------------------------------------


def test_table_is_in_help_and_readme(cli_process):
    done = cli_process("--help")
    assert done.returncode == 0
    out = done.stdout.decode()
    assert EXIT_CODES in out
    readme = README.read_text()
    for row in ("| 0 |", "| 1 |", "| 2 |", "| 3 |", "| 64 |", "| 130 / 143 / 141 |"):
        assert row in readme
    for code in ("0", "1", "2", "3", "64", "130", "143", "141"):
        assert f"  {code}  " in EXIT_CODES or f"; {code} " in EXIT_CODES


def test_rows_0_1_2_3_of_check_and_repair(tmp_path, cli):
    clean = samples.valid_dynamic(tmp_path)
    leaked = samples.leaked_block(tmp_path)
    corrupt = samples.footer_bad_checksum(tmp_path)
    assert cli("check", clean.path)[0] == 0
    assert cli("check", leaked.path)[0] == 3
    assert cli("check", corrupt.path)[0] == 2
    assert cli("check", tmp_path / "missing.vhd")[0] == 1  # could not check
    assert cli("repair", tmp_path / "missing.vhd")[0] == 1
    beyond = samples.header_zeroed(tmp_path)
    assert beyond.repair is None  # nothing to rebuild the header from: errors remain
    assert cli("repair", "--dry-run", beyond.path)[0] == 2


def test_rows_of_compare_and_the_rest(images, tmp_path, cli):
    assert cli("compare", images["raw"], images["dynamic"])[0] == 0
    empty = tmp_path / "empty.vhd"
    vhdcore.create(empty, 10 * MiB).close()
    assert cli("compare", images["raw"], empty)[0] == 1  # differ
    assert cli("compare", images["raw"], tmp_path / "missing")[0] == 2  # could not compare
    assert cli("info", images["fixed"])[0] == 0
    assert cli("info", tmp_path / "missing.vhd")[0] == 1
    assert cli("create", images["fixed"], "1M")[0] == 1  # exists, no --force


@pytest.mark.parametrize("command", command_names())
def test_an_unknown_flag_is_a_usage_error_for_every_command(command, cli):
    code, out, err = cli(command, "--no-such-flag")
    assert code == EXIT_USAGE and out == ""
    assert "usage: vhdcore" in err and "Traceback" not in err


def test_typo_in_check_is_not_corruption(images, cli):
    code, out, err = cli("check", images["dynamic"], "--deeep")
    assert code == EXIT_USAGE and out == "" and "--deeep" in err
    assert cli("check")[0] == EXIT_USAGE  # missing IMAGE
    assert cli("compare", images["raw"])[0] == EXIT_USAGE  # missing B: not "error" (2)
    assert cli("frobnicate")[0] == EXIT_USAGE
    assert cli()[0] == EXIT_USAGE


BAD_SIZES = ["3X", "1.5B", "", "10 Q", "+-4K"]
BAD_BLOCK_SIZES = ["3M", "-4K", "3000", "512M", "0", "abc"]
BAD_COUNTS = ["0", "-1", "x", "1.5"]


def _usage(cli, *argv):
    code, out, err = cli(*argv)
    assert code == EXIT_USAGE, (argv, code, err)
    assert out == "" and "Traceback" not in err, argv
    return err


@pytest.mark.parametrize("value", BAD_SIZES)
def test_bad_sizes_exit_64(value, images, tmp_path, cli):
    _usage(cli, "create", tmp_path / "new.vhd", value)
    _usage(cli, "create", tmp_path / "new.vhd", "-4K")  # (for resize a valid shrink)
    _usage(cli, "demo", "--size", "-4K")
    _usage(cli, "resize", images["dynamic"], value)
    _usage(cli, "demo", "--size", value)
    assert not (tmp_path / "new.vhd").exists()


def test_sizes_beyond_the_format_exit_64(images, tmp_path, cli):
    before = images["dynamic"].read_bytes()
    err = _usage(cli, "create", tmp_path / "huge.vhd", "3000T")
    assert "exceeds" in err and not (tmp_path / "huge.vhd").exists()
    _usage(cli, "create", tmp_path / "huge.vhd", "3000T", "--type", "fixed")
    _usage(cli, "resize", images["dynamic"], "3000T")
    _usage(cli, "resize", images["dynamic"], "-20M")  # leaves no disk
    _usage(cli, "create", tmp_path / "c.vhd", "5M", "--parent", images["dynamic"])  # != parent
    assert images["dynamic"].read_bytes() == before


@pytest.mark.parametrize("value", BAD_BLOCK_SIZES)
def test_bad_block_sizes_exit_64(value, images, tmp_path, cli):
    err = _usage(cli, "create", tmp_path / "new.vhd", "8M", "--block-size", value)
    assert "--block-size" in err
    _usage(cli, "convert", images["raw"], tmp_path / "out.vhd", "--block-size", value)
    assert not (tmp_path / "new.vhd").exists() and not (tmp_path / "out.vhd").exists()


@pytest.mark.parametrize("value", BAD_COUNTS)
def test_bad_counts_exit_64(value, images, tmp_path, cli):
    for argv in (
        ("info", images["differencing"]),
        ("check", images["differencing"]),
        ("map", images["differencing"]),
        ("snapshot", images["dynamic"], tmp_path / "s.vhd"),
    ):
        err = _usage(cli, *argv, "--max-chain-depth", value)
        assert "--max-chain-depth" in err
    assert not (tmp_path / "s.vhd").exists()


def test_contradictions_exit_64(images, tmp_path, cli):
    err = _usage(cli, "create", tmp_path / "x.vhd", "--type", "fixed", "--parent",
                 images["dynamic"])
    assert "drop --type fixed" in err
    _usage(cli, "create", tmp_path / "x.vhd")  # no SIZE, no --parent
    assert not (tmp_path / "x.vhd").exists()


def test_library_usage_errors_are_both_kinds(tmp_path):
    with pytest.raises(errors.UsageError):
        vhdcore.create(tmp_path / "x.vhd", 10 * MiB, block_size=3 * MiB)
    with pytest.raises(errors.LimitError):  # still what it was
        vhdcore.create(tmp_path / "x.vhd", -512)
    assert issubclass(errors.ArgumentLimitError, errors.UsageError)
    assert issubclass(errors.UsageError, errors.VHDError)


# -- resize +SIZE / -SIZE ----------------------------------------------------


def test_resize_relative(tmp_path, cli):
    path = tmp_path / "d.vhd"
    assert cli("create", path, "10M")[0] == 0
    code, out, err = cli("resize", path, "+64M", "--json")
    assert code == 0, err
    assert json.loads(out)["new_size"] == 74 * MiB
    code, out, err = cli("resize", path, "-32M")
    assert code == 0, err
    assert f"to {42 * MiB} bytes" in out
    code, out, err = cli("resize", path, "--", "-2M")
    assert code == 0, err
    with vhdcore.open(path) as image:
        assert image.virtual_size == 40 * MiB
        image_data = b"\x5a" * 4096
    with vhdcore.open(path, "r+") as image:
        image.write(39 * MiB, image_data)
    code, out, err = cli("resize", path, "-2M")  # over data: --force, as an absolute shrink
    assert code == 1 and "--force" in err
    code, out, err = cli("resize", path, "-2M", "--force")
    assert code == 0, err
    with vhdcore.open(path) as image:
        assert image.virtual_size == 38 * MiB


# -- JSON --------------------------------------------------------------------


def _keys(data, prefix=""):
    """Every key path of nested dicts (lists are leaves)."""
    out = set()
    for key, value in data.items():
        out.add(prefix + key)
        if isinstance(value, dict):
            out |= _keys(value, f"{prefix}{key}.")
    return out


def _json(cli, *argv):
    code, out, err = cli(*argv, "--json")
    assert code in (0, 2, 3), err
    return json.loads(out)


def test_info_keys_are_the_same_for_every_kind(images, tmp_path, cli):
    found = {kind: _json(cli, "info", path) for kind, path in images.items() if kind != "raw"}
    found["raw"] = _json(cli, "info", "-f", "raw", images["raw"])
    shapes = {kind: _keys(data) for kind, data in found.items()}
    assert all(shape == shapes["differencing"] for shape in shapes.values()), shapes
    assert found["fixed"]["parent_uuid"] is None and found["fixed"]["blocks"]["total"] is None
    assert found["raw"]["format"] == "raw" and found["raw"]["uuid"] is None
    assert found["raw"]["allocated_bytes"] == 3 * MiB
    created = _json(cli, "create", tmp_path / "new.vhd", "4M")
    snapped = _json(cli, "snapshot", images["fixed"], tmp_path / "snap.vhd")
    assert _keys(created) == _keys(snapped) == shapes["fixed"]


def test_check_keys_are_the_same_for_every_kind(images, tmp_path, cli):
    stopped = samples.header_zeroed(tmp_path)  # checking stops early
    paths = [images["dynamic"], images["fixed"], images["differencing"], stopped.path]
    for extra in ((), ("--parents",)):
        reports = [_json(cli, "check", path, *extra) for path in paths]
        top = [set(report) for report in reports]
        counts = [set(report["counts"]) for report in reports]
        assert all(keys == top[0] for keys in top) and "parent" in top[0]
        assert all(keys == counts[0] for keys in counts)
    chain = _json(cli, "check", images["differencing"], "--parents")
    assert set(chain["parent"]) == set(chain) and chain["counts"]["parent_found"] == 1
    alone = _json(cli, "check", images["fixed"])
    assert alone["parent"] is None and alone["counts"]["blocks"] is None


def test_map_uses_null_not_minus_one(images, cli):
    for kind in ("raw", "dynamic", "differencing"):
        extents = _json(cli, "map", images[kind])
        zero = [e for e in extents if e["state"] == "zero"]
        assert zero and all(e["depth"] is None and e["file_offset"] is None for e in zero)
        assert all(e["depth"] is not None for e in extents if e["state"] != "zero")
        assert -1 not in [value for e in extents for value in e.values()]


def test_compare_names_format_and_type_apart(images, cli):
    report = _json(cli, "compare", images["dynamic"], images["raw"])
    assert (report["format_a"], report["type_a"]) == ("vhd", "dynamic")
    assert (report["format_b"], report["type_b"]) == ("raw", "raw")
    report = _json(cli, "compare", images["fixed"], images["differencing"])
    assert (report["format_a"], report["type_a"]) == ("vhd", "fixed")
    assert (report["format_b"], report["type_b"]) == ("vhd", "differencing")


@pytest.mark.parametrize("digest", [True, False], ids=["digest", "copy"])
def test_bytes_written_is_the_same_for_every_source_kind(digest, images, tmp_path, cli,
                                                         cli_process):
    """3 MiB of data ending mid-block: a pipe hands over whole blocks, a file its runs.

    Without --digest, dynamic output from a file copies stored runs file to
    file unread, and counts them as copied: a run of a VHD source ends at
    the file system's block, up to 4 KiB of zeros past its data.
    """
    data = images["raw"].read_bytes()
    flags = ("--digest",) if digest else ()
    seen = {}
    for fmt in ("raw", "fixed", "dynamic"):
        for kind in ("raw", "dynamic", "fixed"):
            report = _json(cli, "convert", images[kind], tmp_path / f"{kind}.{fmt}", "-O", fmt,
                           *flags)
            seen[kind, fmt] = report["bytes_written"]
        done = cli_process("convert", "-", tmp_path / f"pipe.{fmt}", "-O", fmt, "--json",
                           *flags, input=data)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["input_type"] == "stream"
        seen["stream", fmt] = report["bytes_written"]
    copied = {key: seen.pop(key) for key in list(seen) if not digest and key[1] == "dynamic"
              and key[0] != "stream"}
    assert set(seen.values()) == {3 * MiB}, seen
    assert all(3 * MiB <= value < 3 * MiB + 4096 * 2 for value in copied.values()), copied


# -- wording -----------------------------------------------------------------


def test_one_block_is_singular(tmp_path, cli):
    small = tmp_path / "small.vhd"
    assert cli("create", small, "2M")[0] == 0
    code, out, _ = cli("info", small)
    assert "in 0 of 1 block\n" in out
    raw = tmp_path / "one.raw"
    with open(raw, "wb") as f:
        f.truncate(4 * MiB)
        f.write(b"\x01" * 4096)
    one = tmp_path / "one.vhd"
    code, out, err = cli("convert", raw, one)
    assert code == 0, err
    assert "; 1 block allocated" in out and "1 blocks" not in out
    child = tmp_path / "child.vhd"
    with vhdcore.create(child, parent=one) as image:
        image.write(3 * MiB, b"\x02" * 512)
    code, out, err = cli("commit", child)
    assert code == 0, err
    assert "in 1 run, 1 new parent block," in out


def test_compact_dry_run_speaks_in_the_conditional(tmp_path, cli):
    path = tmp_path / "z.vhd"
    with vhdcore.create(path, 4 * MiB) as image:
        image.write(0, b"\x07" * 4096)
        image.write(0, bytes(4096))  # block 0 stays allocated, all zeros
        image.write(2 * MiB, b"\x07" * 4096)
    before = path.read_bytes()
    code, out, err = cli("compact", "--dry-run", path)
    assert code == 0, err
    assert out.startswith(f"would compact {path}: 1 of 2 blocks holds only zeros")
    assert "would reclaim" in out and "compacted" not in out and "reclaimed" not in out
    assert path.read_bytes() == before
    code, out, _ = cli("compact", path)
    assert out.startswith(f"compacted {path}: 1 of 2 blocks held only zeros")
    assert "reclaimed" in out and "would" not in out


def test_repair_dry_run_says_would_not_repair(tmp_path, cli):
    sample = samples.header_zeroed(tmp_path)
    code, out, _ = cli("repair", "--dry-run", sample.path)
    assert code == 2 and "would not repair:" in out and "\nnot repaired:" not in out
    code, out, _ = cli("repair", sample.path)
    assert code == 2 and "\nnot repaired:" in out
