"""The qcow2 format (KVM, OpenStack): its registry entry.

The modules of this package hold the header, the L1/L2 tables, the
snapshot table, the image object and the writer conversion uses
(:mod:`.writer`); this module imports none of them until asked, so
detection stays cheap.
"""

from __future__ import annotations

from .. import Format
from .constants import MAGIC, MAX_CLUSTER_BITS, MAX_VIRTUAL_SIZE, MIN_CLUSTER_BITS

#: Virtual sizes are whole sectors: qemu counts a disk in 512-byte sectors
#: and would drop a partial last one.
SECTOR = 512


def detect(file) -> bool:
    """Whether an open ImageFile starts with the qcow2 magic.

    qcow version 1 shares the magic and is left to the probe, which names
    it; any other version is qcow2's, refused by name when opened.
    """
    if file.size() < 8:
        return False
    head = file.pread(0, 8, "qcow2 magic")
    return head[:4] == MAGIC and head[4:8] != b"\0\0\0\1"


def open(path, **options):  # noqa: A001 - the registry's verb
    """Open a qcow2 image read-only, with its backing chain and external data file."""
    from .image import open as open_image

    return open_image(path, **options)


def describe(path, warn=None, **options) -> dict:
    """What ``vhdcore info`` reports of a qcow2 (:mod:`vhdcore.formats.qcow2.info`)."""
    from .image import open as open_image
    from .info import describe as describe_disk

    with open_image(path, **options) as disk:
        return describe_disk(disk)


def check_image(path, parents=False, deep=False, **options):
    """``vhdcore check`` for a qcow2 (:mod:`vhdcore.formats.qcow2.check`): refcounts
    against uses. ``parents`` and ``deep`` are VHD's; the backing chain is
    not walked (as ``qemu-img check`` checks one image)."""
    from .check import check

    return check(path)


def writer(subformat: str, out, *, source=None, cluster_size=None, compress=False,
           uuid=None, timestamp=None):
    """A qcow2 sink (:class:`~vhdcore.formats.qcow2.writer.Qcow2Writer`).

    On a stream the tables lead the data, so a first pass over ``source``
    (which must be seekable) finds the clusters holding data. Compressed
    output is refused there: its layout depends on sizes known only after
    deflating every cluster. ``uuid`` and ``timestamp`` have no place in
    qcow2 and are ignored.
    """
    from ...disk.writers import plan_blocks
    from ...errors import ConversionError
    from .writer import DEFAULT_CLUSTER_SIZE, Qcow2Writer

    cluster_size = cluster_size or DEFAULT_CLUSTER_SIZE
    plan = None
    if getattr(out, "is_stream", False):
        if compress:
            raise ConversionError(
                "compressed qcow2 cannot be streamed to stdout: its tables come first and "
                "depend on every cluster's compressed size; write to a file, or drop -c"
            )
        if source is None or not source.seekable:
            raise ConversionError(
                "qcow2 on stdout needs a first pass over the source to lay out its tables, "
                "and stdin is a pipe: write to a file, or use -O raw"
            )
        plan = plan_blocks(source, cluster_size, bytearray(min(max(cluster_size, 4 << 20),
                                                               8 << 20)))
    return Qcow2Writer(out, cluster_size, compress=bool(compress), plan=plan)


def check_options(subformat, options, dst, notes, **_targets):
    """The cluster size checked (a power of two, 512 B to 2 MiB) and defaulted."""
    from ...errors import ArgumentLimitError
    from .writer import DEFAULT_CLUSTER_SIZE

    options = dict(options)
    size = options.get("cluster_size") or DEFAULT_CLUSTER_SIZE
    if not 1 << MIN_CLUSTER_BITS <= size <= 1 << MAX_CLUSTER_BITS or size & (size - 1):
        raise ArgumentLimitError(
            f"{dst}: qcow2 cluster size {size} is not a power of two from 512 to 2097152 "
            f"(512 B to 2 MiB)"
        )
    options["cluster_size"] = size
    return options


def output_size(source_size, subformat, notes, **_targets):
    """The source size rounded up to a whole sector (noted), within qcow2's limit."""
    from ...errors import LimitError

    size = -(-source_size // SECTOR) * SECTOR
    if size > MAX_VIRTUAL_SIZE:
        raise LimitError(
            f"a qcow2 image holds at most {MAX_VIRTUAL_SIZE} bytes; the source has {source_size}"
        )
    if size != source_size:
        notes.append(f"virtual size padded from {source_size} to {size} bytes (a whole sector)")
    return size


FORMAT = Format(
    name="qcow2",
    description="qcow2 (QEMU, KVM, OpenStack)",
    detect=detect,
    open=open,
    writer=writer,
    subformats=("qcow2",),
    default_subformat="qcow2",
    extensions=(".qcow2",),
    describe=describe,
    check=check_image,
    max_size={"qcow2": MAX_VIRTUAL_SIZE},
    options={"qcow2": ("cluster_size", "compress")},
    check_options=check_options,
    output_size=output_size,
)
