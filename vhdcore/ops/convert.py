"""The conversion engine: any raw or VHD input to raw, fixed or dynamic output.

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

Safety. The output is built in a temporary file beside the destination
(``.NAME.vhdcore-tmp-XXXXXXXX``, same directory, so the final rename
cannot cross file systems), fsynced, and only then moved into place; the
directory is fsynced after the rename. Any exception, ``KeyboardInterrupt``
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

Streams. ``dst="-"`` writes to stdout: raw and fixed always; dynamic after
a pre-pass that finds the allocated blocks so the BAT can lead the stream
(that needs a seekable source). ``src="-"`` reads stdin: a regular file
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

from ..disk.sources import STDIO, Prefetch, as_source
from ..disk.writers import make_writer, plan_blocks
from ..errors import (
    ConversionError,
    LimitError,
    LockedError,
    UnsupportedError,
    storage_error,
)
from ..formats.vhd.blocksize import check_new_block_size
from ..formats.vhd.constants import (
    DEFAULT_BLOCK_SIZE,
    MAX_DYNAMIC_SIZE,
    MAX_FIXED_SIZE,
    SECTOR_SIZE,
)
from ..io.imagefile import open_image_file
from ..io.rawfile import StreamWriter
from ..progress import Progress
from ..sizes import format_size
from .digest import Hasher

OUTPUT_FORMATS = ("raw", "fixed", "dynamic")
#: Names accepted for ``out_format`` besides the three formats.
OUTPUT_ALIASES = {"vhd": "dynamic", "vpc": "dynamic"}

MIB = 1 << 20
#: Azure's largest fixed disk (managed disks and page-blob uploads): 32 TiB.
AZURE_MAX_SIZE = 32 << 40
#: Azure's smallest managed disk upload (20 MiB); smaller images get a note.
AZURE_MIN_SIZE = 20 << 20
#: qemu (and Hyper-V OS disks) refuse any VHD larger than this.
QEMU_MAX_SIZE = MAX_DYNAMIC_SIZE

#: Bytes read per step for raw and fixed output.
CHUNK = 4 << 20
#: Largest buffer used, whatever the block size (keeps memory flat).
MAX_BUFFER = 8 << 20
#: Buffers in the read-ahead ring (memory: up to 4 x 8 MiB).
PREFETCH_BUFFERS = 4
TEMP_MARK = ".vhdcore-tmp-"
#: A leftover temporary file younger than this is never removed, even when
#: unlocked: its writer may be between creating and locking it.
STALE_AFTER = 5.0


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


def output_format_for(dst, out_format: Optional[str], azure: bool, xen: bool = False) -> str:
    """The output format: explicit, or ``fixed`` for Azure, ``dynamic`` for Xen,
    or from DST's extension.

    Raises:
        UnsupportedError: an unknown format, or one that contradicts ``azure``
            or ``xen``.
    """
    if azure and xen:
        raise UnsupportedError("--azure and --xen ask for different creators; choose one")
    if xen and out_format is not None:
        chosen = OUTPUT_ALIASES.get(out_format, out_format)
        if chosen == "raw":
            raise UnsupportedError("--xen writes a VHD (dynamic or fixed), not raw")
    if out_format is not None:
        chosen = OUTPUT_ALIASES.get(out_format, out_format)
        if chosen not in OUTPUT_FORMATS:
            raise UnsupportedError(
                f"unknown output format {out_format!r}: use raw, fixed or dynamic"
            )
        if azure and chosen != "fixed":
            raise UnsupportedError(f"--azure writes a fixed VHD, not {chosen}")
        return chosen
    if azure:
        return "fixed"
    if xen:
        return "dynamic"
    if dst != STDIO and os.fspath(dst).lower().endswith(".vhd"):
        return "dynamic"
    return "raw"


def _output_size(source_size: int, out_format: str, azure: bool, notes: List[str],
                 xen: bool = False) -> int:
    """The output's virtual size, with the notes and limits that go with it."""
    if out_format == "raw":
        return source_size
    if source_size == 0 and not azure:
        raise ConversionError("the source is empty (0 bytes): there is no disk to put in a VHD")
    if azure:
        if source_size > AZURE_MAX_SIZE:
            raise LimitError(
                f"the source is {format_size(source_size)} ({source_size} bytes); Azure's "
                f"largest fixed disk is {format_size(AZURE_MAX_SIZE)} ({AZURE_MAX_SIZE} bytes)"
            )
        size = _round_up(max(source_size, 1), MIB)
        if size != source_size:
            notes.append(
                f"virtual size rounded up from {source_size} to {size} bytes "
                f"({format_size(size)}), a whole MiB as Azure requires"
            )
        if size < AZURE_MIN_SIZE:
            notes.append(f"Azure managed disks are at least {format_size(AZURE_MIN_SIZE)}")
    elif xen:
        from ..formats.vhd.xen import XEN_BLOCK_SIZE

        size = _round_up(source_size, XEN_BLOCK_SIZE)
        if size != source_size:
            notes.append(
                f"virtual size rounded up from {source_size} to {size} bytes "
                f"({format_size(size)}), a whole 2 MiB block as blktap makes them"
            )
    else:
        size = _round_up(source_size, SECTOR_SIZE)
        if size != source_size:
            notes.append(f"virtual size padded from {source_size} to {size} bytes (a whole sector)")
    if out_format == "dynamic" and size > MAX_DYNAMIC_SIZE:
        raise LimitError(
            f"a dynamic VHD may hold at most {MAX_DYNAMIC_SIZE} bytes (2040 GiB); the source "
            f"has {size}: convert to fixed or raw instead"
        )
    limit = AZURE_MAX_SIZE if azure else MAX_FIXED_SIZE
    if out_format == "fixed" and size > limit:
        raise LimitError(f"a fixed VHD is limited to {limit} bytes here; the source has {size}")
    if out_format == "fixed" and size > QEMU_MAX_SIZE:
        notes.append(
            "fixed VHD larger than 2040 GiB: Azure accepts it, but qemu-img and "
            "Hyper-V OS disks will not open it"
        )
    return size


