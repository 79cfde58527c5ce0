"""``vhdcore info`` and ``vhdcore create`` as a user runs them."""

from __future__ import annotations

import json

import pytest

import vhdcore

MiB = 1024 * 1024


def test_create_then_info_json(tmp_path, cli):
    path = tmp_path / "disk.vhd"
    code, out, err = cli("create", path, "512M", "--block-size", "1M")
    assert code == 0, err
    assert "512" in out or "536870912" in out
    code, out, err = cli("info", path, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["type"] == "dynamic"
    assert data["virtual_size"] == 512 * MiB
    assert data["block_size"] == MiB
    assert data["allocated_bytes"] == 0
    assert data["creator"]["application"] == "win "
    assert data["chain"][0]["filename"] == str(path)
    for key in ("uuid", "geometry", "file_size", "timestamp", "size_rule"):
        assert key in data


def test_create_fixed_and_text_info(tmp_path, cli):
    path = tmp_path / "fixed.vhd"
    assert cli("create", path, "10M", "--type", "fixed")[0] == 0
    assert path.stat().st_size == 10 * MiB + 512
    code, out, _ = cli("info", path)
    assert code == 0
    assert "type: fixed" in out
    assert "virtual size: 10 MiB (10485760 bytes)" in out


def test_create_differencing_and_chain_in_info(tmp_path, cli):
    base = tmp_path / "base.vhd"
    child = tmp_path / "child.vhd"
    assert cli("create", base, "64M")[0] == 0
    code, out, err = cli("create", child, "--parent", base)
    assert code == 0, err
    code, out, _ = cli("info", child, "--json")
    data = json.loads(out)
    assert data["type"] == "differencing"
    assert [m["filename"] for m in data["chain"]] == [str(child), str(base)]
    assert data["parent_name"] == "base.vhd"
    code, out, _ = cli("info", child)
    assert "parent chain:" in out and str(base) in out


def test_size_rounding_is_reported(tmp_path, cli):
    code, out, _ = cli("create", tmp_path / "r.vhd", "1000")
    assert code == 0
    assert "rounded up to 1024" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "{dir}/missing.vhd"], "missing.vhd"),
        (["info", "{dir}/junk.vhd"], "junk.vhd"),
        (["create", "{dir}/huge.vhd", "3T"], "limit"),
    ],
)
def test_errors_are_one_line_on_stderr(tmp_path, cli, argv, message):
    (tmp_path / "junk.vhd").write_bytes(b"\x07" * 4096)
    code, out, err = cli(*[a.format(dir=tmp_path) for a in argv])
    assert code != 0
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_existing_file_refused_without_force(tmp_path, cli):
    path = tmp_path / "x.vhd"
    path.write_bytes(b"keep")
    code, _, err = cli("create", path, "1M")
    assert code != 0 and "exists" in err
    assert path.read_bytes() == b"keep"
    assert cli("create", path, "1M", "--force")[0] == 0


def test_python_m_and_script_entry(tmp_path, cli_process):
    path = tmp_path / "p.vhd"
    result = cli_process("create", path, "4M", check=True)
    assert result.returncode == 0
    result = cli_process("info", path, "--json", check=True)
    assert json.loads(result.stdout)["virtual_size"] == 4 * MiB
    with vhdcore.open(path) as image:
        assert image.virtual_size == 4 * MiB


def test_a_command_imports_only_its_own_module(tmp_path):
    """Start-up: ``vhdcore info`` does not import the other commands' modules."""
    import subprocess
    import sys

    image = tmp_path / "d.vhd"
    vhdcore.create(image, 1 << 20).close()
    code = (
        "import sys\n"
        "from vhdcore import cli\n"
        f"status = cli.main(['info', {str(image)!r}, '--json'])\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('vhdcore.cli.'))\n"
        "print(loaded, file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["virtual_size"] == 1 << 20
    loaded = done.stderr.strip().splitlines()[-1]
    assert loaded == "['vhdcore.cli._common', 'vhdcore.cli.info']"


def test_help_still_lists_every_command(cli_process):
    from vhdcore.cli import command_names

    result = cli_process("--help")
    assert result.returncode == 0
    for name in command_names():
        assert f"    {name} " in result.stdout.decode()
    assert len(command_names()) >= 14


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """``vhdcore convert IMG - | head -c 1``: exit 141 as after SIGPIPE, nothing on stderr."""
    import subprocess
    import sys

    raw = tmp_path / "d.raw"
    raw.write_bytes(b"\x01" * (4 << 20))
    process = subprocess.Popen(
        [sys.executable, "-m", "vhdcore", "convert", str(raw), "-", "-O", "raw"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    with process.stdout, process.stderr:
        assert process.stdout.read(1) == b"\x01"
        process.stdout.close()
        stderr = process.stderr.read()
    assert process.wait() == 141
    assert stderr == b""
