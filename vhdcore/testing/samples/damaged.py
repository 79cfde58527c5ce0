"""The damaged samples: one image per rule of check, each damage a byte patch."""

from __future__ import annotations

import dataclasses
import uuid as uuid_module
from pathlib import Path

from ...formats.vhd import layout
from ...formats.vhd.bat import blocks_needed
from ...formats.vhd.batmap import Batmap
from ...formats.vhd.constants import (
    FOOTER_SIZE,
    SECTOR_SIZE,
)
from ...formats.vhd.header import encode_parent_name
from .build import (
    BLOCK,
    FUTURE_TIMESTAMP,
    SIZE,
    TIMESTAMP,
    MiB,
    Sample,
    _bat,
    _dynamic,
    _footer_offset,
    _pair,
    _patch,
    _pattern,
    _read,
    _read_footer,
    _read_header,
    _rewrite_footer,
    _rewrite_header,
    _sample,
    _set_bat,
    _size,
    _truncate,
    _uuid,
    _write_pieces,
    build_dynamic,
    build_fixed,
    content_digest,
)

# ---------------------------------------------------------------------------
# damaged images: footers


def _footer_sample(directory, name, codes, exit_code, repair, description, *,
                   primary=True, copy=False, checksum=True, **changes) -> Sample:
    path, digest = _dynamic(directory, name)
    _rewrite_footer(path, primary=primary, copy=copy, checksum=checksum, **changes)
    return _sample(name, path, codes, exit_code, repair=repair, digest=digest,
                   description=description)


def footer_bad_cookie(directory) -> Sample:
    return _footer_sample(directory, "footer_bad_cookie", ["footer.cookie"], 2, "yes",
                          "primary footer cookie 'conectiX'", cookie=b"conectiX")


def footer_bad_checksum(directory) -> Sample:
    name = "footer_bad_checksum"
    path, digest = _dynamic(directory, name)
    stored = _read_footer(path).checksum
    _patch(path, _footer_offset(path) + 64, ((stored + 1) & 0xFFFFFFFF).to_bytes(4, "big"))
    return _sample(name, path, ["footer.checksum"], 2, repair="yes", digest=digest,
                   description="primary footer checksum off by one")


def footer_bad_checksum_fixed(directory) -> Sample:
    name = "footer_bad_checksum_fixed"
    path = build_fixed(Path(directory) / f"{name}.vhd", name=name)
    digest = content_digest(path)
    stored = _read_footer(path).checksum
    _patch(path, _footer_offset(path) + 64, ((stored + 1) & 0xFFFFFFFF).to_bytes(4, "big"))
    return _sample(name, path, ["footer.checksum"], 2, repair="yes", digest=digest,
                   description="fixed disk whose footer checksum is off by one")


def footer_wrong_version(directory) -> Sample:
    return _footer_sample(directory, "footer_wrong_version", ["footer.version"], 2, "yes",
                          "primary footer format version 2.0", format_version=0x00020000)


def footer_bad_features(directory) -> Sample:
    return _footer_sample(directory, "footer_bad_features", ["footer.features_unknown"], 2,
                          "yes", "primary footer features 0x12 (unknown bit 0x10)",
                          features=0x12)


def footer_fixed_data_offset(directory) -> Sample:
    name = "footer_fixed_data_offset"
    path = build_fixed(Path(directory) / f"{name}.vhd", name=name)
    digest = content_digest(path)
    _rewrite_footer(path, copy=False, data_offset=512)
    return _sample(name, path, ["footer.data_offset"], 0, digest=digest,
                   description="fixed disk whose footer data offset is 0x200, not all ones "
                               "(a warning: nothing reads it)")


def footer_future_timestamp(directory) -> Sample:
    return _footer_sample(directory, "footer_future_timestamp", ["footer.timestamp"], 0, None,
                          "both footers stamped in 2136 (a warning)", copy=True,
                          timestamp=FUTURE_TIMESTAMP)