def _temp_name(dst: str) -> str:
    directory, name = os.path.split(os.path.abspath(dst))
    return os.path.join(directory, f".{name}{TEMP_MARK}{os.urandom(4).hex()}")


def remove_stale_temps(dst: str) -> List[str]:
    """Delete leftovers of killed conversions to ``dst``; returns their names.

    A leftover is a ``.NAME.vhdcore-tmp-*`` file beside ``dst`` that nobody
    holds locked and that is older than :data:`STALE_AFTER` seconds.
    """
    directory, name = os.path.split(os.path.abspath(dst))
    prefix = f".{name}{TEMP_MARK}"
    removed = []
    try:
        names = [entry.name for entry in os.scandir(directory) if entry.name.startswith(prefix)]
    except OSError:
        return removed
    for leftover in names:
        path = os.path.join(directory, leftover)
        try:
            if time.time() - os.lstat(path).st_mtime < STALE_AFTER:
                continue
            handle = open_image_file(path, writable=True)
        except (LockedError, OSError):
            continue  # a live conversion holds it, or it is already gone
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
        finally:
            handle.close()
    return removed


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


def _place(tmp: str, dst: str, force: bool, durable: bool = True) -> None:
    """Move the finished temporary file to ``dst``; ``durable`` fsyncs the directory."""
    try:
        if force:
            os.replace(tmp, dst)
        else:
            try:
                os.link(tmp, dst)
            except FileExistsError:
                raise ConversionError(
                    f"{dst}: destination appeared during the conversion; use --force to replace it"
                ) from None
            os.unlink(tmp)
    except OSError as exc:
        raise storage_error(exc, dst, "cannot put the finished image in place") from exc
    if not durable:
        return
    directory = os.path.dirname(os.path.abspath(dst))
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - a directory we cannot open
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def convert(
    src,
    dst,
    *,
    src_format: Optional[str] = None,
    out_format: Optional[str] = None,
    block_size: Optional[int] = None,
    azure: bool = False,
    xen: bool = False,
    force: bool = False,
    digest: bool = False,
    progress=False,
    fsync: bool = True,
    uuid=None,
    timestamp: Optional[int] = None,
    open_options: Optional[dict] = None,
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
        out_format: ``"raw"``, ``"fixed"`` or ``"dynamic"``; by default
            ``fixed`` for ``azure``, ``dynamic`` when ``dst`` ends in
            ``.vhd``, else ``raw``.
        block_size: dynamic output block size (default 2 MiB): a power of
            two from 4 KiB (qemu misreads smaller blocks) to 256 MiB; sizes
            other than 512 KiB and 2 MiB get a note.
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
    fmt = output_format_for(dst, out_format, azure, xen)
    notes: List[str] = []
    if fmt == "dynamic":
        block_size = DEFAULT_BLOCK_SIZE if block_size is None else block_size
        if xen:
            from ..formats.vhd.xen import check_block_size

            check_block_size(block_size, os.fspath(dst))
        note = check_new_block_size(block_size)
        if note is not None:
            notes.append(note)
    elif block_size is not None:
        notes.append(f"--block-size applies to dynamic output only; ignored for {fmt}")
        block_size = None
    dst = os.fspath(dst) if dst != STDIO else STDIO

    source, owned = as_source(src, src_format, open_options)
    try:
        notes.extend(source.notes)
        _check_destination(dst, source, force)
        to_stream = dst == STDIO
        source_size = source.virtual_size
        out_size = None
        if source_size is not None:
            out_size = _output_size(source_size, fmt, azure, notes, xen)
        if to_stream and fmt == "dynamic" and not source.seekable:
            raise ConversionError(
                "a dynamic VHD on stdout needs a first pass over the source to lay out its "
                "block table, and stdin is a pipe: write to a file, or use -O fixed or raw"
            )
        result = ConversionResult(
            source=source.name,
            destination=dst,
            input_format=source.format,
            input_type=source.kind,
            output_format=fmt,
            block_size=block_size,
        )
        job = _Job(
            fmt=fmt,
            block_size=block_size,
            azure=azure,
            xen=xen,
            digest=digest,
            uuid=uuid,
            timestamp=timestamp,
            out_size=out_size,
            notes=notes,
            meter=progress
            if isinstance(progress, Progress)
            else Progress(out_size, label=fmt, enabled=bool(progress)),
        )
        if to_stream:
            try:
                sys.stdout.flush()  # nothing buffered may land inside the image
            except (AttributeError, ValueError):
                pass
            _run(source, StreamWriter(sys.stdout.fileno()), job, result)
        else:
            for stale in remove_stale_temps(dst):
                notes.append(f"removed {stale}, left by an interrupted conversion")
            tmp = _temp_name(dst)
            # Errors name dst: the temporary file is ours, not the user's.
            out = open_image_file(tmp, writable=True, create=True, name=dst)
            try:
                job.write_behind = fsync
                _run(source, out, job, result)
                if fsync:
                    out.flush()
                result.disk_usage = os.fstat(out.fd).st_blocks * 512
                out.close()
                _place(tmp, dst, force, durable=fsync)
            except BaseException:
                out.close()
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
    finally:
        if owned:
            source.close()
    result.notes = notes
    result.seconds = time.monotonic() - started
    return result


@dataclass
class _Job:
    """What :func:`_run` needs to know besides the source and the output."""

    fmt: str
    block_size: Optional[int]
    azure: bool
    digest: bool
    uuid: object
    timestamp: Optional[int]
    out_size: Optional[int]
    notes: List[str]
    meter: Progress
    write_behind: bool = False
    xen: bool = False


def _run(source, out, job: _Job, result: ConversionResult) -> None:
    """The pass itself: read ``source`` in order and feed the writer, hash and meter."""
    fmt, block_size, out_size = job.fmt, job.block_size, job.out_size
    unit = block_size if fmt == "dynamic" else CHUNK
    buffer_size = min(max(unit, CHUNK), MAX_BUFFER)
    plan = None
    if fmt == "dynamic" and getattr(out, "is_stream", False):
        plan = plan_blocks(source, block_size, bytearray(buffer_size))
    writer = make_writer(
        fmt,
        out,
        block_size=block_size or DEFAULT_BLOCK_SIZE,
        plan=plan,
        max_fixed_size=AZURE_MAX_SIZE if job.azure else MAX_FIXED_SIZE,
        uuid=job.uuid,
        timestamp=job.timestamp,
        xen=job.xen,
    )
    if job.write_behind:
        writer.write_behind()
    writer.begin(out_size)
    hasher = Hasher() if job.digest else None
    read = unread = 0
    data, update = writer.data, job.meter.update
    # The reader thread reads ahead (and hashes); this one checks for zeros
    # and writes, so reads, hashing and writes overlap.
    with Prefetch(source, unit, buffer_size, PREFETCH_BUFFERS, hasher) as pieces:
        for offset, length, view in pieces:
            if view is None:  # known zeros: holes on files, padding on streams
                unread += length
            else:
                read += length
                data(offset, view)
            update(offset + length)
    source_size = source.virtual_size
    if out_size is None:  # a stream: the size is known only now
        out_size = _output_size(source_size, fmt, job.azure, job.notes, job.xen)
    result.output_size = writer.finish(out_size)
    job.meter.update(out_size)
    job.meter.finish()
    result.source_size = source_size
    result.virtual_size = out_size
    result.bytes_read = read
    result.bytes_unread = unread
    result.bytes_written = writer.bytes_written
    result.bytes_zero = out_size - writer.bytes_written
    if fmt == "dynamic":
        result.blocks_allocated = writer.blocks_allocated
    if hasher is not None:
        result.source_digest = hasher.hexdigest()
        if out_size > source_size:
            hasher.zeros(out_size - source_size)
        result.digest = hasher.hexdigest()


__all__ = ["ConversionResult", "convert", "output_format_for", "remove_stale_temps"]
