"""Other formats are refused by name, never read as raw; a raw file given as a VHD says so.

qcow2 is read (it is registered); the commands that handle only VHDs
refuse it by name, and a hand-built qcow2 header too broken to open is an
error about its header, not raw data.

Each format is tested twice: with a hand-built header (the magic as the
format's specification lays it out, so the test does not depend on the
peer) and with an image ``qemu-img create -f FMT`` made.
"""

from __future__ import annotations

import hashlib
import struct

import pytest

import vhdcore
from vhdcore import formats as registry
from vhdcore.errors import ForeignFormatError, NotVHDError
from vhdcore.formats import probe
from vhdcore.formats.vhd.check import check

MiB = 1 << 20


def _qcow2(version=3):
    return b"QFI\xfb" + struct.pack(">I", version) + bytes(96)


def _vmdk_sparse(stream=False):
    flags = 0x30001 if stream else 0x3  # bit 16: compressed grains, 17: markers
    head = bytearray(512)
    head[0:4] = b"KDMV"
    struct.pack_into("<II", head, 4, 1 if not stream else 3, flags)
    struct.pack_into("<H", head, 77, 1 if stream else 0)  # compressAlgorithm: deflate
    return bytes(head)


def _vdi():
    head = bytearray(512)
    head[0:40] = b"<<< Oracle VM VirtualBox Disk Image >>>\n"
    head[0x40:0x44] = b"\x7f\x10\xda\xbe"
    return bytes(head)


DESCRIPTOR = (
    b'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
    b'createType="monolithicFlat"\n\n# Extent description\nRW 20480 FLAT "disk-flat.vmdk" 0\n'
)

#: name -> (first bytes, format, a fragment of the description)
HEADERS = {
    "qcow2": (_qcow2(3), "qcow2", "a qcow2 image (version 3)"),
    "qcow": (_qcow2(1), "qcow", "a qcow (version 1) image"),
    "qed": (b"QED\x00" + bytes(60), "qed", "a QED image"),
    "vhdx": (b"vhdxfile" + "vhdcore".encode("utf-16-le"), "vhdx", "a VHDX image"),
    "vmdk": (_vmdk_sparse(), "vmdk", "a VMDK image (monolithicSparse)"),
    "vmdk-stream": (_vmdk_sparse(stream=True), "vmdk", "a VMDK image (streamOptimized)"),
    "vmdk-cowd": (b"COWD" + bytes(60), "vmdk", "COWD"),
    "vmdk-descriptor": (DESCRIPTOR, "vmdk", "its data is in 'disk-flat.vmdk', a raw disk"),
    "vdi": (_vdi(), "vdi", "a VDI (VirtualBox) image"),
}


def _hand_built(tmp_path, name, size=MiB):
    head, _fmt, _what = HEADERS[name]
    path = tmp_path / f"x.{name}"
    with open(path, "wb") as handle:
        handle.write(head)
        if name != "vmdk-descriptor":
            handle.truncate(size)
    return path


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_identify_names_each_magic(name):
    head, fmt, what = HEADERS[name]
    found = probe.identify(head)
    assert found is not None and found.format == fmt and what in found.what + found.hint


def test_identify_leaves_raw_and_vhd_alone(tmp_path):
    assert probe.identify(bytes(4096)) is None
    assert probe.identify(b"conectix" + bytes(504)) is None
    assert probe.identify(b"") is None
    assert probe.identify(b"QFI") is None  # too short to be the magic
    vhd = tmp_path / "a.vhd"
    vhdcore.create(vhd, 4 * MiB).close()
    assert probe.identify(vhd.read_bytes()) is None


