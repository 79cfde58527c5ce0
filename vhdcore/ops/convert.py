"""The conversion engine: any input vhdcore reads to raw, VHD (fixed, dynamic) or qcow2.

One pass over the source (:mod:`vhdcore.disk.sources`) in virtual order feeds an
output writer (:mod:`vhdcore.disk.writers`), and optionally a SHA-256 of the
virtual contents (:mod:`vhdcore.ops.digest`) and a progress meter. What makes
it fast is what it does not do: holes of a sparse raw file and unallocated
blocks of a VHD chain are never read; every piece that is read goes
through the zero-detection kernels, and all-zero stretches are not written
(holes in raw and fixed output, unallocated blocks and holes inside the
allocated ones in dynamic output); one preallocated buffer serves the
whole run. Every data piece is read and checked: copying pieces file to
file (``copy_file_range``) once saved a read, but stored each piece whole,
zero stretches and all, and measured no faster once dynamic output stopped
reserving space ahead of its writes.

Safety. The output is built by :func:`vhdcore.io.atomic.new_file`: a
temporary file beside the destination (``.NAME.vhdcore-tmp-XXXXXXXX``),
fsynced, and only then moved into place, the directory fsynced after. Any exception, ``KeyboardInterrupt``
or SIGTERM (the CLI turns it into an exception) removes the temporary file,
so a failed conversion never leaves a destination. SIGKILL (or a power
loss) can leave the temporary file behind, never a destination: the
temporary file is held under an exclusive ``flock`` while it is written, so
the next conversion to the same destination removes any such leftover it
can lock (a live conversion's file is locked and left alone). An existing
destination is refused unless ``force``; without ``force`` the final step
is a hard link, which fails rather than replace a file created meanwhile.
The source (every file of a differencing chain) is opened read-only and
may not be the destination.

Streams. ``dst="-"`` writes to stdout: raw and fixed always; dynamic and
qcow2 after a pre-pass that finds the allocated blocks (clusters) so the
tables can lead the stream (that needs a seekable source; compressed
qcow2 is refused there). ``src="-"`` reads stdin: a regular file
redirected to stdin is read like any file; a pipe is raw data of unknown
length, fine for any output to a file and for raw or fixed to stdout.
Output written to stdout cannot be taken back: a failure part-way leaves a
truncated stream and a non-zero exit status.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

from .. import formats as registry
from ..disk.prefetch import Prefetch
from ..disk.sources import STDIO, as_source
from ..errors import (
    ConversionError,
    LimitError,
    UnsupportedError,
)
from ..io import atomic
from ..io.atomic import remove_stale_temps
from ..io.rawfile import StreamWriter
from ..progress import Progress
from .digest import Hasher

#: Bytes read per step for raw and fixed output.
CHUNK = 4 << 20
#: Largest buffer used, whatever the block size (keeps memory flat).
MAX_BUFFER = 8 << 20
#: Buffers in the read-ahead ring (memory: up to 4 x 8 MiB).
PREFETCH_BUFFERS = 4


@dataclass
class ConversionResult:
    """What a conversion did. ``to_dict()`` gives the ``--json`` report.

    Attributes:
        source, destination: as given (``"-"`` for stdin/stdout).
        input_format: ``"raw"`` or ``"vhd"``; input_type adds the VHD type
            (``fixed``/``dynamic``/``differencing``) or ``stream``.
        output_format: ``"raw"``, ``"fixed"`` or ``"dynamic"``.
        source_size: virtual bytes of the source.
        virtual_size: virtual bytes of the output (the source size rounded
            up to a sector for VHD, to a MiB for ``azure``).
        bytes_read: bytes read from the source (data runs only).
        bytes_unread: zero runs skipped without reading (holes, unallocated).
        bytes_written: disk bytes stored as data in the output: the
            non-zero stretches written (zero stretches of 4 KiB or more,
            disk-aligned, are left out, inside dynamic blocks too).
        bytes_zero: virtual bytes of the output not stored as data
            (``virtual_size - bytes_written``).
        output_size: length of the output file or stream.
        disk_usage: what the output file occupies on its file system
            (``st_blocks * 512``, what ``du`` shows): the data written plus
            the metadata, rounded to the file system's blocks; ``None`` for
            stdout.
        blocks_allocated, block_size: dynamic output only.
        digest: SHA-256 of the output's virtual contents, when asked.
        source_digest: SHA-256 of the source's; differs from ``digest`` only
            when the size was rounded up.
        seconds: wall time.
        notes: things the user should know (rounding, tool limits).
    """

    source: str
    destination: str
    input_format: str
    input_type: str
    output_format: str
    source_size: int = 0
    virtual_size: int = 0
    bytes_read: int = 0
    bytes_unread: int = 0
    bytes_written: int = 0
    bytes_zero: int = 0
    output_size: int = 0
    disk_usage: Optional[int] = None
    blocks_allocated: Optional[int] = None
    block_size: Optional[int] = None
    digest: Optional[str] = None
    source_digest: Optional[str] = None
    seconds: float = 0.0
    notes: List[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Virtual bytes per second."""
        return self.virtual_size / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["seconds"] = round(self.seconds, 6)
        data["throughput"] = round(self.throughput)
        return data

    def __getitem__(self, key):
        return self.to_dict()[key]


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def resolve_output(dst, out_format: Optional[str], azure: bool = False, xen: bool = False):
    """``(format, subformat)`` to write: as asked, as ``--azure``/``--xen`` imply,
    from DST's suffix, or raw; all from the registry.

    Raises:
        UnsupportedError: an unknown output name, or one that contradicts
            ``azure`` or ``xen``.
    """
    targets = [name for name, asked in (("azure", azure), ("xen", xen)) if asked]
    fmt = subformat = None
    if out_format is not None:
        fmt, subformat = registry.output(out_format)
    elif targets:
        fmt = next(f for f in registry.formats() if targets[0] in f.targets)
    elif dst != STDIO:
        found = registry.output_for_path(os.fspath(dst))
        if found is not None:
            fmt, subformat = found
    if fmt is None:
        fmt, subformat = registry.output("raw")
    for target in targets:
        if target not in fmt.targets:
            raise UnsupportedError(
                f"--{target} writes a {fmt_names(target)}, not {subformat}"
            )
    if targets and fmt.name == "vhd":
        from ..formats.vhd.output import subformat_for_target

        asked = subformat if out_format is not None else None
        subformat = subformat_for_target(asked, azure, xen) or subformat
    return fmt, subformat


