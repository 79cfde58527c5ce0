"""vhdcore.check: clean images check clean, damage is found, nothing is written.

The one-image-per-rule corpus lives in test_damaged_corpus.py; this file
covers the report itself, images made by vhdcore and qemu-img, chains,
leaks, deep checks, the CLI's output and exit codes, a random bit-flip
smoke test (check never raises), and the size of the work (a 2040 GiB
fully allocated image).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import numpy as np
import pytest

import vhdcore
from vhdcore._backend import BACKEND
from vhdcore.formats.vhd.check import CheckReport, check
from vhdcore.formats.vhd.footer import Footer
from vhdcore.testing import samples

MiB = 1024 * 1024


def _sha(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _codes(report: CheckReport):
    return set(report.codes)


# -- images made by vhdcore ---------------------------------------------------


@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
def test_vhdcore_images_check_clean_after_writes(tmp_path, rng, kind):
    path = tmp_path / f"{kind}.vhd"
    with vhdcore.create(path, 9 * MiB + 512, type=kind) as image:
        for _ in range(6):
            offset = int(rng.integers(0, image.virtual_size - 70000))
            image.write(offset, rng.integers(0, 256, 65536 + 7, dtype=np.uint8).tobytes())
    report = check(path, deep=True)
    assert report.status == "clean", report.codes
    assert report.problems == []
    assert report.exit_code == 0
    assert report.type == kind


def test_vhdcore_differencing_chain_checks_clean(tmp_path, rng):
    base = tmp_path / "base.vhd"
    with vhdcore.create(base, 8 * MiB) as image:
        image.write(0, rng.integers(0, 256, 3 * MiB, dtype=np.uint8).tobytes())
    middle = tmp_path / "middle.vhd"
    with vhdcore.create(middle, parent=base) as image:
        image.write(MiB + 100, b"middle" * 1000)
    leaf = tmp_path / "leaf.vhd"
    with vhdcore.create(leaf, parent=middle) as image:
        image.write(5 * MiB, b"leaf" * 5000)
    report = check(leaf, parents=True, deep=True)
    assert [member.path for member in report.chain] == [str(leaf), str(middle), str(base)]
    assert report.status == "clean", report.codes
    assert report.chain[0].parent_path == str(middle)


def test_check_without_parents_still_compares_the_parent_uuid(tmp_path):
    sample = samples.generate("parent_uuid_mismatch", tmp_path)
    report = check(sample.path)
    assert report.parent is None
    assert "parent.uuid" in _codes(report)


def test_chain_rules_block_size_and_parent_smaller(tmp_path):
    parent = samples.build_dynamic(tmp_path / "p.vhd", name="p", size=4 * MiB,
                                   blocks={1: [(0, b"p" * 4096)]})
    child = samples.build_dynamic(
        tmp_path / "c.vhd", name="c", size=7 * MiB, block_size=512 * 1024,
        blocks={0: [(0, b"x" * 4096)]}, parent=parent,
    )
    plain = check(child)
    assert plain.status == "clean"  # the chain rules need the parent checked
    report = check(child, parents=True)
    assert {"chain.block_size", "chain.parent_smaller"} <= _codes(report)
    assert report.status == "clean"  # both are warnings
    assert all(p.severity == "warning" for p in report.problems)


def test_parent_outside_allowed_directories_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    parent = samples.build_dynamic(tmp_path / "a" / "p.vhd", name="p")
    child = tmp_path / "b" / "c.vhd"
    samples.build_dynamic(child, name="c", parent=parent, locator_name="../a/p.vhd")
    report = check(child)
    assert "parent.refused" in _codes(report), report.codes
    allowed = check(child, allow_parent_dirs=[tmp_path / "a"])
    assert "parent.refused" not in _codes(allowed)
    assert "parent.missing" not in _codes(allowed)


# -- images made by qemu-img --------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("options", [
    ["-o", "subformat=fixed"],
    ["-o", "subformat=dynamic"],
    ["-o", "subformat=dynamic,force_size=on"],
    ["-o", "subformat=fixed,force_size=on"],
], ids=["fixed", "dynamic", "dynamic-force_size", "fixed-force_size"])
def test_qemu_images_check_clean(tmp_path, peers, options):
    path = tmp_path / "q.vhd"
    peers.run("qemu-img", "create", "-f", "vpc", *options, path, "20M")
    peers.run("qemu-io", "-f", "vpc", "-c", "write -P 0x5a 1M 3M", "-c", "write -P 7 17M 100k",
              path)
    report = check(path, deep=True)
    assert report.clean, report.codes
    assert report.exit_code == 0
    force_size = "force_size" in options[1]
    assert ("footer.geometry" in _codes(report)) == force_size
    assert not report.leaks


# -- what is reported ---------------------------------------------------------


def test_every_problem_has_code_severity_offset_and_names_the_file(tmp_path):
    for name in ("footer_killed", "bat_entry_duplicate", "header_bad_checksum", "leaked_block",
                 "trailing_garbage", "truncated_file"):
        sample = samples.generate(name, tmp_path / name)
        report = check(sample.path)
        assert report.problems
        for problem in report.problems:
            assert problem.code.count(".") == 1
            assert problem.severity in ("error", "warning", "leak")
            assert problem.message.startswith(str(sample.path))
            assert problem.offset is None or 0 <= problem.offset <= report.file_size + 2**40


def test_overlap_message_names_both_entries(tmp_path):
    sample = samples.generate("bat_entry_overlap_one_sector", tmp_path)
    [problem] = [p for p in check(sample.path).problems if p.code == "bat.overlap"]
    assert "BAT entry 2" in problem.message and "BAT entry 0" in problem.message
    assert "by 512 bytes" in problem.message
    assert problem.offset == 1536 + 4 * 2


def test_duplicate_entry_message(tmp_path):
    sample = samples.generate("bat_entry_duplicate", tmp_path)
    messages = [p.message for p in check(sample.path).problems if p.code == "bat.overlap"]
    assert any("points at the same block" in m for m in messages)


def test_an_entry_thrown_over_the_header_blames_only_itself(tmp_path):
    sample = samples.generate("bat_entry_zero", tmp_path)
    report = check(sample.path)
    assert report.codes.count("bat.outside") == 1
    assert "bat.overlap" not in report.codes
    assert "the footer copy" in next(p.message for p in report.problems)
    assert report.outside_entries.tolist() == [1]


def test_many_bad_entries_are_summarised(tmp_path):
    path = samples.build_full_dynamic(tmp_path / "f.vhd", 200 * MiB)
    header = vhdcore.formats.vhd.header.DynamicHeader.from_bytes(path.read_bytes()[512:1536])
    with open(path, "r+b") as handle:
        handle.seek(header.table_offset)
        handle.write(b"\0\0\0\0" * 40)
    report = check(path)
    outside = [p for p in report.problems if p.code == "bat.outside"]
    assert len(outside) == 17
    assert outside[-1].message.endswith(f"outside the data area {report.counts['metadata_end']:#x}"
                                        f"..{report.footer_offset:#x}")
    assert "24 more BAT entries" in outside[-1].message
    assert len(report.outside_entries) == 40


def test_leaks_need_four_kib_and_name_the_range(tmp_path):
    sample = samples.generate("leaked_block", tmp_path)
    report = check(sample.path)
    assert report.status == "leaks" and report.exit_code == 3
    [leak] = report.leaks
    assert leak.length == 2 * MiB + 512
    assert report.counts["leaked_bytes"] == leak.length
    # blktap's alignment gaps (under 4 KiB) are padding, not leaks.
    tap = samples.generate("valid_blktap", tmp_path / "tap")
    assert check(tap.path).leaks == []


def test_timestamp_is_judged_against_now(tmp_path):
    sample = samples.generate("valid_dynamic", tmp_path)
    footer_time = samples.TIMESTAMP + 946_684_800
    assert check(sample.path, now=footer_time).clean
    early = check(sample.path, now=footer_time - 3600)
    assert "footer.timestamp" in _codes(early)
    assert early.clean  # a warning
    assert check(sample.path, now=footer_time - 1000).problems == []  # 30 min of slack


def test_deep_reads_are_needed_for_data_under_clear_bits(tmp_path):
    sample = samples.generate("data_under_clear_bits", tmp_path)
    assert check(sample.path).clean
    deep = check(sample.path, deep=True)
    [problem] = [p for p in deep.problems if p.code == "data.clear_bitmap"]
    assert "8 sectors" in problem.message
    assert deep.counts["deep_dirty_sectors"] == 8


def test_batmap_is_checked_and_missing_batmap_warned(tmp_path):
    path = samples.build_dynamic(tmp_path / "tap.vhd", name="tap", blktap=True)
    assert check(path).problems == []
    # A tap 1.3 image without its batmap: a warning.
    no_batmap = samples.build_dynamic(tmp_path / "nb.vhd", name="nb",
                                      creator=(b"tap\0", 0x00010003, b"Lnux"))
    report = check(no_batmap)
    assert "batmap.missing" in _codes(report)
    assert report.clean


def test_both_footers_with_bad_checksum_are_both_reported(tmp_path):
    path, _ = samples._dynamic(tmp_path, "both")
    stored = Footer.from_bytes(path.read_bytes()[:512]).checksum
    size = os.path.getsize(path)
    for offset in (0, size - 512):
        with open(path, "r+b") as handle:
            handle.seek(offset + 64)
            handle.write(((stored + 1) & 0xFFFFFFFF).to_bytes(4, "big"))
    report = check(path)
    assert {"footer.checksum", "footer_copy.checksum"} <= _codes(report)
    assert report.stopped is None
    assert report.counts["allocated_blocks"] == 2  # checking went on


def test_the_report_json_is_complete(tmp_path):
    sample = samples.generate("footer_killed", tmp_path)
    data = check(sample.path).to_dict()
    json.dumps(data)
    assert data["status"] == "corrupt" and data["exit_code"] == 2
    assert data["footer"] == {"state": "killed", "offset": data["file_size"] - 512, "copy": "ok"}
    [problem] = data["problems"]
    assert set(problem) == {"code", "severity", "offset", "message"}
    assert problem["code"] == "footer.killed"


# -- read-only ----------------------------------------------------------------


def test_check_never_writes(tmp_path):
    names = ["footer_killed", "truncated_file", "trailing_garbage", "valid_differencing",
             "data_under_clear_bits", "chain_loop"]
    for name in names:
        sample = samples.generate(name, tmp_path / name)
        before = {f: (_sha(f), os.stat(f).st_mtime_ns) for f in sample.files}
        check(sample.path, parents=True, deep=True)
        assert {f: (_sha(f), os.stat(f).st_mtime_ns) for f in sample.files} == before


# -- never raises -------------------------------------------------------------


@pytest.mark.parametrize("name", ["valid_dynamic", "valid_differencing", "valid_blktap"])
def test_random_damage_never_raises(tmp_path, rng, name):
    sample = samples.generate(name, tmp_path / "orig")
    original = sample.path.read_bytes()
    metadata = [(0, 4096), (len(original) - 512, len(original))]
    target = tmp_path / "orig" / "mutant.vhd"
    for round_ in range(60):
        data = bytearray(original)
        for _ in range(int(rng.integers(1, 12))):
            low, high = metadata[int(rng.integers(0, 2))]
            data[int(rng.integers(low, high))] = int(rng.integers(0, 256))
        if round_ % 10 == 9:
            data = data[: int(rng.integers(0, len(data)))]
        target.write_bytes(bytes(data))
        report = check(target, parents=True, deep=True)
        assert report.exit_code in (0, 2, 3)


# -- the CLI ------------------------------------------------------------------


def test_cli_text_and_exit_codes(tmp_path, cli):
    clean = samples.generate("valid_dynamic", tmp_path / "v")
    code, out, err = cli("check", clean.path)
    assert code == 0 and err == ""
    assert out.strip().endswith("No errors were found on the image.")

    killed = samples.generate("footer_killed", tmp_path / "k")
    code, out, _ = cli("check", killed.path)
    assert code == 2
    assert "error   footer.killed @" in out
    assert "1 error found" in out

    leaked = samples.generate("leaked_block", tmp_path / "l")
    code, out, _ = cli("check", leaked.path)
    assert code == 3 and "1 leaked region (2097664 bytes)" in out

    code, out, err = cli("check", tmp_path / "absent.vhd")
    assert code == 1 and out == ""
    assert err.startswith("vhdcore check: ") and "No such file" in err

    code, _out, err = cli("check", tmp_path)
    assert code == 1 and err


def test_cli_json_parents_deep(tmp_path, cli):
    sample = samples.generate("stale_data_differencing", tmp_path)
    code, out, _ = cli("check", "--json", "--parents", "--deep", sample.path)
    data = json.loads(out)
    assert code == 0
    assert data["deep"] is True
    assert [p["code"] for p in data["problems"]] == ["data.stale"]
    assert data["parent"]["filename"].endswith("stale_data_differencing.parent.vhd")


def test_cli_process_exit_code(tmp_path, cli_process):
    sample = samples.generate("bat_entry_past_eof", tmp_path)
    result = cli_process("check", sample.path)
    assert result.returncode == 2
    assert b"bat.outside" in result.stdout


# -- the size of the work -----------------------------------------------------


def test_fully_allocated_2040_gib_checks_fast(tmp_path):
    """A full BAT of 1,044,480 entries: one read, one sort-free scan."""
    path = samples.build_full_dynamic(tmp_path / "max.vhd", 2040 * 1024 * MiB)
    start = time.perf_counter()
    report = check(path)
    elapsed = time.perf_counter() - start
    assert report.status == "clean", report.codes
    assert report.counts["allocated_blocks"] == 1_044_480
    assert elapsed < (0.5 if BACKEND == "cython" else 5.0)


def test_report_dataclass_defaults():
    report = CheckReport(path="x")
    assert report.status == "clean" and report.chain == [report]
    assert dataclasses.asdict(CheckReport(path="y"))["problems"] == []