def _refused_everywhere(path, fmt, cli):
    """Every reading command and the library refuse ``path`` as ``fmt``, by name."""
    name = str(path)
    other = path.parent / "other.img"
    other.write_bytes(bytes(4096))
    for argv, exit_code in (
        (["convert", path, path.parent / "out.vhd"], 1),
        (["convert", path, path.parent / "out.img"], 1),
        (["info", path], 1),
        (["check", path], 1),
        (["check", "--json", path], 1),
        (["digest", path], 1),
        (["map", path], 1),
        (["compare", path, other], 2),
        (["compare", other, path], 2),
        (["repair", "--dry-run", path], 1),
        (["compact", path], 1),
    ):
        code, out, err = cli(*argv)
        assert code == exit_code, (argv, code, out, err)
        assert out == "" and err.count("\n") == 1, (argv, err)
        assert f"{name}: is a" in err and "vhdcore reads only raw, VHD and qcow2 images" in err, err
    assert not (path.parent / "out.vhd").exists() and not (path.parent / "out.img").exists()
    for call in (
        lambda: vhdcore.open(path),
        lambda: vhdcore.convert(path, path.parent / "out.vhd"),
        lambda: check(path),
    ):
        with pytest.raises(ForeignFormatError) as caught:
            call()
        assert caught.value.format_name == fmt and str(caught.value).startswith(name)
        assert isinstance(caught.value, NotVHDError)


#: Formats vhdcore reads: given to a VHD-only command, they are refused by name.
READ = {"qcow2"}

#: Commands that read only VHDs.
VHD_ONLY = (
    (["check"], 1), (["check", "--json"], 1), (["repair", "--dry-run"], 1), (["compact"], 1),
)


@pytest.mark.parametrize("name", sorted(set(HEADERS) - READ))
def test_hand_built_headers_are_refused_by_name(tmp_path, name, cli):
    path = _hand_built(tmp_path, name)
    _refused_everywhere(path, HEADERS[name][1], cli)


def _vhd_only_commands_refuse(path, fmt, cli):
    checked = fmt in registry.names() and registry.get(fmt).check is not None
    for argv, exit_code in VHD_ONLY:
        if checked and argv[0] == "check":
            continue  # check reads this format (its own tests say how)
        code, out, err = cli(*argv, path)
        assert code == exit_code and out == "" and err.count("\n") == 1, (argv, err)
        assert f"{path}: is a {fmt} image" in err and "reads only VHD images" in err, err
    calls = [lambda: check(path)]
    if fmt not in registry.names():
        calls.append(lambda: vhdcore.open(path))  # vhdcore.open reads every registered format
    for call in calls:
        with pytest.raises(ForeignFormatError) as caught:
            call()
        assert caught.value.format_name == fmt and str(caught.value).startswith(str(path))


def test_hand_built_qcow2_header_is_a_header_error_never_raw(tmp_path, cli):
    """Zero cluster bits: qcow2 by its magic, so its header is what is wrong."""
    path = _hand_built(tmp_path, "qcow2")
    other = path.parent / "other.img"
    other.write_bytes(bytes(4096))
    for argv, exit_code in (
        (["convert", path, path.parent / "out.vhd"], 1),
        (["convert", path, path.parent / "out.img"], 1),
        (["info", path], 1), (["digest", path], 1), (["map", path], 1),
        (["compare", path, other], 2), (["compare", other, path], 2),
    ):
        code, out, err = cli(*argv)
        assert code == exit_code and out == "" and err.count("\n") == 1, (argv, err)
        assert f"{path}: qcow2 header" in err and "cluster_bits 0" in err, (argv, err)
    assert not (path.parent / "out.vhd").exists() and not (path.parent / "out.img").exists()
    _vhd_only_commands_refuse(path, "qcow2", cli)


def test_qcow2_made_by_qemu_img_is_read(tmp_path, peers, cli):
    path = tmp_path / "disk.qcow2"
    peers.run("qemu-img", "create", "-q", "-f", "qcow2", path, "10M")
    peers.run("qemu-io", "-f", "qcow2", "-c", "write -P 0x61 1M 64k", path)
    raw = tmp_path / "disk.raw"
    peers.run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, raw)
    for argv in (["convert", path, tmp_path / "out.vhd"], ["info", path], ["digest", path],
                 ["map", path], ["compare", path, raw], ["info", "-f", "qcow2", path]):
        code, _out, err = cli(*argv)
        assert code == 0, (argv, err)
    code, out, _err = cli("digest", path)
    assert out.split()[0] == hashlib.sha256(raw.read_bytes()).hexdigest()
    _vhd_only_commands_refuse(path, "qcow2", cli)