def fmt_names(target: str) -> str:
    """What a target flag writes, for messages (the formats that take it)."""
    names = [f.name.upper() for f in registry.formats() if target in f.targets]
    subformats = [s for f in registry.formats() if target in f.targets for s in f.subformats]
    return f"{' or '.join(names)} ({' or '.join(subformats)})"


def output_format_for(dst, out_format: Optional[str], azure: bool, xen: bool = False) -> str:
    """The subformat :func:`resolve_output` chooses (``raw``, ``fixed``, ``dynamic``, ...)."""
    return resolve_output(dst, out_format, azure, xen)[1]


def _output_size(source_size: int, subformat: str, azure: bool, notes: List[str],
                 xen: bool = False, fmt=None) -> int:
    """The output's virtual size, by the format's rules, with their notes."""
    if fmt is None:
        fmt = registry.output(subformat)[0]
    if fmt.output_size is not None:
        targets = {name: value for name, value in (("azure", azure), ("xen", xen)) if value}
        return fmt.output_size(source_size, subformat, notes, **targets)
    limit = fmt.max_size.get(subformat)
    if limit is not None and source_size > limit:
        raise LimitError(
            f"a {subformat} image may hold at most {limit} bytes; the source has {source_size}"
        )
    return source_size


def writer_options(fmt, subformat: str, options: dict, dst, notes: List[str],
                   targets: Optional[dict] = None) -> dict:
    """The user's subformat options the writer takes; the others are noted and dropped.

    ``targets`` (``{"xen": True}``) are checked by the format with the options.
    """
    accepted = fmt.options.get(subformat, ())
    kept = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in accepted:
            kept[name] = value
            continue
        takers = [s for f in registry.formats() for s, names in f.options.items() if name in names]
        where = f"{' and '.join(takers)} output only" if takers else "no output format"
        notes.append(f"--{name.replace('_', '-')} applies to {where}; ignored for {subformat}")
    if fmt.check_options is not None:
        kept = fmt.check_options(subformat, kept, dst, notes, **(targets or {}))
    return kept


