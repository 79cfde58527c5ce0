"""OS errors name the user's file and what failed, in one line, as a VHDError.

A full disk (``ENOSPC`` from ``pwrite``, which names no file), a directory
given as an image, a read-only destination (whose error used to name the
conversion's temporary file): each becomes a
:class:`~vhdcore.errors.StorageError` (a ``VHDError`` and an ``OSError``)
whose message starts with the file the user gave. Full and read-only disks
are real: a small tmpfs mounted for the test (root only); the fault
injection layer covers the same paths everywhere.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

import vhdcore
from vhdcore.errors import StorageError, VHDError
from vhdcore.formats.vhd.check import check
from vhdcore.testing import faults

MiB = 1 << 20
TEMP_MARK = "vhdcore-tmp"


def _mount_tmpfs(directory, unavailable, size="1M"):
    directory.mkdir()
    if os.geteuid() != 0:
        unavailable("mounting a small tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                             str(directory)], capture_output=True, text=True)
    if result.returncode != 0:
        unavailable(f"cannot mount a tmpfs: {result.stderr.strip()}")


def _unmount(directory):
    subprocess.run(["umount", "-l", str(directory)], capture_output=True)


@pytest.fixture
def full_fs(tmp_path, unavailable):
    """A 1 MiB file system: anything bigger fails with ENOSPC."""
    where = tmp_path / "small"
    _mount_tmpfs(where, unavailable)
    yield where
    _unmount(where)


@pytest.fixture
def ro_fs(tmp_path, unavailable):
    """A read-only file system holding a dynamic and a fixed VHD."""
    where = tmp_path / "ro"
    _mount_tmpfs(where, unavailable, "8M")
    vhdcore.create(where / "dyn.vhd", 4 * MiB).close()
    vhdcore.create(where / "fix.vhd", MiB, type="fixed").close()
    result = subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True)
    if result.returncode != 0:
        _unmount(where)
        unavailable("cannot remount the tmpfs read-only")
    yield where
    _unmount(where)


@pytest.fixture
def data(tmp_path):
    """4 MiB of incompressible data: more than the small file system holds."""
    path = tmp_path / "data.img"
    path.write_bytes(os.urandom(4 * MiB))
    return path


def _named(exc, path, action):
    """``exc`` is a StorageError that starts with ``path`` and says ``action``."""
    assert isinstance(exc, StorageError) and isinstance(exc, VHDError)
    assert isinstance(exc, OSError) and exc.filename == str(path)
    message = str(exc)
    assert message.startswith(f"{path}: {action}"), message
    assert TEMP_MARK not in message, message


def _one_line(err, path, action):
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f": {path}: {action}" in err and TEMP_MARK not in err, err


# -- a full disk --------------------------------------------------------------


@pytest.mark.parametrize("out_format", ["dynamic", "fixed", "raw"])
def test_convert_onto_a_full_disk_names_the_destination(full_fs, data, cli, out_format):
    dst = full_fs / "out.vhd"
    with pytest.raises(StorageError) as caught:
        vhdcore.convert(data, dst, out_format=out_format)
    assert caught.value.errno == errno.ENOSPC
    _named(caught.value, dst, "cannot write")
    assert "No space left on device" in str(caught.value)
    assert os.listdir(full_fs) == []
    code, out, err = cli("convert", "-O", out_format, data, dst)
    assert code == 1 and out == ""
    _one_line(err, dst, "cannot write")


def test_library_write_onto_a_full_disk_names_the_image(full_fs):
    path = full_fs / "grow.vhd"
    with vhdcore.create(path, 8 * MiB) as image:
        with pytest.raises(StorageError) as caught:
            image.write(0, os.urandom(4 * MiB))
    assert caught.value.errno == errno.ENOSPC
    _named(caught.value, path, "cannot write")


def test_create_onto_a_full_disk_names_the_new_file(full_fs, cli):
    path = full_fs / "big.vhd"  # a 2000 GiB dynamic disk: a 4 MB block table
    code, _out, err = cli("create", path, "2000G")
    assert code == 1
    _one_line(err, path, "cannot write ")
    assert os.listdir(full_fs) == []


def test_injected_enospc_names_the_destination_not_the_temporary(tmp_path, data, cli):
    dst = tmp_path / "out.vhd"
    with faults.inject(fail_at=3, fail="enospc", fail_count=1000):
        with pytest.raises(StorageError) as caught:
            vhdcore.convert(data, dst)
        code, _out, err = cli("convert", data, dst)
    _named(caught.value, dst, "cannot write")
    assert code == 1
    _one_line(err, dst, "cannot write")


def test_injected_failures_on_an_open_image_name_it(tmp_path):
    path = tmp_path / "a.vhd"
    vhdcore.create(path, 4 * MiB).close()
    for fail in ("enospc", "eio", "short"):
        with faults.inject(fail_at=1, fail=fail, fail_count=1000):
            with vhdcore.open(path, "r+") as image:
                with pytest.raises(StorageError) as caught:
                    image.write(0, b"x" * 4096)
                image._file.plan = None  # let close() flush
        _named(caught.value, path, "cannot ")  # write, or extend the file first
    with faults.inject(read_fail_at=1):
        with pytest.raises(StorageError) as caught:
            vhdcore.open(path)
    assert caught.value.errno == errno.EIO
    _named(caught.value, path, "cannot read")


# -- a directory ----------------------------------------------------------------


COMMANDS_ON_AN_IMAGE = [
    ["info"], ["check"], ["digest"], ["map"], ["compact"], ["repair"], ["repair", "--dry-run"],
    ["commit"], ["resize", "@", "8M"], ["snapshot", "@", "{tmp}/child.vhd"],
    ["convert", "@", "{tmp}/out.vhd"], ["compact", "{tmp}/base.vhd", "-o", "@", "--force"],
    ["create", "@", "4M", "--force"], ["convert", "{tmp}/base.vhd", "@", "--force"],
    ["compare", "@", "{tmp}/base.vhd"], ["compare", "{tmp}/base.vhd", "@"],
    ["rebase", "@", "{tmp}/base.vhd"],
]


@pytest.mark.parametrize("argv", COMMANDS_ON_AN_IMAGE, ids=" ".join)
def test_every_command_on_a_directory_names_it(tmp_path, cli, argv):
    directory = tmp_path / "somedir"
    directory.mkdir()
    vhdcore.create(tmp_path / "base.vhd", 4 * MiB).close()
    if "@" not in argv:
        argv = [*argv, "@"]
    argv = [str(directory) if a == "@" else a.format(tmp=tmp_path) for a in argv]
    code, out, err = cli(*argv)
    assert code == (2 if argv[0] == "compare" else 1), (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{directory}: " in err and ("directory" in err), err
    assert directory.is_dir() and list(directory.iterdir()) == []


def test_library_on_a_directory_raises_a_named_error(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    for call in (lambda: vhdcore.open(directory), lambda: vhdcore.open(directory, "r+"),
                 lambda: check(directory)):
        with pytest.raises(StorageError) as caught:
            call()
        assert caught.value.errno == errno.EISDIR
        _named(caught.value, directory, "is a directory")


# -- a read-only destination ------------------------------------------------------


def test_writing_onto_a_read_only_file_system_names_the_destination(ro_fs, tmp_path, cli):
    source = tmp_path / "src.img"
    source.write_bytes(os.urandom(MiB))
    vhdcore.create(tmp_path / "base.vhd", 4 * MiB).close()
    for argv, target in (
        (["convert", source, ro_fs / "out.vhd"], ro_fs / "out.vhd"),
        (["convert", source, ro_fs / "out.img"], ro_fs / "out.img"),
        (["convert", source, ro_fs / "dyn.vhd", "--force"], ro_fs / "dyn.vhd"),
        (["create", ro_fs / "new.vhd", "4M"], ro_fs / "new.vhd"),
        (["snapshot", ro_fs / "dyn.vhd", ro_fs / "child.vhd"], ro_fs / "child.vhd"),
        (["compact", tmp_path / "base.vhd", "-o", ro_fs / "c.vhd"], ro_fs / "c.vhd"),
    ):
        code, _out, err = cli(*argv)
        assert code == 1, (argv, err)
        _one_line(err, target, "cannot create")
        assert "Read-only file system" in err
    with pytest.raises(StorageError) as caught:
        vhdcore.convert(source, ro_fs / "lib.vhd")
    assert caught.value.errno == errno.EROFS
    _named(caught.value, ro_fs / "lib.vhd", "cannot create")


@pytest.mark.parametrize("argv", [["compact"], ["repair"], ["resize", "@", "8M"]], ids=" ".join)
def test_changing_an_image_on_a_read_only_file_system_names_it(ro_fs, cli, argv):
    image = ro_fs / "dyn.vhd"
    if "@" not in argv:
        argv = [*argv, "@"]
    code, _out, err = cli(*[image if a == "@" else a for a in argv])
    assert code == 1
    _one_line(err, image, "cannot open for writing")
    with pytest.raises(StorageError) as caught:
        vhdcore.open(image, "r+")
    assert caught.value.errno == errno.EROFS
    _named(caught.value, image, "cannot open for writing")


def test_storage_error_pickles_and_keeps_oserror_fields():
    import pickle

    from vhdcore.errors import storage_error

    original = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    error = storage_error(original, "disk.vhd", "cannot write 512 bytes at 0x200")
    assert str(error) == "disk.vhd: cannot write 512 bytes at 0x200: No space left on device"
    assert (error.errno, error.filename, error.strerror) == (
        errno.ENOSPC, "disk.vhd", "No space left on device")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is StorageError and str(again) == str(error)
    assert again.errno == errno.ENOSPC and again.filename == "disk.vhd"
    # A VHDError passes through unchanged: it named its file when it was made.
    assert storage_error(error, "other", "x") is error


def _fill(directory):
    """Fill the file system holding ``directory`` to the last byte."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        size = 64 << 10
        while size:
            try:
                os.write(fd, bytes(size))
            except OSError:
                size //= 2
    finally:
        os.close(fd)


def test_repair_with_no_room_for_its_backup_names_it_and_changes_nothing(full_fs, cli):
    from vhdcore.testing import samples

    sample = samples.generate("footer_bad_checksum", full_fs)
    before = sample.path.read_bytes()
    _fill(full_fs)
    code, _out, err = cli("repair", sample.path)
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{sample.path}.repair-backup-" in err and "cannot " in err, err
    assert "the image was not changed" in err and "No space left on device" in err
    assert sample.path.read_bytes() == before
    assert not [n for n in os.listdir(full_fs) if "repair-backup" in n]