@pytest.mark.parametrize("fmt,options,what", [
    ("vhdx", [], "a VHDX image"),
    ("vmdk", [], "a VMDK image (monolithicSparse)"),
    ("vmdk", ["-o", "subformat=streamOptimized"], "a VMDK image (streamOptimized)"),
    ("vmdk", ["-o", "subformat=monolithicFlat"], "a VMDK descriptor"),
    ("vdi", [], "a VDI (VirtualBox) image"),
    ("qed", [], "a QED image"),
])
def test_images_made_by_qemu_img_are_refused_by_name(tmp_path, peers, cli, fmt, options, what):
    path = tmp_path / f"disk.{fmt}"
    peers.run("qemu-img", "create", "-q", "-f", fmt, *options, path, "10M")
    _refused_everywhere(path, fmt, cli)
    code, _out, err = cli("info", path)
    assert what in err
    if "monolithicFlat" in options:
        assert "its data is in 'disk-flat.vmdk'" in err


def test_raw_forces_raw(tmp_path, cli):
    path = _hand_built(tmp_path, "qcow2")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    code, out, err = cli("digest", "-f", "raw", path)
    assert code == 0 and out.split()[0] == digest, err
    out_path = tmp_path / "bytes.vhd"
    result = vhdcore.convert(path, out_path, src_format="raw", digest=True)
    assert result.digest == digest and result.input_format == "raw"
    code, out, err = cli("compare", "-f", "raw", path, out_path)
    assert code == 0, err


def test_error_offers_raw_only_where_raw_is_read(tmp_path, cli):
    path = _hand_built(tmp_path, "vhdx")
    _code, _out, err = cli("convert", path, tmp_path / "o.vhd")
    assert "or pass -f raw to read its bytes as a raw disk" in err
    _code, _out, err = cli("check", path)
    assert "-f raw" not in err


def test_stdin_pipe_is_probed_too(tmp_path, cli_process):
    head = _qcow2() + bytes(MiB)
    result = cli_process("convert", "-", tmp_path / "o.vhd", input=head)
    assert result.returncode == 1
    assert b"stdin: is a qcow2 image" in result.stderr and result.stderr.count(b"\n") == 1
    assert b"needs random access: save it to a file first" in result.stderr
    assert not (tmp_path / "o.vhd").exists()
    result = cli_process("convert", "-f", "raw", "-", tmp_path / "o.vhd", input=head)
    assert result.returncode == 0, result.stderr


def test_vhd_footer_wins_over_magic_at_the_start(tmp_path):
    """A fixed VHD whose disk begins with a qcow2 header is a VHD (the footer decides)."""
    path = tmp_path / "holds-a-qcow2.vhd"
    with vhdcore.create(path, 4 * MiB, type="fixed") as image:
        image.write(0, _qcow2() + bytes(400))
    with vhdcore.open(path) as image:
        assert image.type == "fixed" and image.read(0, 4) == b"QFI\xfb"
    assert check(path).exit_code == 0
    result = vhdcore.convert(path, tmp_path / "out.img")
    assert result.input_format == "vhd"


# -- a raw file given as a VHD ---------------------------------------------


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "raw.img"
    path.write_bytes(bytes(range(256)) * 4096 * 2)
    return path


def test_raw_given_as_vhd_says_not_a_vhd(raw, cli):
    wanted = f"{raw}: not a VHD (no footer cookie at the end of the file or at offset 0)"
    for argv in (["check", raw], ["check", "-f", "vpc", raw], ["info", raw],
                 ["convert", "-f", "vpc", raw, raw.parent / "o.img"],
                 ["convert", "-f", "vhd", raw, raw.parent / "o.img"],
                 ["digest", "-f", "vpc", raw], ["compact", raw], ["repair", raw]):
        code, out, err = cli(*argv)
        assert code == 1, (argv, out, err)  # check: 1 = could not check, not 2 = corrupt
        assert err.count("\n") == 1 and wanted in err, (argv, err)
        assert "\\x" not in err and "b'" not in err  # no dump of bytes
    with pytest.raises(NotVHDError, match="not a VHD"):
        vhdcore.open(raw)
    with pytest.raises(NotVHDError, match="not a VHD"):
        check(raw)