def _check_destination(dst: str, source, force: bool) -> None:
    if dst == STDIO:
        if sys.stdout.isatty():
            raise ConversionError("refusing to write a disk image to a terminal; redirect stdout")
        return
    if not os.path.lexists(dst):
        return
    for member in source.files:
        try:
            same = os.path.samefile(member, dst)
        except OSError:
            same = False
        if same:
            what = (
                "the source"
                if member == source.files[0]
                else f"part of the source chain ({member})"
            )
            raise ConversionError(f"{dst}: destination is {what}; choose another file")
    if not force:
        raise ConversionError(f"{dst}: destination exists; use --force to replace it")
    if not os.path.isfile(dst) or os.path.islink(dst):
        what = "a directory" if os.path.isdir(dst) and not os.path.islink(dst) else (
            "not a regular file")
        raise ConversionError(f"{dst}: destination is {what}; refusing to replace it")


def _appeared(dst: str):
    return lambda: ConversionError(
        f"{dst}: destination appeared during the conversion; use --force to replace it"
    )


def convert(
    src,
    dst,
    *,
    src_format: Optional[str] = None,
    out_format: Optional[str] = None,
    block_size: Optional[int] = None,
    cluster_size: Optional[int] = None,
    compress: bool = False,
    azure: bool = False,
    xen: bool = False,
    force: bool = False,
    digest: bool = False,
    progress=False,
    fsync: bool = True,
    uuid=None,
    timestamp: Optional[int] = None,
    open_options: Optional[dict] = None,
    options: Optional[dict] = None,
    readers: int = 1,
) -> ConversionResult:
    """Convert a disk image.

    Args:
        src: a path (raw, or any VHD: fixed, dynamic, differencing with its
            whole chain), ``"-"`` for stdin, an open
            :class:`vhdcore.formats.vhd.image.VHD`, or a :class:`vhdcore.disk.sources.Source`.
        dst: the output path, or ``"-"`` for stdout.
        src_format: ``"raw"`` or ``"vhd"`` (or qemu's ``"vpc"``); detected
            from the footer when ``None``, refusing other formats (qcow2,
            VHDX, VMDK, VDI, QED) by their magic (``"raw"`` never probes).
        out_format: ``"raw"``, ``"fixed"``, ``"dynamic"`` or ``"qcow2"``; by
            default ``fixed`` for ``azure``, ``dynamic`` when ``dst`` ends in
            ``.vhd``, ``qcow2`` when it ends in ``.qcow2``, else ``raw``.
        block_size: dynamic output block size (default 2 MiB): a power of
            two from 4 KiB (qemu misreads smaller blocks) to 256 MiB; sizes
            other than 512 KiB and 2 MiB get a note.
        cluster_size: qcow2 output cluster size (default 64 KiB): a power of
            two from 512 B to 2 MiB.
        compress: qcow2 output: deflate the clusters (to a file only).
        azure: a fixed VHD Azure accepts: size rounded up to a whole MiB
            (noted), at most 32 TiB.
        xen: a VHD that Xen / XCP-ng's blktap takes for its own (so
            ``vhd-util resize`` accepts it): creator ``tap``, 2 MiB blocks
            only, blktap's batmap and block placement, the batmap bit of
            every block written set (see :mod:`vhdcore.formats.vhd.xen`); the size
            rounded up to a whole 2 MiB block (noted), as blktap sizes its
            disks; dynamic unless ``out_format`` says ``fixed``.
        force: replace an existing ``dst``.
        digest: compute the SHA-256 of the virtual contents in the same pass.
        progress: ``True`` for a meter on stderr, or a
            :class:`vhdcore.progress.Progress`.
        fsync: make the output durable before it is renamed into place
            (turn off only when something else will sync it).
        uuid, timestamp: the output footer's identity (random and now by
            default), for reproducible outputs.
        open_options: keyword arguments for :func:`vhdcore.open` of a VHD
            source (its chain policy: ``allow_parent_dirs``,
            ``allow_symlinks``, ``max_chain_depth``).
        options: the output format's own options (``-o`` in qemu-img), by
            the names its registry entry lists; one it does not take is
            ignored with a note.
        readers: source reads kept in flight at once (threads issuing
            positional reads, which release the GIL); 1 is one read-ahead
            thread. More pays on disks and network storage that serve
            several requests at once, not from the page cache.

    Returns:
        A :class:`ConversionResult`.

    Raises:
        ConversionError: refused (existing or same destination, a stream
            that cannot be streamed) or failed; no destination was created.
        LimitError: the disk is too large for the output format.
        VHDError: the source is not a usable image.
        ForeignFormatError: the source is another format's image.
        StorageError: a file could not be read or written (a full disk,
            ...); the message names the destination, not its temporary file.
    """
    started = time.monotonic()
    fmt, subformat = resolve_output(dst, out_format, azure, xen)
    notes: List[str] = []
    targets = {name: True for name, asked in (("azure", azure), ("xen", xen)) if asked}
    chosen = writer_options(
        fmt,
        subformat,
        {"block_size": block_size, "cluster_size": cluster_size, "compress": compress or None,
         **(options or {})},
        dst,
        notes,
        targets,
    )
    dst = os.fspath(dst) if dst != STDIO else STDIO

    source, owned = as_source(src, src_format, open_options)
    try:
        notes.extend(source.notes)
        _check_destination(dst, source, force)
        to_stream = dst == STDIO
        source_size = source.virtual_size
        out_size = None
        if source_size is not None:
            out_size = _output_size(source_size, subformat, azure, notes, xen, fmt)
        result = ConversionResult(
            source=source.name,
            destination=dst,
            input_format=source.format,
            input_type=source.kind,
            output_format=subformat,
            block_size=chosen.get("block_size"),
        )
        job = _Job(
            fmt=fmt,
            subformat=subformat,
            options={**chosen, **targets},
            targets=targets,
            digest=digest,
            uuid=uuid,
            timestamp=timestamp,
            out_size=out_size,
            notes=notes,
            readers=readers,
            meter=progress
            if isinstance(progress, Progress)
            else Progress(out_size, label=subformat, enabled=bool(progress)),
        )
        if to_stream:
            try:
                sys.stdout.flush()  # nothing buffered may land inside the image
            except (AttributeError, ValueError):
                pass
            _run(source, StreamWriter(sys.stdout.fileno()), job, result)
        else:
            for stale in atomic.remove_stale_temps(dst):
                notes.append(f"removed {stale}, left by an interrupted conversion")
            job.write_behind = fsync
            with atomic.new_file(dst, replace=force, exists=_appeared(dst),
                                 durable=fsync) as out:
                _run(source, out, job, result)
                if fsync:
                    out.flush()  # before measuring: delayed allocation settles
                result.disk_usage = os.fstat(out.fd).st_blocks * 512
    finally:
        if owned:
            source.close()
    result.notes = notes
    result.seconds = time.monotonic() - started
    return result


