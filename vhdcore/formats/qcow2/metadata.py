"""The metadata of a new qcow2 image: sized, placed and encoded.

A writer knows, once the data is laid out, which L2 tables exist and how
many references each host cluster has; this module turns that into the L1
table, the L2 tables and the refcount table and blocks (16-bit refcounts).
The refcount blocks must count themselves and the table that points to
them, so their number is found by iterating until it covers everything.
Every cluster from the header to the end of the file is referenced, so the
image has no leaks by construction.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass
from typing import Dict, List

from ...errors import LimitError
from . import constants as C

#: Bytes per refcount (refcount_order 4).
REFCOUNT_BYTES = 2
#: Largest refcount a 16-bit entry holds.
MAX_REFCOUNT = 0xFFFF


def _ceil(value: int, unit: int) -> int:
    return -(-value // unit)


def l2_entries(cluster_size: int) -> int:
    return cluster_size // 8


def l1_size_for(virtual_size: int, cluster_size: int, name: str) -> int:
    """L1 entries a disk of ``virtual_size`` needs.

    Raises:
        LimitError: the table would pass qemu's 32 MiB limit (small clusters).
    """
    size = _ceil(virtual_size, cluster_size * l2_entries(cluster_size))
    if size * 8 > C.MAX_L1_BYTES:
        raise LimitError(
            f"{name}: a {virtual_size}-byte qcow2 with {cluster_size}-byte clusters needs an "
            f"L1 table larger than qemu's {C.MAX_L1_BYTES >> 20} MiB; use larger clusters"
        )
    return size


def refcount_room(other_clusters: int, cluster_size: int, name: str):
    """``(blocks, table_clusters)`` of refcount structure for a file whose other
    clusters number ``other_clusters`` (the refcount clusters count themselves)."""
    per_block = cluster_size // REFCOUNT_BYTES
    blocks = table = 0
    while True:
        total = other_clusters + blocks + table
        need_blocks = _ceil(total, per_block)
        need_table = _ceil(need_blocks * 8, cluster_size)
        if need_blocks <= blocks and need_table <= table:
            break
        blocks, table = max(blocks, need_blocks), max(table, need_table)
    if table * cluster_size > C.MAX_REFTABLE_BYTES:
        raise LimitError(
            f"{name}: the qcow2 refcount table would pass qemu's "
            f"{C.MAX_REFTABLE_BYTES >> 20} MiB limit; use larger clusters"
        )
    return blocks, table


def big_endian(values: array.array) -> bytes:
    """An array's bytes in the file's (big-endian) order."""
    if sys.byteorder == "little":
        values = array.array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


@dataclass
class Placement:
    """Where each metadata structure lies (cluster indices) and the file's end."""

    l2: Dict[int, int]  # L1 index -> host cluster of its L2 table
    l1: int
    l1_clusters: int
    reftable: int
    reftable_clusters: int
    refblocks: int
    refblock_count: int
    end: int  # clusters in the file


def place(order: List[str], start: int, l2_indices: List[int], l1_clusters: int,
          refblocks: int, reftable: int) -> Placement:
    """Lay the structures out from cluster ``start`` in ``order`` (names of
    ``"l2"``, ``"l1"``, ``"reftable"``, ``"refblocks"``)."""
    sizes = {"l2": len(l2_indices), "l1": l1_clusters, "reftable": reftable,
             "refblocks": refblocks}
    at = {}
    position = start
    for name in order:
        at[name] = position
        position += sizes[name]
    l2 = {index: at["l2"] + rank for rank, index in enumerate(sorted(l2_indices))}
    return Placement(l2, at["l1"], l1_clusters, at["reftable"], reftable, at["refblocks"],
                     refblocks, position)


def encode_l1(placement: Placement, l1_size: int, cluster_size: int) -> bytes:
    """The L1 table, padded to its clusters; every L2 table is referenced once."""
    table = array.array("Q", bytes(8 * l1_size))
    for index, cluster in placement.l2.items():
        table[index] = (cluster * cluster_size) | C.COPIED
    data = big_endian(table)
    return data + bytes(placement.l1_clusters * cluster_size - len(data))


def encode_refcounts(refcounts: array.array, placement: Placement, cluster_size: int):
    """``(table, blocks)``: the refcount table and blocks for ``refcounts`` (one
    per host cluster, metadata included)."""
    per_block = cluster_size // REFCOUNT_BYTES
    counts = array.array("H", refcounts)
    counts.frombytes(bytes(REFCOUNT_BYTES * (placement.refblock_count * per_block - len(counts))))
    table = array.array("Q", bytes(placement.reftable_clusters * cluster_size))
    for block in range(placement.refblock_count):
        table[block] = (placement.refblocks + block) * cluster_size
    return big_endian(table), big_endian(counts)