def test_damaged_vhd_is_still_corrupt_not_foreign(tmp_path, cli):
    """A footer cookie a byte off is a damaged VHD: check reports it (exit 2)."""
    path = tmp_path / "fixed.vhd"
    vhdcore.create(path, MiB, type="fixed").close()
    data = bytearray(path.read_bytes())
    data[-512] ^= 0x01  # 'conectix' -> 'bonectix'
    path.write_bytes(bytes(data))
    code, out, _err = cli("check", path)
    assert code == 2 and "footer.cookie" in out
    with pytest.raises(vhdcore.VHDError) as caught:
        vhdcore.open(path)
    assert not isinstance(caught.value, NotVHDError)


def test_qemu_names_for_vhd(tmp_path, raw, cli):
    out = tmp_path / "q.vhd"
    code, _out, err = cli("convert", "-O", "vpc", raw, out)
    assert code == 0, err
    with vhdcore.open(out) as image:
        assert image.type == "dynamic"
    code, _out, err = cli("convert", "-O", "vhd", raw, tmp_path / "v.img")
    assert code == 0, err
    with vhdcore.open(tmp_path / "v.img") as image:
        assert image.type == "dynamic"
    for argv in (["digest", "-f", "vpc", out], ["map", "-f", "vpc", out],
                 ["info", "-f", "vpc", out], ["check", "-f", "vpc", out],
                 ["compare", "-f", "vpc", "-F", "raw", out, raw]):
        code, _out, err = cli(*argv)
        assert code == 0, (argv, err)
    assert vhdcore.convert(out, tmp_path / "back.img", src_format="vpc").input_format == "vhd"


def test_check_parent_that_is_not_a_vhd_is_a_problem_not_a_crash(tmp_path, cli):
    base = tmp_path / "base.vhd"
    vhdcore.create(base, 4 * MiB).close()
    child = tmp_path / "child.vhd"
    vhdcore.create(child, parent=base).close()
    base.write_bytes(bytes(4 * MiB))  # the parent is now a raw file
    report = check(child, parents=True)
    assert report.exit_code == 2 and "parent.invalid" in report.codes
    unreadable = [p for p in report.errors if p.code == "parent.unreadable"]
    assert unreadable and "base.vhd: not a VHD" in unreadable[0].message


def test_json_check_of_foreign_prints_nothing_on_stdout(tmp_path, cli_process):
    path = _hand_built(tmp_path, "vhdx")
    result = cli_process("check", "--json", path)
    assert result.returncode == 1 and result.stdout == b""
    assert b"is a VHDX image" in result.stderr and b"Traceback" not in result.stderr
    # A qcow2 whose header is no header: could not check, one line, nothing on stdout.
    path = _hand_built(tmp_path, "qcow2")
    result = cli_process("check", "--json", path)
    assert result.returncode == 1 and result.stdout == b""
    assert b"qcow2 header" in result.stderr and b"Traceback" not in result.stderr


def test_dynamic_vhd_with_both_footers_gone_is_still_a_vhd(tmp_path, cli):
    """The dynamic header at 512 is a sign of a VHD: corrupt (2), not "not a VHD" (1)."""
    path = tmp_path / "dyn.vhd"
    vhdcore.create(path, 4 * MiB).close()
    data = bytearray(path.read_bytes())
    data[:512] = bytes(512)
    data[-512:] = bytes(512)
    path.write_bytes(bytes(data))
    code, out, _err = cli("check", path)
    assert code == 2 and "footer" in out
    with pytest.raises(vhdcore.VHDError) as caught:
        vhdcore.open(path)
    assert not isinstance(caught.value, NotVHDError)


def test_shows_vhd_signs():
    zeros = bytes(1024)
    assert not probe.shows_vhd(zeros, [bytes(512), bytes(511)])
    assert probe.shows_vhd(b"conectix" + zeros, [])
    assert probe.shows_vhd(zeros, [b"conectiX" + bytes(504)])  # one byte off
    assert not probe.shows_vhd(zeros, [b"connecticut!" + bytes(500)])
    assert probe.shows_vhd(bytes(512) + b"cxsparse" + zeros, [bytes(512)])
    assert probe.shows_vhd(zeros, [b"\xc7" * 512, b"\xc7" * 511])