def footer_wrong_disk_type(directory) -> Sample:
    return _footer_sample(directory, "footer_wrong_disk_type", ["footer.disk_type"], 2, "yes",
                          "primary footer disk type 6 (reserved)", disk_type=6)


def footer_geometry_too_large(directory) -> Sample:
    from ...formats.vhd.geometry import MAX_GEOMETRY

    return _footer_sample(directory, "footer_geometry_too_large", ["footer.geometry"], 0, None,
                          "both footers carry qemu force_size's 65535/16/255 geometry "
                          "(a warning; vhd-util rejects it)", copy=True, geometry=MAX_GEOMETRY)


def footer_reserved_set(directory) -> Sample:
    reserved = bytearray(427)
    reserved[100] = 0x5A
    return _footer_sample(directory, "footer_reserved_set", ["footer.reserved"], 0, None,
                          "a reserved footer byte set in both footers (a warning)", copy=True,
                          reserved=bytes(reserved))


def footer_null_uuid(directory) -> Sample:
    return _footer_sample(directory, "footer_null_uuid", ["footer.uuid"], 0, None,
                          "both footers carry the null UUID (a warning)", copy=True,
                          uuid=uuid_module.UUID(int=0))


def footer_copy_mismatch(directory) -> Sample:
    return _footer_sample(directory, "footer_copy_mismatch", ["footer.mismatch"], 2, "yes",
                          "the copy at offset 0 has another (valid) timestamp",
                          primary=False, copy=True, timestamp=TIMESTAMP - 3600)


def footer_copy_size_mismatch(directory) -> Sample:
    return _footer_sample(directory, "footer_copy_size_mismatch", ["footer.mismatch"], 2, "force",
                          "the copy at offset 0 says another current size: which is right "
                          "is not obvious, so repair needs --force",
                          primary=False, copy=True, current_size=SIZE - BLOCK)


def footer_copy_stale(directory) -> Sample:
    return _footer_sample(directory, "footer_copy_stale", ["footer.copy_stale"], 0, "yes",
                          "the copy at offset 0 holds an older timestamp and a smaller size: "
                          "a resize interrupted between its two footer writes",
                          primary=False, copy=True, current_size=SIZE - BLOCK,
                          original_size=SIZE - BLOCK, timestamp=TIMESTAMP - 60)


def footer_copy_missing(directory) -> Sample:
    name = "footer_copy_missing"
    path, digest = _dynamic(directory, name)
    _patch(path, 0, bytes(FOOTER_SIZE))
    return _sample(name, path, ["footer_copy.missing"], 2, repair="yes", digest=digest,
                   description="the footer copy at offset 0 zeroed")


def footer_missing_truncated(directory) -> Sample:
    name = "footer_missing_truncated"
    path, digest = _dynamic(directory, name)
    _truncate(path, _size(path) - FOOTER_SIZE)
    return _sample(name, path, ["footer.missing"], 2, repair="yes", digest=digest,
                   description="the last 512 bytes (the footer) cut off")


def footer_missing_zeroed(directory) -> Sample:
    name = "footer_missing_zeroed"
    path, digest = _dynamic(directory, name)
    _patch(path, _footer_offset(path), bytes(FOOTER_SIZE))
    return _sample(name, path, ["footer.missing"], 2, repair="yes", digest=digest,
                   description="the primary footer zeroed")


def footer_killed(directory) -> Sample:
    name = "footer_killed"
    path, digest = _dynamic(directory, name, blktap=True)
    _patch(path, _footer_offset(path), b"\xc7" * FOOTER_SIZE)
    return _sample(name, path, ["footer.killed"], 2, repair="yes", digest=digest,
                   description="blktap image whose primary footer tapdisk 'killed' (0xC7 bytes)")


