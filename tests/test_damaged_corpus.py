"""The corpus of vhdcore.samples: one image per check rule, found and (where it applies) repaired.

For every sample: ``check`` reports the expected codes with the expected
message and the CLI returns the expected exit code; checking changes no
byte. For every repairable sample: ``--dry-run`` changes nothing, repair
(with ``--force`` where the sample says so) leaves an image that checks
clean (leaks allowed), that qemu-img and vhdiinfo open, whose content is
what it was before the damage (per vhdcore and per qemu-img) where no data
had to go, and whose backup puts every byte back.
"""

from __future__ import annotations

import hashlib
import json
import tempfile

import pytest

from vhdcore.errors import NotVHDError
from vhdcore.formats.vhd.check import check
from vhdcore.formats.vhd.repair import read_backup, repair, undo
from vhdcore.testing import samples

ALL = [*samples.VALID, *samples.DAMAGED]


def _repair_modes():
    """``{name: mode}`` of the samples repair applies to (generated once, at collection)."""
    with tempfile.TemporaryDirectory() as directory:
        return {s.name: s.repair for s in samples.generate_all(directory) if s.repair}


REPAIR_MODES = _repair_modes()

# A fragment of the first expected problem's message, per sample: the
# message must say what is wrong where, not only carry the right code.
MESSAGES = {
    "footer_bad_cookie": "footer cookie at 0x400c00 is b'conectiX', expected b'conectix'",
    "footer_bad_checksum": "footer checksum mismatch at 0x400c00: stored 0x",
    "footer_bad_checksum_fixed": "footer checksum mismatch at 0x400000",
    "footer_wrong_version": "format version at 0x400c0c is 0x00020000, expected 0x00010000",
    "footer_bad_features": "unknown bits 0x00000010",
    "footer_fixed_data_offset": "data offset at 0x400010 is 0x200",
    "footer_future_timestamp": "in the future",
    "footer_wrong_disk_type": "disk type at 0x400c3c is 6",
    "footer_geometry_too_large": "65535/16/255",
    "footer_reserved_set": "reserved bytes are not zero (first at 0x400cb9)",
    "footer_null_uuid": "unique id at 0x400c44 is all zero",
    "footer_copy_mismatch": "footer copy at 0x0 differs from the footer at 0x400c00 in timestamp",
    "footer_copy_size_mismatch": "in current_size",
    "footer_copy_stale": "an interrupted resize",
    "footer_copy_missing": "no footer copy at offset 0",
    "footer_missing_truncated": "the file ends at 0x400c00, right after the last block",
    "footer_missing_zeroed": "the last sector (0x400c00) is all zero",
    "footer_killed": "overwritten with 0xC7 bytes",
    "footer_legacy_511": "legacy 511-byte footer",
    "header_bad_cookie": "dynamic header cookie at 0x200 is b'cxsparsX'",
    "header_bad_checksum": "dynamic header checksum mismatch at 0x200",
    "header_wrong_version": "dynamic header version at 0x218 is 0x00020000",
    "header_table_outside": "at 0x10000000, running past the footer at 0x400c00",
    "header_table_unaligned": "table offset at 0x210 is 0x604, not sector-aligned",
    "header_block_size_not_pow2": "block size at 0x220 is 3145728, not a power of two",
    "header_block_size_zero": "block size at 0x220 is 0, not a power of two",
    "header_block_size_huge": "block size at 0x220 is 2147483648, above",
    "header_max_entries_small": "max table entries at 0x21c is 2, but",
    "header_max_entries_absurd": "a table of 4294967295 entries",
    "header_parent_fields_on_dynamic": "has parent UUID, parent name set",
    "header_zeroed": "dynamic header cookie at 0x200 is b'\\x00",
    "bat_entry_zero": "BAT entry 1 (at 0x604) puts block 0x0..0x200200 over the metadata "
                      "(the footer copy)",
    "bat_entry_into_bat": "puts block 0x600..0x200800 over the metadata (the BAT)",
    "bat_entry_into_footer": "BAT entry 1 (at 0x604) puts block 0x400c00..0x600e00 over the "
                             "footer at 0x400c00",
    "bat_entry_past_eof": "running past the end of the file (0x400e00)",
    "bat_entry_duplicate": "BAT entry 1 (at 0x604) points at the same block (0x800) as BAT "
                           "entry 0",
    "bat_entry_overlap_one_sector": "BAT entry 2 (at 0x608) (block 0x200800..0x400a00) overlaps "
                                    "BAT entry 0 (block 0x800..0x200a00) by 512 bytes",
    "bat_last_partial_block": "BAT entry 3 (at 0x60c) puts block 0x400c00..0x600e00 over the "
                              "footer",
    "bat_zeroed_sector": "BAT entry 0 (at 0x600) puts block 0x0..",
    "batmap_bad_checksum": "batmap checksum mismatch at 0x800: stored 0x0badbeef",
    "batmap_unallocated_full": "unallocated blocks as full (first: block 1)",
    "locator_unknown_code": "unknown platform code b'Xyzw'",
    "locator_outside_file": "(MacX) puts its data at 0x4201000..0x4201200, past the footer",
    "locator_length_exceeds_space": "has data length 513, more than its space of 512 bytes",
    "locator_duplicate": "repeats platform code 'W2ru' of locator 0",
    "parent_missing": "parent 'parent_missing.parent.vhd' not found (tried W2ru=",
    "parent_uuid_mismatch": "but the child was made from",
    "chain_loop": "is already part of this chain (a loop)",
    "chain_self_loop": "chain_self_loop.vhd is already part of this chain (a loop)",
    "trailing_garbage": "1000 bytes follow the footer at 0x400c00",
    "trailing_garbage_fixed": "4096 bytes follow the footer at 0x400000",
    "file_size_unaligned": "file size 4197988 is neither 0 nor 511 modulo 512",
    "truncated_file": "file ends at 0x300c00, but its metadata and blocks reach 0x400c00",
    "file_too_small": "file of 100 bytes is too small",
    "not_a_vhd": "not_a_vhd.vhd: not a VHD (no footer cookie at the end of the file or at "
                 "offset 0)",
    "data_under_clear_bits": "holds data in 8 sectors whose bitmap bit is clear "
                             "(first: sector 1024, at 0x280c00)",
    "stale_data_differencing": "reads come from the parent there",
    "leaked_block": "2097664 bytes at 0x400c00..0x600e00 belong to no structure",
}


