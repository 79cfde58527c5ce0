"""vhdcore.repair: backups, dry runs, --force, write order under crashes, undo.

Per-rule repairs run over the whole corpus in test_damaged_corpus.py;
this file covers repair's own guarantees.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

import vhdcore
from vhdcore.errors import FormatError, LockedError
from vhdcore.formats.vhd.check import check
from vhdcore.formats.vhd.footer import Footer
from vhdcore.formats.vhd.repair import BACKUP_MAGIC, read_backup, repair, undo, write_backup
from vhdcore.io import imagefile as fileio
from vhdcore.testing import samples


def _sha(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _backups(directory):
    return sorted(directory.glob("*.repair-backup-*"))


def test_clean_image_is_left_alone(tmp_path, cli):
    sample = samples.generate("valid_blktap", tmp_path)
    before = _sha(sample.path)
    report = repair(sample.path)
    assert report.actions == [] and report.backup_path is None and report.exit_code == 0
    code, out, _ = cli("repair", sample.path)
    assert code == 0 and "nothing to repair" in out
    assert _sha(sample.path) == before and not _backups(tmp_path)


def test_dry_run_lists_changes_and_writes_nothing(tmp_path):
    sample = samples.generate("trailing_garbage", tmp_path)
    before = _sha(sample.path)
    report = repair(sample.path, dry_run=True)
    assert [a.kind for a in report.actions] == ["truncate"]
    assert report.actions[0].old == f"{sample.path.stat().st_size} bytes"
    assert report.after is None and report.backup_path is None
    assert report.exit_code == 0
    assert _sha(sample.path) == before and not _backups(tmp_path)


def test_actions_say_what_where_old_and_new(tmp_path):
    sample = samples.generate("footer_killed", tmp_path)
    report = repair(sample.path)
    [action] = report.actions
    assert action.kind == "write" and action.length == 512
    assert action.offset == sample.path.stat().st_size - 512
    assert "from the copy at offset 0" in action.what and "(it was killed)" in action.what
    assert action.old == "512 bytes of 0xC7 (killed by tapdisk)"
    assert action.new.startswith("footer: dynamic, size 7340032, uuid ")
    assert report.after.clean


def test_backup_format_and_undo(tmp_path):
    sample = samples.generate("footer_missing_truncated", tmp_path)
    damaged, size = _sha(sample.path), sample.path.stat().st_size
    report = repair(sample.path)
    assert report.after.clean
    assert sample.path.stat().st_size == size + 512  # the footer was appended
    backup = report.backup_path
    assert os.path.basename(backup).startswith("footer_missing_truncated.vhd.repair-backup-")
    with open(backup, "rb") as handle:
        assert handle.readline() == BACKUP_MAGIC
        meta = json.loads(handle.readline())
        rest = handle.read()
    assert meta["file_size"] == size
    assert meta["records"] == [{"offset": size, "length": 0,
                                "what": meta["records"][0]["what"]}]
    assert rest == b""
    undo(sample.path, backup)
    assert _sha(sample.path) == damaged


def test_backup_holds_cut_bytes(tmp_path):
    sample = samples.generate("trailing_garbage", tmp_path)
    original = sample.path.read_bytes()
    report = repair(sample.path)
    meta, records = read_backup(report.backup_path)
    [(offset, data)] = records
    assert offset == len(original) - 1000 and data == original[-1000:]
    assert meta["records"][0]["what"].startswith("cut the 1000 bytes")


def test_read_backup_refuses_other_files(tmp_path):
    bogus = tmp_path / "x"
    bogus.write_bytes(b"hello\n")
    with pytest.raises(FormatError):
        read_backup(bogus)
    short = write_backup(str(tmp_path / "img"), 10, [(0, b"abcd", "test")],
                         str(tmp_path / "b"))
    (tmp_path / "c").write_bytes((tmp_path / "b").read_bytes()[:-2])
    assert short == str(tmp_path / "b")
    with pytest.raises(FormatError):
        read_backup(tmp_path / "c")


def test_cli_undo(tmp_path, cli):
    sample = samples.generate("footer_bad_checksum", tmp_path)
    damaged = _sha(sample.path)
    code, out, _ = cli("repair", sample.path)
    assert code == 0 and "backup of every byte changed:" in out
    backup = _backups(tmp_path)[0]
    code, out, _ = cli("repair", sample.path, "--undo", backup)
    assert code == 0 and _sha(sample.path) == damaged


def test_repairs_combine_header_checksum_and_footer(tmp_path):
    path, digest = samples._dynamic(tmp_path, "combo")
    data = bytearray(path.read_bytes())
    data[512 + 36] ^= 0xFF  # header checksum
    data[-512:] = bytes(512)  # primary footer zeroed
    data += b"garbage" * 10
    path.write_bytes(bytes(data))
    before = check(path)
    assert {"header.checksum"} <= set(before.codes)
    report = repair(path)
    assert [a.phase for a in report.actions] == sorted(a.phase for a in report.actions)
    assert report.after.clean, report.after.codes
    assert samples.content_digest(path) == digest


def test_both_footer_checksums_wrong_is_fixed(tmp_path):
    path, digest = samples._dynamic(tmp_path, "both")
    stored = Footer.from_bytes(path.read_bytes()[:512]).checksum
    for offset in (0, path.stat().st_size - 512):
        with open(path, "r+b") as handle:
            handle.seek(offset + 64)
            handle.write(((stored ^ 0x55) & 0xFFFFFFFF).to_bytes(4, "big"))
    report = repair(path)
    assert len(report.actions) == 2
    assert report.after.clean and samples.content_digest(path) == digest


def test_force_is_needed_for_a_copy_that_disagrees_in_size(tmp_path, cli):
    sample = samples.generate("footer_copy_size_mismatch", tmp_path)
    code, out, _ = cli("repair", sample.path)
    assert code == 2
    assert "current_size" in out and "--force" in out
    code, out, _ = cli("repair", "--force", sample.path)
    assert code == 0


def test_truncation_beyond_the_backup_limit_needs_force(tmp_path, monkeypatch):
    from vhdcore.formats.vhd import repair as repair_module

    monkeypatch.setattr(repair_module, "MAX_BACKUP_TAIL", 512)
    sample = samples.generate("trailing_garbage", tmp_path)
    refused = repair(sample.path)
    assert refused.exit_code == 2 and refused.actions == []
    assert "exceed" in refused.skipped[0][1]
    forced = repair(sample.path, force=True)
    assert forced.after.clean
    assert read_backup(forced.backup_path)[1] == []  # not backed up


def test_truncated_file_with_force_keeps_what_remains(tmp_path):
    sample = samples.generate("truncated_file", tmp_path)
    report = repair(sample.path, force=True)
    assert [a.kind for a in report.actions] == ["write", "write"]  # BAT sector, footer
    assert "the data it held is lost" in report.actions[0].what
    assert report.after.status == "leaks"  # the cut block's remains
    with vhdcore.open(sample.path) as image:
        assert image.read(0, 65536) == samples._pattern("truncated_file", 0)
        assert image.read(4 * 1024 * 1024, 65536) == bytes(65536)


def test_locked_image_is_not_repaired(tmp_path, cli):
    sample = samples.generate("trailing_garbage", tmp_path)
    holder = fileio.open_image_file(sample.path, writable=True)
    try:
        with pytest.raises(LockedError):
            repair(sample.path)
        code, _out, err = cli("repair", sample.path)
        assert code == 1 and "open for writing" in err
    finally:
        holder.close()


def test_repair_of_missing_file_exits_1(tmp_path, cli):
    code, _out, err = cli("repair", tmp_path / "nope.vhd")
    assert code == 1 and "No such file" in err


class _Crash(Exception):
    pass


def _crashing_factory(budget):
    """An ImageFile that "crashes" after ``budget`` writes or truncations."""

    class Crashing(fileio.ImageFile):
        def pwrite(self, offset, data):
            if self.writable and "left" in budget:
                if budget["left"] == 0:
                    raise _Crash()
                budget["left"] -= 1
            return super().pwrite(offset, data)

        def truncate(self, size):
            if "left" in budget:
                if budget["left"] == 0:
                    raise _Crash()
                budget["left"] -= 1
            return super().truncate(size)

    return Crashing


@pytest.mark.parametrize("name,force", [
    ("truncated_file", True),
    ("footer_wrong_disk_type", False),
    ("trailing_garbage", False),
    ("file_size_unaligned", False),
    ("bat_entry_past_eof", True),
])
def test_a_crash_mid_repair_leaves_the_image_no_worse(tmp_path, monkeypatch, name, force):
    """Crash after every possible number of writes (the backup's included); then
    repair again finishes."""
    template = samples.generate(name, tmp_path / "template")
    original = template.path.read_bytes()
    errors_before = len(check(template.path).errors)
    planned = len(repair(template.path, dry_run=True, force=force).actions)
    assert planned >= 1
    crashes = 0
    for allowed in range(200):
        work = tmp_path / f"crash{allowed}"
        work.mkdir()
        image = work / template.path.name
        image.write_bytes(original)
        budget = {"left": allowed}
        monkeypatch.setattr(fileio, "FILE_FACTORY", _crashing_factory(budget))
        try:
            repair(image, force=force)
        except _Crash:
            crashes += 1
        else:
            break
        finally:
            monkeypatch.setattr(fileio, "FILE_FACTORY", fileio.ImageFile)
        # The backup is whole before any change, and no temporary file is left.
        assert len(_backups(work)) == 1 or image.read_bytes() == original
        assert sorted(os.listdir(work)) == sorted([image.name, *(b.name for b in _backups(work))])
        after_crash = check(image)
        assert len(after_crash.errors) <= errors_before, after_crash.codes
        finished = repair(image, force=force)
        assert finished.exit_code == 0, finished.skipped
        assert check(image).clean
    assert crashes > planned  # the backup's writes and every action's were cut


def test_interrupted_resize_copy_is_a_warning_that_repair_fixes(tmp_path):
    """A copy at offset 0 left with the old size (a resize cut between its footer writes)."""
    from vhdcore.formats.vhd.resize import resize

    path = tmp_path / "grown.vhd"
    with vhdcore.create(path, 4 * 1024 * 1024) as image:
        image.write(0, b"keep me")
    old_copy = path.read_bytes()[:512]
    resize(path, 8 * 1024 * 1024)
    with open(path, "r+b") as raw:
        raw.write(old_copy)  # the state between the primary and the copy write
    report = check(path)
    assert report.exit_code == 0
    assert [p.code for p in report.problems] == ["footer.copy_stale"]
    result = repair(path)
    assert any("footer copy" in a.what for a in result.actions)
    after = check(path)
    assert after.problems == [] and after.exit_code == 0
    with vhdcore.open(path) as image:
        assert image.virtual_size == 8 * 1024 * 1024
        assert image.read(0, 7) == b"keep me"