def footer_legacy_511(directory) -> Sample:
    name = "footer_legacy_511"
    path, digest = _dynamic(directory, name)
    _truncate(path, _size(path) - 1)
    return _sample(name, path, ["footer.legacy"], 0, digest=digest,
                   description="a 511-byte legacy footer (a warning)")


# ---------------------------------------------------------------------------
# damaged images: dynamic header


def _header_sample(directory, name, codes, description, *, repair=None, checksum=True,
                   **changes) -> Sample:
    path, digest = _dynamic(directory, name)
    _rewrite_header(path, checksum=checksum, **changes)
    return _sample(name, path, codes, 2, repair=repair, digest=digest, description=description)


def header_bad_cookie(directory) -> Sample:
    return _header_sample(directory, "header_bad_cookie", ["header.cookie"],
                          "dynamic header cookie 'cxsparsX'", cookie=b"cxsparsX")


def header_bad_checksum(directory) -> Sample:
    name = "header_bad_checksum"
    path, digest = _dynamic(directory, name)
    stored = _read_header(path).checksum
    _patch(path, layout.HEADER_OFFSET + 36, ((stored + 1) & 0xFFFFFFFF).to_bytes(4, "big"))
    return _sample(name, path, ["header.checksum"], 2, repair="yes", digest=digest,
                   description="dynamic header checksum off by one")


def header_wrong_version(directory) -> Sample:
    return _header_sample(directory, "header_wrong_version", ["header.version"],
                          "dynamic header version 2.0", header_version=0x00020000)


def header_table_outside(directory) -> Sample:
    return _header_sample(directory, "header_table_outside", ["header.table_size"],
                          "table offset 256 MiB, past the end of the file",
                          table_offset=256 * MiB)


def header_table_unaligned(directory) -> Sample:
    return _header_sample(directory, "header_table_unaligned", ["header.table_offset"],
                          "table offset 0x604, not sector-aligned",
                          table_offset=layout.TABLE_OFFSET + 4)


def header_block_size_not_pow2(directory) -> Sample:
    return _header_sample(directory, "header_block_size_not_pow2", ["header.block_size"],
                          "block size 3 MiB", block_size=3 * MiB)


def header_block_size_zero(directory) -> Sample:
    return _header_sample(directory, "header_block_size_zero", ["header.block_size"],
                          "block size 0", block_size=0)


def header_block_size_huge(directory) -> Sample:
    return _header_sample(directory, "header_block_size_huge", ["header.block_size"],
                          "block size 2 GiB", block_size=0x80000000)


def header_max_entries_small(directory) -> Sample:
    return _header_sample(directory, "header_max_entries_small", ["header.max_table_entries"],
                          "max table entries 2 for a disk of 4 blocks", max_table_entries=2)


def header_max_entries_absurd(directory) -> Sample:
    return _header_sample(directory, "header_max_entries_absurd", ["header.table_size"],
                          "max table entries 0xFFFFFFFF (a 16 GiB table in a small file)",
                          max_table_entries=0xFFFFFFFF)


def header_parent_fields_on_dynamic(directory) -> Sample:
    name = "header_parent_fields_on_dynamic"
    path, digest = _dynamic(directory, name)
    _rewrite_header(path, parent_uuid=_uuid(name, "parent"),
                    parent_name_raw=encode_parent_name("ghost.vhd"))
    return _sample(name, path, ["header.parent_fields"], 0, digest=digest,
                   description="parent UUID and name set on a dynamic disk (a warning)")


def header_zeroed(directory) -> Sample:
    name = "header_zeroed"
    path, digest = _dynamic(directory, name)
    _patch(path, 512, bytes(1024))
    return _sample(name, path, ["header.cookie"], 2, digest=digest,
                   description="the dynamic header's two sectors zeroed")


# ---------------------------------------------------------------------------
# damaged images: BAT


def _bat_sample(directory, name, codes, description, value_of, *, index=1, repair="force",
                content_kept=False, **build) -> Sample:
    path, digest = _dynamic(directory, name, **build)
    table = _bat(path)
    footer_at = _footer_offset(path)
    _set_bat(path, index, value_of(table, footer_at))
    return _sample(name, path, codes, 2, repair=repair, content_kept=content_kept,
                   digest=digest, description=description)


