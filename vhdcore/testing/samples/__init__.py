"""Small valid and deliberately damaged VHD images, for tests and fuzzing.

Every generator takes a directory, writes one image there (plus a parent
for differencing samples) and returns a :class:`Sample` naming the file,
the problem codes :func:`vhdcore.formats.vhd.check.check` must report for it, the
exit code ``vhdcore check`` must return, and whether ``vhdcore repair``
can fix it. Images are deterministic (fixed UUIDs, timestamps and data
derived from the sample's name; locators hold only relative paths, so the
bytes do not depend on the directory), small (7 MiB virtual, at most three
2 MiB blocks, under 8 MiB of file) and sparse: data is written only where
a pattern goes, everything else is a hole.

:data:`VALID` and :data:`DAMAGED` map names to generators;
:func:`generate` and :func:`generate_all` run them. The damaged set has one
image per rule of :mod:`vhdcore.formats.vhd.check`, so it doubles as a seed corpus for
the fuzzing harness.

Images are built by hand (:func:`build_dynamic`, :func:`build_fixed`)
rather than through :func:`vhdcore.create`, so a sample can take layouts
vhdcore never writes (blktap's batmap and 4 KiB-aligned blocks, relative
``MacX`` locators); damage is then applied as byte patches. All file I/O
goes through :func:`vhdcore.io.imagefile.open_image_file`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List

from .build import (  # noqa: F401 - the names tests and benchmarks use
    BLOCK,
    FUTURE_TIMESTAMP,
    PATTERN_BYTES,
    SIZE,
    TIMESTAMP,
    MiB,
    Sample,
    _bat,
    _bitmap_for,
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
    _round_up,
    _sample,
    _seed,
    _set_bat,
    _size,
    _truncate,
    _uuid,
    _write_pieces,
    build_dynamic,
    build_fixed,
    build_full_dynamic,
    content_digest,
)
from .damaged import (  # noqa: F401
    _bat_sample,
    _footer_sample,
    _header_sample,
    _locator_sample,
    bat_entry_duplicate,
    bat_entry_into_bat,
    bat_entry_into_footer,
    bat_entry_overlap_one_sector,
    bat_entry_past_eof,
    bat_entry_zero,
    bat_last_partial_block,
    bat_zeroed_sector,
    batmap_bad_checksum,
    batmap_unallocated_full,
    chain_loop,
    chain_self_loop,
    data_under_clear_bits,
    file_size_unaligned,
    file_too_small,
    footer_bad_checksum,
    footer_bad_checksum_fixed,
    footer_bad_cookie,
    footer_bad_features,
    footer_copy_mismatch,
    footer_copy_missing,
    footer_copy_size_mismatch,
    footer_copy_stale,
    footer_fixed_data_offset,
    footer_future_timestamp,
    footer_geometry_too_large,
    footer_killed,
    footer_legacy_511,
    footer_missing_truncated,
    footer_missing_zeroed,
    footer_null_uuid,
    footer_reserved_set,
    footer_wrong_disk_type,
    footer_wrong_version,
    header_bad_checksum,
    header_bad_cookie,
    header_block_size_huge,
    header_block_size_not_pow2,
    header_block_size_zero,
    header_max_entries_absurd,
    header_max_entries_small,
    header_parent_fields_on_dynamic,
    header_table_outside,
    header_table_unaligned,
    header_wrong_version,
    header_zeroed,
    leaked_block,
    locator_duplicate,
    locator_length_exceeds_space,
    locator_outside_file,
    locator_unknown_code,
    not_a_vhd,
    parent_missing,
    parent_uuid_mismatch,
    stale_data_differencing,
    trailing_garbage,
    trailing_garbage_fixed,
    truncated_file,
)
from .valid import (  # noqa: F401
    valid_blktap,
    valid_differencing,
    valid_dynamic,
    valid_dynamic_full_last_block,
    valid_fixed,
)

__all__ = [
    "Sample",
    "VALID",
    "DAMAGED",
    "generate",
    "generate_all",
    "build_dynamic",
    "build_fixed",
    "build_full_dynamic",
    "content_digest",
    "SIZE",
    "BLOCK",
    "TIMESTAMP",
]


VALID: Dict[str, Callable[[Path], Sample]] = {
    "valid_dynamic": valid_dynamic,
    "valid_dynamic_full_last_block": valid_dynamic_full_last_block,
    "valid_fixed": valid_fixed,
    "valid_differencing": valid_differencing,
    "valid_blktap": valid_blktap,
}


DAMAGED: Dict[str, Callable[[Path], Sample]] = {
    fn.__name__: fn
    for fn in (
        footer_bad_cookie,
        footer_bad_checksum,
        footer_bad_checksum_fixed,
        footer_wrong_version,
        footer_bad_features,
        footer_fixed_data_offset,
        footer_future_timestamp,
        footer_wrong_disk_type,
        footer_geometry_too_large,
        footer_reserved_set,
        footer_null_uuid,
        footer_copy_mismatch,
        footer_copy_size_mismatch,
        footer_copy_stale,
        footer_copy_missing,
        footer_missing_truncated,
        footer_missing_zeroed,
        footer_killed,
        footer_legacy_511,
        header_bad_cookie,
        header_bad_checksum,
        header_wrong_version,
        header_table_outside,
        header_table_unaligned,
        header_block_size_not_pow2,
        header_block_size_zero,
        header_block_size_huge,
        header_max_entries_small,
        header_max_entries_absurd,
        header_parent_fields_on_dynamic,
        header_zeroed,
        bat_entry_zero,
        bat_entry_into_bat,
        bat_entry_into_footer,
        bat_entry_past_eof,
        bat_entry_duplicate,
        bat_entry_overlap_one_sector,
        bat_last_partial_block,
        bat_zeroed_sector,
        batmap_bad_checksum,
        batmap_unallocated_full,
        locator_unknown_code,
        locator_outside_file,
        locator_length_exceeds_space,
        locator_duplicate,
        parent_missing,
        parent_uuid_mismatch,
        chain_loop,
        chain_self_loop,
        trailing_garbage,
        trailing_garbage_fixed,
        file_size_unaligned,
        truncated_file,
        file_too_small,
        not_a_vhd,
        data_under_clear_bits,
        stale_data_differencing,
        leaked_block,
    )
}


def generate(name: str, directory) -> Sample:
    """Run the generator ``name`` (from :data:`VALID` or :data:`DAMAGED`) in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator = VALID.get(name) or DAMAGED.get(name)
    if generator is None:
        raise KeyError(f"no sample named {name!r}")
    return generator(directory)


def generate_all(directory, which: str = "damaged") -> List[Sample]:
    """Every sample of ``which`` (``"valid"``, ``"damaged"`` or ``"all"``), one directory each."""
    names = {"valid": list(VALID), "damaged": list(DAMAGED), "all": [*VALID, *DAMAGED]}[which]
    return [generate(name, Path(directory) / name) for name in names]
