"""Library and CLI contracts a new user ran into (issue 10): reads that check
before they allocate, advice that names a flag the user can type,
contradictory arguments refused, children creatable only where they can
be opened again, parents locked while a child is written."""

from __future__ import annotations

import json
import os
import tracemalloc

import pytest

import vhdcore
from vhdcore import errors
from vhdcore.formats.vhd import repair as repair_module
from vhdcore.formats.vhd.check import check
from vhdcore.formats.vhd.compact import compact
from vhdcore.formats.vhd.repair import repair
from vhdcore.formats.vhd.snapshot import snapshot
from vhdcore.testing import samples

MiB = 1024 * 1024


def _peak_during(fn):
    """(result or exception, peak bytes traced while ``fn`` ran)."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - the caller inspects it
            result = exc
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- reads check the range before allocating --------------------------------


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_read_past_the_end_fails_before_allocating(tmp_path, kind):
    with vhdcore.create(tmp_path / "d.vhd", MiB, type=kind) as image:
        result, peak = _peak_during(lambda: image.read(0, 64 * MiB))
        assert isinstance(result, errors.OutOfRangeError)
        assert peak < MiB, f"allocated {peak} bytes before refusing the range"
        # Far past anything memory holds: an OutOfRangeError, not a MemoryError.
        with pytest.raises(errors.OutOfRangeError, match="d.vhd"):
            image.read(0, 10**12)
        with pytest.raises(errors.OutOfRangeError):
            image.read(-1, 10)


@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_read_of_one_run_allocates_its_result_once(tmp_path, kind):
    size = 8 * MiB
    with vhdcore.create(
        tmp_path / "d.vhd", size, type=kind, block_size=8 * MiB if kind == "dynamic" else None
    ) as image:
        image.write(0, b"\x5a" * size)
        data, peak = _peak_during(lambda: image.read(0, size))
        assert data == b"\x5a" * size and type(data) is bytes
        assert peak < size * 1.25, f"peak {peak} for a {size}-byte read: copied twice"
        assert image.read(0, 0) == b""


def test_read_of_mixed_runs_still_reads_right(tmp_path):
    base = tmp_path / "b.vhd"
    with vhdcore.create(base, 4 * MiB, block_size=MiB) as image:
        image.write(0, b"\x01" * MiB)
    with vhdcore.create(tmp_path / "c.vhd", parent=base) as child:
        child.write(MiB // 2, b"\x02" * 1024)
        expected = bytearray(b"\x01" * MiB + bytes(MiB))
        expected[MiB // 2 : MiB // 2 + 1024] = b"\x02" * 1024
        data = child.read(0, 2 * MiB)
        assert type(data) is bytes and data == bytes(expected)
        assert child.read(3 * MiB, MiB) == bytes(MiB)


def test_rawio_read_clamps_before_allocating(tmp_path):
    with vhdcore.create(tmp_path / "d.vhd", MiB) as image:
        image.write(MiB - 4, b"tail")
        stream = image.rawio()
        stream.seek(MiB - 4)
        assert stream.read(10**12) == b"tail"  # io.RawIOBase.read allocated 10**12 first
        assert stream.read(10) == b""
        stream.seek(0)
        assert len(stream.readall()) == MiB


# -- advice names the flag ----------------------------------------------------


def test_existing_file_advice_names_the_cli_flag(tmp_path, cli):
    path, other = tmp_path / "a.vhd", tmp_path / "s.vhd"
    for name in (path, other):
        with vhdcore.create(name, MiB):
            pass
    for argv in (("create", other, "1M"), ("snapshot", path, other), ("compact", path, "-o", other)):
        code, _out, err = cli(*argv)
        assert code != 0 and "--force" in err and "use overwrite" not in err, (argv, err)
    with pytest.raises(FileExistsError, match=r"overwrite=True.*--force"):
        vhdcore.create(path, MiB)
    with pytest.raises(FileExistsError, match=r"overwrite=True.*--force"):
        compact(path, output=path.with_name("s.vhd"))


# -- contradictory arguments --------------------------------------------------


@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
def test_create_refuses_a_parent_with_another_type(tmp_path, kind):
    with vhdcore.create(tmp_path / "p.vhd", MiB):
        pass
    with pytest.raises(errors.VHDError, match="differencing"):
        vhdcore.create(tmp_path / "c.vhd", type=kind, parent=tmp_path / "p.vhd")
    assert not (tmp_path / "c.vhd").exists()
    with pytest.raises(errors.VHDError, match="needs a parent"):
        vhdcore.create(tmp_path / "c.vhd", MiB, type="differencing")
    with vhdcore.create(tmp_path / "c.vhd", type="differencing", parent=tmp_path / "p.vhd") as c:
        assert c.type == "differencing"


# -- children are made only where they can be opened again ---------------------


def _cross_directory_pair(tmp_path):
    base_dir, child_dir = tmp_path / "base", tmp_path / "child"
    base_dir.mkdir()
    child_dir.mkdir()
    with vhdcore.create(base_dir / "p.vhd", MiB) as image:
        image.write(0, b"parent")
    return base_dir / "p.vhd", child_dir / "c.vhd"


def test_snapshot_refuses_a_parent_the_child_could_not_open(tmp_path, cli):
    parent, child = _cross_directory_pair(tmp_path)
    with pytest.raises(errors.UnsafeParentError, match="--allow-parent-dir"):
        snapshot(parent, child)
    assert not child.exists()
    code, _out, err = cli("snapshot", parent, child)
    assert code != 0 and "--allow-parent-dir" in err and not child.exists()
    code, _out, err = cli("snapshot", parent, child, "--allow-parent-dir", parent.parent)
    assert code == 0, err
    # What was made opens with the same flag, and is refused without it.
    code, out, err = cli("info", child, "--allow-parent-dir", parent.parent, "--json")
    assert code == 0, err
    with pytest.raises(errors.UnsafeParentError):
        vhdcore.open(child)
    with vhdcore.open(child, allow_parent_dirs=[parent.parent]) as image:
        assert image.read(0, 6) == b"parent"


def test_create_parent_takes_the_chain_flags(tmp_path, cli):
    parent, child = _cross_directory_pair(tmp_path)
    with pytest.raises(errors.UnsafeParentError):
        vhdcore.create(child, parent=parent)
    assert not child.exists()
    code, _out, err = cli("create", child, "--parent", parent)
    assert code != 0 and "--allow-parent-dir" in err and not child.exists()
    code, _out, err = cli("create", child, "--parent", parent, "--allow-parent-dir", parent.parent)
    assert code == 0, err
    with vhdcore.create(child, parent=parent, overwrite=True,
                        allow_parent_dirs=[parent.parent]) as image:
        assert image.read(0, 6) == b"parent"


def test_create_refuses_a_chain_over_the_depth_limit(tmp_path, cli):
    previous = tmp_path / "d0.vhd"
    with vhdcore.create(previous, MiB):
        pass
    for level in (1, 2):
        path = tmp_path / f"d{level}.vhd"
        snapshot(previous, path)
        previous = path
    with pytest.raises(errors.LimitError, match="--max-chain-depth"):
        snapshot(previous, tmp_path / "d3.vhd", max_chain_depth=3)
    code, _out, err = cli("snapshot", previous, tmp_path / "d3.vhd", "--max-chain-depth", "3")
    assert code != 0 and "limit of 3" in err and not (tmp_path / "d3.vhd").exists()
    code, _out, err = cli("snapshot", previous, tmp_path / "d3.vhd", "--max-chain-depth", "4")
    assert code == 0, err
    with vhdcore.open(tmp_path / "d3.vhd", max_chain_depth=4) as leaf:
        assert len(leaf.chain) == 4


def test_snapshot_refuses_a_parent_behind_a_symlink_unless_allowed(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    with vhdcore.create(real / "p.vhd", MiB):
        pass
    os.symlink(real, tmp_path / "link")
    with pytest.raises(errors.UnsafeParentError, match="--allow-symlinks"):
        snapshot(tmp_path / "link" / "p.vhd", tmp_path / "c.vhd")
    snapshot(tmp_path / "link" / "p.vhd", tmp_path / "c.vhd", allow_symlinks=True,
             allow_parent_dirs=[real])
    with vhdcore.open(tmp_path / "c.vhd", allow_symlinks=True, allow_parent_dirs=[real]):
        pass


# -- the CLI speaks in one-line messages -------------------------------------


def test_cli_prints_a_warning_as_one_line(tmp_path, cli_process):
    sample = samples.generate("footer_bad_checksum", tmp_path)
    result = cli_process("info", sample.path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.decode().splitlines()
    assert lines == [
        f"vhdcore info: warning: {sample.path}: primary footer damaged, "
        "reading through its copy at offset 0"
    ]


def test_ctrl_c_while_the_command_loads_is_one_line(monkeypatch, capsys):
    from vhdcore import cli

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert cli.main(["info", "x.vhd"]) == 130
    assert capsys.readouterr().err == "vhdcore info: interrupted\n"
    shown = cli.warnings.showwarning
    assert cli.main(["info", "x.vhd"]) == 130
    assert cli.warnings.showwarning is shown  # put back after the run


# -- a writer's parents are locked ------------------------------------------


def test_parents_of_a_writer_cannot_be_opened_for_writing(tmp_path):
    base = tmp_path / "base.vhd"
    with vhdcore.create(base, MiB):
        pass
    snapshot(base, tmp_path / "s1.vhd")
    snapshot(tmp_path / "s1.vhd", tmp_path / "s2.vhd")
    with vhdcore.open(tmp_path / "s2.vhd", "r+") as leaf:
        for member in (base, tmp_path / "s1.vhd"):
            with pytest.raises(errors.LockedError, match=member.name):
                vhdcore.open(member, "r+")
            with vhdcore.open(member, consistent=True) as reader:  # readers still may
                assert reader.read(0, 4) == bytes(4)
        leaf.write(0, b"leaf")
    with vhdcore.open(base, "r+"):
        # A parent being written: a child cannot be opened for writing over it.
        with pytest.raises(errors.LockedError, match="base.vhd"):
            vhdcore.open(tmp_path / "s1.vhd", "r+")
        with vhdcore.open(tmp_path / "s2.vhd") as plain:  # plain reads take no lock
            assert plain.read(0, 4) == b"leaf"
    with vhdcore.open(tmp_path / "s2.vhd"):
        with vhdcore.open(base, "r+"):
            pass


# -- info on a child whose parent is missing ---------------------------------


def test_info_describes_a_child_whose_parent_is_missing(tmp_path, cli):
    base = tmp_path / "base.vhd"
    with vhdcore.create(base, MiB):
        pass
    snapshot(base, tmp_path / "c.vhd")
    os.unlink(base)
    code, out, err = cli("info", tmp_path / "c.vhd")
    assert code == 0
    assert "type: differencing" in out and "1: missing (" in out
    assert err.startswith("vhdcore info: warning: ") and "base.vhd" in err and "not found" in err
    code, out, err = cli("info", tmp_path / "c.vhd", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["type"] == "differencing" and data["parent_name"] == "base.vhd"
    assert data["chain"][1] == {"depth": 1, "filename": None, "type": None,
                                "uuid": data["parent_uuid"], "virtual_size": None}
    assert any("not found" in note for note in data["notes"])
    # Commands that read the contents still refuse.
    code, _out, err = cli("digest", tmp_path / "c.vhd")
    assert code != 0 and "not found" in err
    with pytest.raises(errors.ParentNotFoundError):
        vhdcore.open(tmp_path / "c.vhd")


# -- a file cut inside its table: check says so, repair refuses ---------------


def _cut_in_table(tmp_path):
    path = tmp_path / "cut.vhd"
    with vhdcore.create(path, 2 << 30, block_size=512 * 1024):
        pass
    os.truncate(path, 9000)  # the table runs from 0x600 to 0x4600
    return path


def test_check_reports_a_file_cut_inside_its_table(tmp_path, cli):
    path = _cut_in_table(tmp_path)
    report = check(path)
    codes = {p.code for p in report.problems}
    assert codes == {"file.truncated", "file.size"}, report.problems
    truncated = next(p for p in report.problems if p.code == "file.truncated")
    assert "0x2328" in truncated.message and "block allocation table" in truncated.message
    assert report.footer_state == "truncated" and report.exit_code == 2
    code, out, _err = cli("check", path)
    assert code == 2 and "footer: missing (the file is cut at 0x2328" in out
    assert "9512" not in out  # no imagined footer after the end of the file


def test_repair_refuses_a_file_cut_inside_its_table_and_changes_nothing(tmp_path, cli):
    path = _cut_in_table(tmp_path)
    before = path.read_bytes()
    for force in (False, True):
        report = repair(path, force=force)
        assert not report.actions and report.backup_path is None
        reasons = dict(report.skipped)
        assert "inside its block allocation table" in reasons["file.truncated"]
        assert path.read_bytes() == before
    code, out, _err = cli("repair", path)
    assert code == 2 and "cannot be rebuilt" in out and path.read_bytes() == before


def test_repair_guard_refuses_a_plan_that_writes_over_metadata(tmp_path, monkeypatch):
    """Should planning ever aim the footer at the table, nothing is written."""
    sample = samples.generate("footer_bad_checksum", tmp_path)
    before = sample.path.read_bytes()
    monkeypatch.setattr(repair_module._Planner, "_footer_target", lambda self: 0x600 + 40)
    report = repair(sample.path)
    assert not report.actions and sample.path.read_bytes() == before
    reasons = " ".join(reason for _code, reason in report.skipped)
    assert "repair refused" in reasons and "unaligned" in reasons
    monkeypatch.setattr(repair_module._Planner, "_footer_target", lambda self: 0x600)
    report = repair(sample.path)
    assert not report.actions and sample.path.read_bytes() == before
    assert "over the block allocation table" in " ".join(r for _c, r in report.skipped)


_INTERRUPT_AT_IMPORT = """
import sys

class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "vhdcore.ops.convert":
            raise KeyboardInterrupt

sys.meta_path.insert(0, Interrupt())
sys.argv = [ARGV0]
import vhdcore
"""


@pytest.mark.parametrize("argv0", ["-m", "/usr/local/bin/vhdcore"])
def test_ctrl_c_while_the_package_imports_is_one_line_for_the_cli(argv0):
    import subprocess
    import sys

    code = _INTERRUPT_AT_IMPORT.replace("ARGV0", repr(argv0))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 130
    assert done.stderr == "vhdcore: interrupted\n"


def test_ctrl_c_while_the_package_imports_reaches_a_library_user():
    import subprocess
    import sys

    code = _INTERRUPT_AT_IMPORT.replace("ARGV0", repr("myscript.py"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 130 and "KeyboardInterrupt" in done.stderr