def bat_entry_zero(directory) -> Sample:
    return _bat_sample(directory, "bat_entry_zero", ["bat.outside"],
                       "BAT entry 1 = 0 (the block would cover the footer copy and header)",
                       lambda table, end: 0)


def bat_entry_into_bat(directory) -> Sample:
    return _bat_sample(directory, "bat_entry_into_bat", ["bat.outside"],
                       "BAT entry 1 points at sector 3, the BAT itself",
                       lambda table, end: 3)


def bat_entry_into_footer(directory) -> Sample:
    return _bat_sample(directory, "bat_entry_into_footer", ["bat.outside"],
                       "BAT entry 1 points at the footer's sector",
                       lambda table, end: end // SECTOR_SIZE)


def bat_entry_past_eof(directory) -> Sample:
    return _bat_sample(directory, "bat_entry_past_eof", ["bat.outside"],
                       "BAT entry 1 points 64 MiB past the end of the file",
                       lambda table, end: (end + 64 * MiB) // SECTOR_SIZE)


def bat_entry_duplicate(directory) -> Sample:
    return _bat_sample(directory, "bat_entry_duplicate", ["bat.overlap"],
                       "BAT entry 1 points at block 0's block", lambda table, end: table[0],
                       repair=None)


def bat_entry_overlap_one_sector(directory) -> Sample:
    span = (BLOCK + SECTOR_SIZE) // SECTOR_SIZE
    return _bat_sample(directory, "bat_entry_overlap_one_sector", ["bat.overlap"],
                       "BAT entry 2 starts one sector before block 0 ends",
                       lambda table, end: int(table[0]) + span - 1, index=2, repair=None)


def bat_last_partial_block(directory) -> Sample:
    return _bat_sample(directory, "bat_last_partial_block", ["bat.outside"],
                       "the entry of the last, partial block points over the footer "
                       "(vhd-util never checks this block)",
                       lambda table, end: end // SECTOR_SIZE, index=3)


def bat_zeroed_sector(directory) -> Sample:
    name = "bat_zeroed_sector"
    path, digest = _dynamic(directory, name)
    _patch(path, layout.TABLE_OFFSET, bytes(SECTOR_SIZE))
    return _sample(name, path, ["bat.outside"], 2, repair="force", content_kept=False,
                   digest=digest, description="the BAT's sector zeroed: every entry says 0")


# ---------------------------------------------------------------------------
# damaged images: batmap


def batmap_bad_checksum(directory) -> Sample:
    name = "batmap_bad_checksum"
    path, digest = _dynamic(directory, name, blktap=True, full_blocks=(0,))
    header_at = layout.table_end(blocks_needed(SIZE, BLOCK))
    _patch(path, header_at + 24, (0x0BADBEEF).to_bytes(4, "big"))
    return _sample(name, path, ["batmap.checksum"], 0, digest=digest,
                   description="blktap batmap whose checksum is wrong (a warning: only a hint)")


def batmap_unallocated_full(directory) -> Sample:
    name = "batmap_unallocated_full"
    path, digest = _dynamic(directory, name, blktap=True, full_blocks=(0,))
    header_at = layout.table_end(blocks_needed(SIZE, BLOCK))
    batmap = Batmap.from_bytes(_read(path, header_at, SECTOR_SIZE), header_offset=header_at)
    map_bytes = bytearray(_read(path, batmap.batmap_offset, batmap.size_bytes))
    map_bytes[0] |= 0x80 >> 1  # block 1 is not allocated
    fixed = batmap.with_map(bytes(map_bytes))
    _patch(path, batmap.batmap_offset, bytes(map_bytes))
    _patch(path, header_at, fixed.to_bytes())
    return _sample(name, path, ["batmap.unallocated"], 2, repair="yes", digest=digest,
                   description="blktap batmap marks unallocated block 1 full (an error: "
                               "vhd-util check refuses it)")


# ---------------------------------------------------------------------------
# damaged images: parent locators and chains


def _locator_sample(directory, name, codes, exit_code, description, change) -> Sample:
    child, parent, digest = _pair(directory, name)
    header = _read_header(child)
    locators = list(header.locators)
    change(locators, child)
    _rewrite_header(child, locators=tuple(locators))
    return _sample(name, child, codes, exit_code, digest=digest, files=(child, parent),
                   description=description)


def locator_unknown_code(directory) -> Sample:
    def change(locators, child):
        locators[1] = dataclasses.replace(locators[1], code=b"Xyzw")

    return _locator_sample(directory, "locator_unknown_code", ["locator.code"], 2,
                           "the MacX locator's platform code changed to 'Xyzw'", change)


def locator_outside_file(directory) -> Sample:
    def change(locators, child):
        locators[1] = dataclasses.replace(locators[1], data_offset=_size(child) + 64 * MiB)

    return _locator_sample(directory, "locator_outside_file", ["locator.offset"], 2,
                           "the MacX locator's data lies 64 MiB past the end of the file", change)


def locator_length_exceeds_space(directory) -> Sample:
    def change(locators, child):
        locators[0] = dataclasses.replace(
            locators[0], data_length=locators[0].space_bytes + 1)

    return _locator_sample(directory, "locator_length_exceeds_space", ["locator.length"], 2,
                           "the W2ru locator's length is one byte more than its space", change)


def locator_duplicate(directory) -> Sample:
    def change(locators, child):
        locators[2] = locators[0]

    return _locator_sample(directory, "locator_duplicate", ["locator.duplicate"], 0,
                           "the W2ru locator entry appears twice (a warning)", change)


def parent_missing(directory) -> Sample:
    name = "parent_missing"
    child, parent, digest = _pair(directory, name)
    parent.unlink()
    return _sample(name, child, ["parent.missing"], 2, digest=None, files=(child,),
                   description="the parent file was deleted")


def parent_uuid_mismatch(directory) -> Sample:
    name = "parent_uuid_mismatch"
    child, parent, _digest = _pair(directory, name)
    build_dynamic(parent, name=name + ".impostor")
    return _sample(name, child, ["parent.uuid"], 2, files=(child, parent),
                   description="the parent file replaced by another image (another UUID)")


def chain_loop(directory) -> Sample:
    """A -> B -> A: found only when the chain is checked (``parents=True``)."""
    name = "chain_loop"
    directory = Path(directory)
    a_path = directory / f"{name}.vhd"
    b_path = directory / f"{name}.parent.vhd"
    a_uuid, b_uuid = _uuid(name, "a"), _uuid(name, "b")
    # B first needs A's UUID, and A needs B's: write a placeholder A, then B, then A.
    build_dynamic(a_path, name=name, uuid=a_uuid)
    build_dynamic(b_path, name=name + ".b", parent=a_path, uuid=b_uuid)
    build_dynamic(a_path, name=name, parent=b_path, uuid=a_uuid)
    return _sample(name, a_path, ["chain.loop"], 2, check_options={"parents": True},
                   files=(a_path, b_path),
                   description="two differencing disks, each the other's parent")


def chain_self_loop(directory) -> Sample:
    name = "chain_self_loop"
    path = Path(directory) / f"{name}.vhd"
    own = _uuid(name)
    build_dynamic(path, name=name)
    build_dynamic(path, name=name, parent=path, parent_uuid=own, locator_name=path.name)
    return _sample(name, path, ["chain.loop"], 2,
                   description="a differencing disk whose locators name itself")


# ---------------------------------------------------------------------------
# damaged images: the file


def trailing_garbage(directory) -> Sample:
    name = "trailing_garbage"
    path, digest = _dynamic(directory, name)
    _patch(path, _size(path), _pattern(name, 99, 1000))
    return _sample(name, path, ["file.trailing_data"], 2, repair="yes", digest=digest,
                   description="1000 bytes appended after the footer")


def trailing_garbage_fixed(directory) -> Sample:
    name = "trailing_garbage_fixed"
    path = build_fixed(Path(directory) / f"{name}.vhd", name=name)
    digest = content_digest(path)
    _patch(path, _size(path), _pattern(name, 99, 4096))
    return _sample(name, path, ["file.trailing_data"], 2, repair="yes", digest=digest,
                   description="4 KiB appended after a fixed disk's footer")


def file_size_unaligned(directory) -> Sample:
    name = "file_size_unaligned"
    path, digest = _dynamic(directory, name)
    footer_at = _footer_offset(path)
    footer = _read(path, footer_at, FOOTER_SIZE)
    _patch(path, footer_at, _pattern(name, 98, 100) + footer)
    return _sample(name, path, ["file.size"], 2, repair="yes", digest=digest,
                   description="100 bytes between the last block and the footer: the file "
                               "size is 100 modulo 512")


def truncated_file(directory) -> Sample:
    name = "truncated_file"
    path, digest = _dynamic(directory, name)
    _truncate(path, _size(path) - FOOTER_SIZE - MiB)
    return _sample(name, path, ["file.truncated", "bat.outside"], 2, repair="force",
                   content_kept=False, digest=digest,
                   description="the file cut 1 MiB into its last block (footer lost)")


def file_too_small(directory) -> Sample:
    path = _write_pieces(Path(directory) / "file_too_small.vhd", 100, [(0, b"conectix")])
    return _sample("file_too_small", path, ["file.too_small"], 2,
                   description="a 100-byte file")


def not_a_vhd(directory) -> Sample:
    name = "not_a_vhd"
    path = _write_pieces(Path(directory) / f"{name}.vhd", 8192, [(0, _pattern(name, 0, 8192))])
    return _sample(name, path, [], 1, description="8 KiB of random bytes: no VHD at all, so "
                   "check refuses it (NotVHDError, exit 1) instead of calling it corrupt")


def data_under_clear_bits(directory) -> Sample:
    name = "data_under_clear_bits"
    path, digest = _dynamic(directory, name)
    table = _bat(path)
    data_at = int(table[2]) * SECTOR_SIZE + SECTOR_SIZE
    _patch(path, data_at + 512 * 1024, _pattern(name, 50, 4096))
    return _sample(name, path, ["data.clear_bitmap"], 0, check_options={"deep": True},
                   digest=digest, description="data written into block 2 where its bitmap "
                                              "bits are clear (found by deep)")


def stale_data_differencing(directory) -> Sample:
    name = "stale_data_differencing"
    child, parent, digest = _pair(directory, name)
    table = _bat(child)
    data_at = int(table[1]) * SECTOR_SIZE + SECTOR_SIZE
    _patch(child, data_at + 1024 * 1024, _pattern(name, 51, 4096))
    return _sample(name, child, ["data.stale"], 0, check_options={"deep": True},
                   digest=digest, files=(child, parent),
                   description="stale bytes under clear bitmap bits of a differencing disk "
                               "(a warning, found by deep)")


def leaked_block(directory) -> Sample:
    """The state a crash leaves between extending the file and writing the BAT."""
    name = "leaked_block"
    path, digest = _dynamic(directory, name)
    footer_at = _footer_offset(path)
    footer = _read(path, footer_at, FOOTER_SIZE)
    span = BLOCK + SECTOR_SIZE
    _patch(path, footer_at, bytes(SECTOR_SIZE))  # the orphan's zeroed bitmap
    _patch(path, footer_at + span, footer)
    return _sample(name, path, ["file.leak"], 3, digest=digest,
                   description="an orphan block between the last block and the footer "
                               "(only leaks: exit 3)")