@dataclass
class _Job:
    """What :func:`_run` needs to know besides the source and the output."""

    fmt: object  # the registry's Format
    subformat: str
    options: dict  # for the writer: its checked options and the target flags
    targets: dict
    digest: bool
    uuid: object
    timestamp: Optional[int]
    out_size: Optional[int]
    notes: List[str]
    meter: Progress
    readers: int = 1
    write_behind: bool = False


def _run(source, out, job: _Job, result: ConversionResult) -> None:
    """The pass itself: read ``source`` in order and feed the sink, hash and meter."""
    out_size = job.out_size
    writer = job.fmt.writer(
        job.subformat, out, source=source, uuid=job.uuid, timestamp=job.timestamp,
        **job.options,
    )
    unit = writer.unit
    buffer_size = min(max(unit, CHUNK), MAX_BUFFER)
    if job.write_behind:
        writer.write_behind()
    writer.begin(out_size)
    hasher = Hasher() if job.digest else None
    read = unread = 0
    data, update = writer.data, job.meter.update
    # The reader thread reads ahead (and hashes); this one checks for zeros
    # and writes, so reads, hashing and writes overlap.
    with Prefetch(source, unit, buffer_size, PREFETCH_BUFFERS, hasher, job.readers) as pieces:
        for offset, length, view in pieces:
            if view is None:  # known zeros: holes on files, padding on streams
                unread += length
            else:
                read += length
                data(offset, view)
            update(offset + length)
    source_size = source.virtual_size
    if out_size is None:  # a stream: the size is known only now
        out_size = _output_size(source_size, job.subformat, job.targets.get("azure", False),
                                job.notes, job.targets.get("xen", False), job.fmt)
    result.output_size = writer.finish(out_size)
    job.meter.update(out_size)
    job.meter.finish()
    result.source_size = source_size
    result.virtual_size = out_size
    result.bytes_read = read
    result.bytes_unread = unread
    result.bytes_written = writer.bytes_written
    result.bytes_zero = out_size - writer.bytes_written
    result.blocks_allocated = getattr(writer, "blocks_allocated", None)
    if hasher is not None:
        result.source_digest = hasher.hexdigest()
        if out_size > source_size:
            hasher.zeros(out_size - source_size)
        result.digest = hasher.hexdigest()


__all__ = [
    "ConversionResult",
    "convert",
    "output_format_for",
    "remove_stale_temps",
    "resolve_output",
]
