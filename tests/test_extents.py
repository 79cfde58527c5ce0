"""``VHD.extents`` of a disk without a parent, built from ``bat_extents_array``.

The engine turns the kernel's columns into extents in bulk and clips only
the first and last run (see ``image._runs_into``). These tests rebuild the
expected map from the BAT alone, block by block, and compare it with
``extents`` over unaligned sub-ranges, windows and chain members.
"""

from __future__ import annotations

import numpy as np
import pytest

import vhdcore
from vhdcore.disk.extent import DATA, PARENT, ZERO, Extent, append_extent

BLOCK = 512 * 1024
BLOCKS = 24
UNUSED = 0xFFFFFFFF


def _expected(image, offset, length, state=DATA, depth=0):
    """The map of [offset, offset + length) from the BAT, one block at a time."""
    bitmap_bytes = -(-BLOCK // 512 // 8 // 512) * 512
    out = []
    end = offset + length
    for block, entry in enumerate(image.bat.tolist()):
        start, stop = max(block * BLOCK, offset), min((block + 1) * BLOCK, end)
        if stop <= start:
            continue
        if entry == UNUSED:
            extent = Extent(start, stop - start, ZERO, -1, -1)
        else:
            file_offset = entry * 512 + bitmap_bytes + (start - block * BLOCK)
            extent = Extent(start, stop - start, state, depth, file_offset)
        append_extent(out, extent)
    return out


@pytest.fixture(scope="module")
def fragmented(tmp_path_factory):
    """Blocks written in shuffled order, a third of them never written."""
    path = tmp_path_factory.mktemp("extents") / "frag.vhd"
    rng = np.random.default_rng(3)
    written = [int(b) for b in rng.permutation(BLOCKS) if b % 3]
    with vhdcore.create(path, BLOCKS * BLOCK, block_size=BLOCK) as image:
        for block in written:
            image.write(block * BLOCK + 1000, b"\x5a" * 3000)
    return path


def test_whole_image_map_is_the_bat(fragmented):
    with vhdcore.open(fragmented) as image:
        extents = image.extents()
        assert extents == _expected(image, 0, image.virtual_size)
        assert all(type(e) is Extent for e in extents)
        # One extent per written block (a bitmap separates their data);
        # neighbouring unwritten blocks merge.
        assert sum(e.state == DATA for e in extents) == image.allocated_blocks


def test_unaligned_ranges_clip_the_first_and_last_run(fragmented):
    rng = np.random.default_rng(4)
    with vhdcore.open(fragmented) as image:
        size = image.virtual_size
        cases = [(0, 1), (size - 1, 1), (BLOCK - 1, 2), (BLOCK + 1, BLOCK - 2), (511, 513)]
        for _ in range(200):
            offset = int(rng.integers(0, size))
            cases.append((offset, int(rng.integers(1, size - offset + 1))))
        for offset, length in cases:
            assert image.extents(offset, length) == _expected(image, offset, length), (
                offset,
                length,
            )


def test_windows_continue_each_other(fragmented):
    """Extents asked for window by window merge back into the whole map."""
    with vhdcore.open(fragmented) as image:
        merged = []
        for start in range(0, image.virtual_size, 3 * BLOCK + 4096):
            for extent in image.extents(start, min(3 * BLOCK + 4096, image.virtual_size - start)):
                append_extent(merged, extent)
        assert merged == image.extents()


def test_a_parent_is_mapped_at_its_depth(fragmented):
    child = fragmented.parent / "child.vhd"  # beside its parent, as the chain rules want
    with vhdcore.create(child, parent=fragmented) as image:
        parent = image.parent
        # Nothing written in the child: the whole map is the parent's, at depth 1.
        assert image.extents(777, 5 * BLOCK) == _expected(parent, 777, 5 * BLOCK, PARENT, 1)