def _sha(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _flags(sample):
    flags = []
    if sample.check_options.get("parents"):
        flags.append("--parents")
    if sample.check_options.get("deep"):
        flags.append("--deep")
    return flags


def test_every_damaged_sample_has_a_message_fragment():
    assert set(MESSAGES) == set(samples.DAMAGED)


@pytest.mark.parametrize("name", ALL)
def test_check_finds_it(tmp_path, name, cli):
    sample = samples.generate(name, tmp_path)
    hashes = {f: _sha(f) for f in sample.files}
    if sample.exit_code == 1:
        # No VHD at all: "could not check", one line naming the file, not
        # a report of its last bytes as a damaged footer.
        with pytest.raises(NotVHDError) as caught:
            check(sample.path, **sample.check_options)
        assert MESSAGES[name] in str(caught.value)
        for flags in ([], ["--json"]):
            code, out, err = cli("check", *flags, *_flags(sample), sample.path)
            assert code == 1 and out == "" and err.count("\n") == 1
            assert MESSAGES[name] in err
        assert {f: _sha(f) for f in sample.files} == hashes
        return
    report = check(sample.path, **sample.check_options)
    codes = report.codes
    assert set(sample.codes) <= set(codes), codes
    assert report.exit_code == sample.exit_code, codes
    if name in samples.VALID:
        assert report.problems == [] and report.leaks == []
    else:
        problem = next(p for p in report.all_problems if p.code == sample.codes[0])
        assert MESSAGES[name] in problem.message
        assert problem.message.startswith(str(sample.path.parent))
    # The CLI agrees, in text and JSON.
    code, out, _err = cli("check", *_flags(sample), sample.path)
    assert code == sample.exit_code
    for wanted in sample.codes:
        assert wanted in out
    code, out, _err = cli("check", "--json", *_flags(sample), sample.path)
    data = json.loads(out)
    assert code == data["exit_code"] == sample.exit_code
    # Checking (with every option) never changes a byte.
    check(sample.path, parents=True, deep=True)
    assert {f: _sha(f) for f in sample.files} == hashes


def test_samples_are_deterministic_and_small(tmp_path):
    first = samples.generate_all(tmp_path / "a", "all")
    second = samples.generate_all(tmp_path / "b", "all")
    for one, two in zip(first, second):
        assert one.name == two.name
        for file_one, file_two in zip(one.files, two.files):
            assert _sha(file_one) == _sha(file_two), one.name
            assert file_one.stat().st_size < 8 * 1024 * 1024
            assert file_one.stat().st_blocks * 512 <= 1024 * 1024  # sparse
        assert one.content == two.content


def _peer_raw_digest(peers, path, tmp_path) -> str:
    raw = tmp_path / "content.raw"
    peers.run("qemu-img", "convert", "-f", "vpc", "-O", "raw", path, raw)
    return _sha(raw)


@pytest.mark.parametrize("name", sorted(REPAIR_MODES))
def test_repair_fixes_it(tmp_path, name, peers, cli):
    mode = REPAIR_MODES[name]
    sample = samples.generate(name, tmp_path / "image")
    damaged = _sha(sample.path)
    damaged_size = sample.path.stat().st_size

    # A dry run lists the changes and changes nothing.
    code, out, _err = cli("repair", "--dry-run", *(["--force"] if mode == "force" else []),
                          sample.path)
    assert code == 0, out
    assert "would change:" in out and "dry run: nothing was changed" in out
    assert _sha(sample.path) == damaged
    assert not list(sample.path.parent.glob("*.repair-backup-*"))

    if mode == "force":
        # Without --force the data-losing part is refused, with a reason.
        refused = repair(sample.path)
        assert refused.exit_code == 2
        assert any("--force" in reason for _code, reason in refused.skipped)
        assert not check(sample.path).clean

    code, out, _err = cli("repair", "--json", *(["--force"] if mode == "force" else []),
                          sample.path)
    data = json.loads(out)
    assert code == 0, data
    assert data["status_after"] in ("clean", "leaks")
    assert data["actions"] and all(a["old"] and a["new"] for a in data["actions"])
    after = check(sample.path)
    assert after.clean, after.codes

    # Peers open the repaired image.
    info = json.loads(peers.run("qemu-img", "info", "-f", "vpc", "--output=json",
                                sample.path).stdout)
    assert info["virtual-size"] == after.virtual_size
    assert "Media size" in peers.run("vhdiinfo", sample.path).stdout

    # The content is what it was before the damage, where no data had to go.
    if sample.content_kept:
        assert samples.content_digest(sample.path) == sample.content
        assert _peer_raw_digest(peers, sample.path, tmp_path) == sample.content

    # The backup names every changed range and puts the damaged bytes back.
    backup = data["backup"]
    meta, records = read_backup(backup)
    assert meta["image"] == str(sample.path.resolve())
    assert meta["file_size"] == damaged_size
    assert len(records) == len(meta["records"]) >= 1
    undo(sample.path, backup)
    assert _sha(sample.path) == damaged


@pytest.mark.parametrize("name", ["header_bad_cookie", "bat_entry_duplicate", "parent_missing",
                                  "leaked_block", "data_under_clear_bits"])
def test_repair_leaves_what_it_cannot_fix(tmp_path, name, cli):
    sample = samples.generate(name, tmp_path)
    before = _sha(sample.path)
    code, out, _err = cli("repair", "--force", sample.path)
    assert _sha(sample.path) == before
    if name in ("leaked_block", "data_under_clear_bits"):
        assert code == 0 and "nothing to repair" in out
    else:
        assert code == 2
        assert "not repaired:" in out and sample.codes[0] in out


@pytest.mark.peer
@pytest.mark.parametrize("name", list(samples.VALID))
def test_valid_samples_read_by_peers(tmp_path, name, peers):
    sample = samples.generate(name, tmp_path)
    info = json.loads(peers.run("qemu-img", "info", "-f", "vpc", "--output=json",
                                sample.path).stdout)
    report = check(sample.path)
    assert info["virtual-size"] == report.virtual_size
    assert "Media size" in peers.run("vhdiinfo", sample.path).stdout
    if sample.name != "valid_differencing":  # qemu ignores a differencing disk's parent
        assert _peer_raw_digest(peers, sample.path, tmp_path) == sample.content


# Codes no sample produces, and where they are tested instead (or why not).
UNSAMPLED = {
    "file.short_read": "needs a file that shrinks during the check",
    "footer.checksum_hidden": "early blktap images: test_footer.py",
    "footer.features_reserved": "test_footer.py",
    "footer.chs_size": "creator 'vpc '/'qemu' images: test_footer.py",
    "footer.current_size": "test_footer.py",
    "footer.size_limit": "test_footer.py",
    "footer.size_compat": "a fixed disk above 2040 GiB: test_footer.py",
    "footer.file_size": "test_footer.py",
    "footer.saved_state": "test_footer.py",
    "footer.hidden": "test_footer.py",
    "footer.mismatch_hidden": "early blktap images",
    "header.data_offset": "test_header.py",
    "header.block_size_compat": "4 MiB blocks; test_check.py would need a 4 MiB-block image",
    "header.reserved": "test_header.py",
    "header.parent_uuid": "test_header.py",
    "header.parent_name": "test_header.py",
    "bat.beyond_size": "test_bat.py",
    "bat.too_large": "needs a BAT over 256 MiB",
    "batmap.missing": "test_check.py",
    "batmap.cookie": "test_batmap.py (check only reads a batmap that has the cookie)",
    "batmap.version": "test_batmap.py",
    "batmap.offset": "test_batmap.py",
    "batmap.size": "test_batmap.py",
    "locator.unused_nonzero": "test_header.py",
    "locator.fields": "test_header.py",
    "locator.space": "test_header.py",
    "locator.decode": "locator_length_exceeds_space reports it too",
    "locator.name_mismatch": "test_check.py (parent outside the allowed directories)",
    "parent.refused": "test_check.py",
    "parent.invalid": "a parent file that is not a VHD",
    "parent.unreadable": "needs an unreadable parent",
    "chain.depth": "needs a chain of 31 images",
    "chain.block_size": "test_check.py",
    "chain.parent_smaller": "test_check.py",
}


def test_codes_are_documented_and_sampled(tmp_path):
    from vhdcore.formats.vhd.check import PROBLEM_CODES

    emitted = set()
    for sample in samples.generate_all(tmp_path, "all"):
        if sample.exit_code == 1:
            continue  # no VHD: check raises, reports no codes
        report = check(sample.path, parents=True, deep=True)
        emitted.update(report.codes)
    documented = set(PROBLEM_CODES)
    normalised = {c if not c.startswith("footer_copy.") or c == "footer_copy.missing"
                  else "footer." + c.split(".", 1)[1] for c in emitted}
    assert normalised <= documented, normalised - documented
    missing = documented - normalised - set(UNSAMPLED)
    assert not missing, f"no sample produces {sorted(missing)}"
