"""``repair``: fix what can be fixed without guessing, and say exactly what changed.

:func:`repair` runs :func:`vhdcore.formats.vhd.check.check`, plans a list of
:class:`Action` records from what it found, backs up every byte an action
will overwrite or cut, applies the actions in a crash-safe order, and
checks again. What it fixes (vhd-util's ``repair`` restores the footer
from its copy and truncates after the data; this does that and a little
more):

* a missing, zeroed, blktap-"killed" or damaged primary footer, from the
  copy at offset 0, written where the footer belongs (the last sector, or
  right after the data when the file ends there);
* a missing, damaged or different copy at offset 0, from the primary (when
  the two disagree in more than timestamp, saved state or reserved bytes,
  e.g. the size, which one is right is not obvious: ``force`` required);
* a wrong footer or dynamic header checksum when that is the structure's
  only error (both footers' checksums wrong but otherwise equal included);
* bytes after the footer (truncated away, after the footer is in place);
* blktap batmap bits that mark unallocated blocks full (cleared, checksum
  recomputed: blktap refuses such an image), also for blocks released here;
* with ``force`` only: BAT entries that put a block outside the data area
  (over the metadata, over the footer, past the end of the file) are
  released: they become unallocated and whatever they held is lost. A
  file truncated inside its data is repaired this way, and its footer is
  then rewritten after the blocks that remain.

It never touches overlapping blocks (which one is right is unknown),
structures other than those above, or leaked space.

Backup: before the first write, every byte range an action changes or
cuts is saved in ``IMAGE.repair-backup-<UTC time>``, fsynced, and named in
the report. The format is documented in :func:`write_backup`;
:func:`undo` puts the bytes back.

Order (a crash at any point leaves the image no worse than before, and
running repair again finishes the job): backup; batmap; BAT sectors; header;
primary footer; copy at offset 0; truncation; an fsync after each step.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from ...errors import FormatError, StorageError
from ...io import atomic
from ...io.imagefile import open_image_file
from .bat import bat_bytes
from .batmap import find_batmap
from .check import CheckReport, check
from .constants import (
    BAT_UNUSED,
    DISK_FIXED,
    FOOTER_COOKIE,
    FOOTER_SIZE,
    SECTOR_SIZE,
)
from .footer import Footer

__all__ = [
    "repair",
    "RepairReport",
    "Action",
    "write_backup",
    "read_backup",
    "undo",
    "BACKUP_MAGIC",
    "MAX_BACKUP_TAIL",
    "EXIT_REPAIRED",
    "EXIT_CANNOT_REPAIR",
    "EXIT_ERRORS_LEFT",
]

EXIT_REPAIRED = 0
EXIT_CANNOT_REPAIR = 1
EXIT_ERRORS_LEFT = 2

BACKUP_MAGIC = b"VHDCORE-REPAIR-BACKUP 1\n"
#: Trailing bytes up to this size are backed up before truncation; more
#: than this is cut only with ``force`` and is then not backed up.
MAX_BACKUP_TAIL = 64 << 20

# Footer fields in which the two copies may differ without doubt about
# which is right: the primary (the one at the end) wins.
_HARMLESS_FOOTER_FIELDS = {"timestamp", "checksum", "saved_state", "reserved"}
# Warnings repair acts on although the image is clean without them.
REPAIRABLE_WARNINGS = {"footer.copy_stale"}

# A copy check() calls stale (an interrupted resize) may differ in these too:
# the primary, written first, holds the new size.
_RESIZE_FIELDS = {
    "current_size", "original_size", "geometry", "creator_app", "creator_version", "creator_os",
}

# Write phases, in order. The batmap goes first: a "full" hint dropped
# before the BAT changes is harmless, one left on a released block is not.
_PHASE_BATMAP, _PHASE_BAT, _PHASE_HEADER, _PHASE_FOOTER, _PHASE_COPY, _PHASE_TRUNCATE = range(6)


@dataclass
class Action:
    """One change repair makes (or, in a dry run, would make).

    Attributes:
        kind: ``"write"`` or ``"truncate"``.
        what: a sentence saying what and why.
        offset: where the write starts, or the new file size for a truncate.
        length: bytes written (0 for a truncate).
        old, new: short descriptions of the bytes (or sizes) before and after.
        fixes: the problem codes this action answers.
    """

    kind: str
    what: str
    offset: int
    length: int
    old: str
    new: str
    fixes: Tuple[str, ...] = ()
    phase: int = field(default=0, repr=False)
    data: bytes = field(default=b"", repr=False)
    original: bytes = field(default=b"", repr=False)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "what": self.what,
            "offset": self.offset,
            "length": self.length,
            "old": self.old,
            "new": self.new,
            "fixes": list(self.fixes),
        }


@dataclass
class RepairReport:
    """What :func:`repair` did (or, with ``dry_run``, would do).

    Attributes:
        path: the image.
        dry_run: nothing was written.
        actions: the changes, in the order applied.
        skipped: ``(code, reason)`` for every error repair leaves alone.
        backup_path: the backup file written, or None.
        before: the check report that planned the repair.
        after: the check report after repairing (None in a dry run or when
            nothing was done).
    """

    path: str
    dry_run: bool
    actions: List[Action] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    backup_path: Optional[str] = None
    before: Optional[CheckReport] = None
    after: Optional[CheckReport] = None

    @property
    def changed(self) -> bool:
        return bool(self.actions) and not self.dry_run

    @property
    def exit_code(self) -> int:
        """0 when no errors are (or, in a dry run, would be) left; 2 otherwise."""
        if self.after is not None:
            return EXIT_REPAIRED if self.after.clean else EXIT_ERRORS_LEFT
        return EXIT_ERRORS_LEFT if self.skipped else EXIT_REPAIRED

    def to_dict(self) -> dict:
        return {
            "filename": self.path,
            "dry_run": self.dry_run,
            "status_before": self.before.status if self.before else None,
            "status_after": self.after.status if self.after else None,
            "exit_code": self.exit_code,
            "backup": self.backup_path,
            "actions": [action.to_dict() for action in self.actions],
            "skipped": [{"code": code, "reason": reason} for code, reason in self.skipped],
            "after": self.after.to_dict() if self.after else None,
        }


def repair(path, dry_run: bool = False, force: bool = False, *,
           now: Optional[float] = None) -> RepairReport:
    """Repair an image in place, after backing up what changes.

    Args:
        path: the image.
        dry_run: plan and report, change nothing (no backup either).
        force: also release BAT entries that point outside the data area
            (their data is lost), rewrite a footer copy that disagrees with
            the primary in more than its timestamp, and truncate more than
            :data:`MAX_BACKUP_TAIL` trailing bytes (not backed up).
        now: Unix time for the checks' timestamp rule (default: now).

    Returns:
        The :class:`RepairReport`; ``after`` is the check after repairing.

    Raises:
        OSError: the image cannot be read or written (or the backup
            cannot be written: then nothing was changed).
        LockedError: another writer has the image open.
    """
    path = os.fspath(path)
    # The writer's lock comes first, so no other writer can change the image
    # between the check that plans the repair and the writes that carry it
    # out, and a locked image fails before anything (even a backup) is made.
    lock = None if dry_run else open_image_file(path, writable=True)
    try:
        before = check(path, now=now)
        report = RepairReport(path=path, dry_run=dry_run, before=before)
        if before.clean and not any(p.code in REPAIRABLE_WARNINGS for p in before.problems):
            return report
        _Planner(before, force, report).plan()
        report.actions.sort(key=lambda action: action.phase)
        if dry_run or not report.actions:
            return report
        _apply(lock, report)
    finally:
        if lock is not None:
            lock.close()
    report.after = check(path, now=now)
    return report


# ---------------------------------------------------------------------------
# planning


def _entries(count: int) -> str:
    return f"{count} BAT {'entry' if count == 1 else 'entries'}"


def _describe_footer_bytes(raw: bytes) -> str:
    if not raw:
        return "nothing (past the end of the file)"
    if raw.count(0xC7) == len(raw):
        return f"{len(raw)} bytes of 0xC7 (killed by tapdisk)"
    if raw.count(0) == len(raw):
        return f"{len(raw)} zero bytes"
    if raw[:8] != FOOTER_COOKIE:
        return f"not a footer (cookie {raw[:8]!r})"
    footer = Footer.from_bytes(raw.ljust(FOOTER_SIZE, b"\0")[:FOOTER_SIZE])
    return (
        f"footer: type {footer.disk_type}, size {footer.current_size}, "
        f"version {footer.format_version:#010x}, checksum {footer.checksum:#010x} "
        f"(computed {footer.computed_checksum:#010x})"
    )


def _describe_footer(footer: Footer) -> str:
    return (
        f"footer: {footer.type_name}, size {footer.current_size}, uuid {footer.uuid}, "
        f"checksum {footer.computed_checksum:#010x}"
    )


class _Planner:
    """Turns a check report into actions (reading, never writing)."""

    def __init__(self, before: CheckReport, force: bool, report: RepairReport):
        self.before = before
        self.force = force
        self.report = report
        self.path = before.path
        self.size = before.file_size
        self.covered = set()

    def read(self, offset: int, length: int) -> bytes:
        with open_image_file(self.path) as image:
            end = min(offset + length, image.size())
            if end <= offset:
                return b""
            return image.pread(offset, end - offset, "repair")

    def add(self, action: Action) -> None:
        found = set(self.before.codes)
        action.fixes = tuple(code for code in action.fixes if code in found)
        self.report.actions.append(action)
        self.covered.update(action.fixes)

    def skip(self, code: str, reason: str) -> None:
        self.report.skipped.append((code, reason))

    def plan(self) -> None:
        before = self.before
        if before.footer is None:
            self.skip("footer.cookie", "no usable footer at the end or at offset 0: nothing "
                                       "to restore the footer from")
            self._skip_rest()
            return
        if before.footer.disk_type == DISK_FIXED:
            self._plan_fixed()
        else:
            self._plan_dynamic()
        self._skip_rest()
        self._guard()

    def _metadata_regions(self):
        """``(start, end, name, phase)`` of the dynamic metadata check found, with
        the phase of the one action kind allowed to rewrite each."""
        before, header = self.before, self.before.header
        if header is None or before.footer.disk_type == DISK_FIXED:
            return []
        at = before.footer.data_offset
        regions = [
            (0, FOOTER_SIZE, "footer copy", _PHASE_COPY),
            (at, at + 1024, "dynamic header", _PHASE_HEADER),
            (header.table_offset, header.table_offset + bat_bytes(header.max_table_entries),
             "block allocation table", _PHASE_BAT),
        ]
        for index, locator in header.used_locators:
            regions.append((locator.data_offset, locator.data_offset + locator.space_bytes,
                            f"parent locator {index}", None))
        return regions

    def _guard(self) -> None:
        """Refuse the whole plan if one action would make the image worse.

        A write may only touch the structure it repairs: a footer written
        over the table (or at an unaligned offset) or a cut inside the
        metadata destroys what the image still had. The planner should
        never produce one; this is the last line, so that a planning
        mistake shows as "refused", never as damage.
        """
        regions = self._metadata_regions()
        for action in self.report.actions:
            problem = None
            if action.kind == "write":
                if action.phase == _PHASE_FOOTER and action.offset % SECTOR_SIZE:
                    problem = f"writes a footer at the unaligned offset {action.offset:#x}"
                for start, end, name, owner in regions:
                    if problem is None and action.phase != owner and (
                        action.offset < end and action.offset + action.length > start
                    ):
                        problem = (f"would write {action.length} bytes at {action.offset:#x} "
                                   f"over the {name} ({start:#x}-{end:#x})")
            else:
                for start, end, name, _owner in regions:
                    if problem is None and action.offset < end:
                        problem = f"would cut the file at {action.offset:#x}, inside the {name}"
            if problem is None:
                continue
            refused = self.report.actions
            self.report.actions = []
            reason = f"repair refused: it {problem}; nothing was changed"
            for code in dict.fromkeys(code for a in refused for code in a.fixes):
                self.skip(code, reason)
            if not refused or not any(a.fixes for a in refused):
                self.skip("repair.refused", reason)
            return

    def _skip_rest(self) -> None:
        """Every error no action answers, with why."""
        reasons = {
            "bat.overlap": "overlapping blocks: which one holds the right data is unknown",
            "header.cookie": "no dynamic header: the BAT cannot be found",
            "data.clear_bitmap": "data under clear bitmap bits: setting the bits or zeroing "
                                 "the data both guess at the content",
        }
        already = {code for code, _ in self.report.skipped}
        for problem in self.before.errors:
            code = problem.code
            if code in self.covered or code in already:
                continue
            reason = reasons.get(code, "not something repair changes")
            self.skip(code, reason)
            already.add(code)

    # -- fixed disks -----------------------------------------------------------

    def _plan_fixed(self) -> None:
        before = self.before
        footer = before.footer
        offset = before.footer_offset
        errors = [p for p in footer.validate(self.path, offset, offset + FOOTER_SIZE)
                  if p.is_error]
        codes = {p.code for p in errors}
        if codes == {"footer.checksum"}:
            good = footer.to_bytes()
            self.add(Action(
                "write", f"recompute the footer checksum at {offset:#x} (its only error)",
                offset, FOOTER_SIZE,
                f"checksum {footer.checksum:#010x}", f"checksum {footer.computed_checksum:#010x}",
                ("footer.checksum",), _PHASE_FOOTER, good, self.read(offset, FOOTER_SIZE),
            ))
        self._plan_truncate(offset + FOOTER_SIZE)

    # -- dynamic and differencing disks --------------------------------------

    def _plan_dynamic(self) -> None:
        before = self.before
        if before.footer_state == "truncated" and before.bat is None:
            # check stopped inside the table: it could not even be read.
            self.skip(
                "file.truncated",
                f"the file ends at {self.size:#x}, inside its block allocation "
                f"table (which reaches {before.footer_offset:#x}): the rest of the table, the "
                f"blocks and the footer are gone and cannot be rebuilt without guessing; "
                f"restore the image from a backup",
            )
            return
        good = self._good_footer()
        if good is None:
            return
        outside = before.outside_entries
        if before.footer_state == "truncated" or (outside is not None and len(outside)):
            if not self._plan_release():
                return
        target = self._footer_target()
        self._plan_batmap()
        self._plan_header()
        self._plan_primary(good, target)
        self._plan_copy(good)
        self._plan_truncate(target + FOOTER_SIZE)

    def _good_footer(self) -> Optional[bytes]:
        """The bytes both footers should hold, or None (with a reason).

        A valid footer is taken byte for byte (never re-encoded), so a
        footer with blktap's hidden-flag checksum quirk stays as it is.
        """
        before = self.before
        primary, copy = before.primary, before.copy
        if before.footer_state == "legacy":
            self.skip("footer.legacy", "a legacy 511-byte footer is left as it is")
            return None
        if before.footer_state in ("ok", "trailing"):
            return self.read(before.footer_offset, FOOTER_SIZE)
        if before.copy_state == "ok" and copy is not None:
            return self.read(0, FOOTER_SIZE)
        # Both damaged: a wrong checksum alone is fixable when the two
        # footers otherwise agree.
        candidates = [f for f in (primary, copy) if f is not None and f.cookie == FOOTER_COOKIE]
        for footer in candidates:
            offset = before.footer_offset if footer is primary else 0
            codes = {p.code for p in self._errors_of(footer, offset)}
            if codes == {"footer.checksum"}:
                others = [f for f in candidates if f is not footer]
                if all(f.with_checksum() == footer.with_checksum() for f in others):
                    return footer.to_bytes()
        self.skip("footer.checksum" if candidates else "footer.cookie",
                  "neither the footer nor its copy at offset 0 is usable")
        return None

    def _errors_of(self, footer: Footer, offset: int):
        return [
            p for p in footer.validate(self.path, offset, self.size, now=None)
            if p.is_error and p.code != "footer.file_size"
        ]

    def _plan_release(self) -> bool:
        """Release BAT entries outside the data area (``force`` only)."""
        before = self.before
        entries = np.asarray(before.outside_entries if before.outside_entries is not None else (),
                             dtype=np.int64)
        header = before.header
        if not len(entries):
            return True
        if not self.force:
            self.skip(
                "bat.outside",
                f"{_entries(len(entries))} {'points' if len(entries) == 1 else 'point'} "
                f"outside the data area; releasing "
                f"{'it' if len(entries) == 1 else 'them'} loses whatever "
                f"{'it' if len(entries) == 1 else 'they'} held: rerun with --force",
            )
            if before.footer_state == "truncated":
                self.skip("file.truncated", "the file ends inside its data: rerun with "
                                            "--force to release the blocks it cut")
            return before.footer_state != "truncated"
        table = before.bat.copy()
        old_values = table[entries].copy()
        table[entries] = BAT_UNUSED
        self.released_table = table
        sectors = np.unique(entries * 4 // SECTOR_SIZE)
        for sector in sectors.tolist():
            at = header.table_offset + sector * SECTOR_SIZE
            original = self.read(at, SECTOR_SIZE)
            new = bytearray(original)
            in_sector = entries[entries * 4 // SECTOR_SIZE == sector]
            for index in in_sector.tolist():
                slot = index * 4 - sector * SECTOR_SIZE
                new[slot:slot + 4] = b"\xff\xff\xff\xff"
            olds = ", ".join(
                f"{int(i)}={int(v):#x}"
                for i, v in zip(entries, old_values) if i * 4 // SECTOR_SIZE == sector
            )
            self.add(Action(
                "write",
                f"release {_entries(len(in_sector))} in the BAT sector at {at:#x}: "
                f"{'its block lies' if len(in_sector) == 1 else 'their blocks lie'} outside "
                f"the data area; the data {'it' if len(in_sector) == 1 else 'they'} held is lost",
                at, SECTOR_SIZE, f"entries {olds}", "0xffffffff (unallocated)",
                ("bat.outside", "file.truncated"), _PHASE_BAT, bytes(new), original,
            ))
        return True

    def _plan_batmap(self) -> None:
        """Clear "full" bits of unallocated blocks (those released here included)."""
        before = self.before
        if before.bat is None or before.header is None:
            return
        table = getattr(self, "released_table", before.bat)
        batmap = find_batmap(before.footer, before.header, self.read, self.size)
        if batmap is None or not batmap.map_trusted:
            return
        stale = batmap.stale_blocks(table)
        if not stale:
            return
        fixed = batmap.without(stale)
        first = ", ".join(str(b) for b in stale[:8]) + (", ..." if len(stale) > 8 else "")
        what = (f"clear the batmap's \"full\" bits of {len(stale)} unallocated "
                f"block{'s' if len(stale) != 1 else ''} ({first})")
        old, new = f"checksum {batmap.checksum:#010x}", f"checksum {fixed.checksum:#010x}"
        if fixed.batmap_offset == fixed.header_offset + SECTOR_SIZE:
            # blktap's layout: header and map in one write, so no crash can
            # leave a map that disagrees with its checksum.
            pieces = [(fixed.header_offset, fixed.to_bytes() + fixed.map, what + " and its "
                       "header's checksum")]
        else:
            pieces = [(fixed.batmap_offset, fixed.map, what),
                      (fixed.header_offset, fixed.to_bytes(),
                       f"rewrite the batmap header at {fixed.header_offset:#x} (new checksum)")]
        for at, data, text in pieces:
            self.add(Action("write", text, at, len(data), old, new, ("batmap.unallocated",),
                            _PHASE_BATMAP, data, self.read(at, len(data))))

    def _footer_target(self) -> int:
        """Where the primary footer goes once the plan is applied."""
        before = self.before
        unaligned = any(p.code == "file.size" for p in before.errors)
        if unaligned and before.end_of_data is not None and \
                before.end_of_data + FOOTER_SIZE <= self.size:
            # A footer at an unaligned offset: put it right after the data.
            return before.end_of_data
        if before.footer_state != "truncated":
            # check placed it: the footer's sector, or right after the data
            # when the file ends there.
            return before.footer_offset
        # Truncated: after the released blocks, the data ends earlier.
        table = getattr(self, "released_table", before.bat)
        header = before.header
        span = header.bitmap_bytes + header.block_size
        allocated = table[table != BAT_UNUSED]
        last_end = int(allocated.max()) * SECTOR_SIZE + span if len(allocated) else 0
        end = max(before.counts.get("metadata_end", 0), last_end)
        if end + FOOTER_SIZE <= self.size:
            # Keep the bytes of the cut block (a leak) rather than cut more.
            return (self.size - FOOTER_SIZE) // SECTOR_SIZE * SECTOR_SIZE
        return end

    def _plan_header(self) -> None:
        before = self.before
        header = before.header
        if header is None:
            return
        codes = {p.code for p in before.errors if p.code.startswith("header.")}
        if codes != {"header.checksum"}:
            return
        at = before.footer.data_offset
        self.add(Action(
            "write", f"recompute the dynamic header checksum at {at:#x} (its only error)",
            at, 1024, f"checksum {header.checksum:#010x}",
            f"checksum {header.computed_checksum:#010x}",
            ("header.checksum",), _PHASE_HEADER, header.to_bytes(), self.read(at, 1024),
        ))

    def _plan_primary(self, good: bytes, target: int) -> None:
        current = self.read(target, FOOTER_SIZE)
        if current == good:
            return
        state = self.before.footer_state
        if state in ("ok", "trailing") or self.before.copy_state != "ok":
            source = "itself, with its checksum recomputed"
        else:
            source = "the copy at offset 0"
        where = "append" if target >= self.size else "write"
        fixes = ["footer.checksum", "footer.cookie", "footer.missing", "footer.killed",
                 "footer.version", "footer.features_unknown", "footer.disk_type",
                 "footer.data_offset", "footer.current_size", "footer.size_limit",
                 "footer.mismatch", "file.size", "file.truncated"]
        self.add(Action(
            "write",
            f"{where} the primary footer at {target:#x} from {source} "
            f"(it was {state})",
            target, FOOTER_SIZE, _describe_footer_bytes(current),
            _describe_footer(Footer.from_bytes(good)), tuple(fixes), _PHASE_FOOTER, good,
            current,
        ))

    def _plan_copy(self, good: bytes) -> None:
        before = self.before
        current = self.read(0, FOOTER_SIZE)
        if current == good:
            return
        copy = before.copy
        if before.copy_state == "mismatch" and copy is not None and copy.cookie == FOOTER_COOKIE:
            primary = Footer.from_bytes(good)
            differing = [
                name for name in Footer.__dataclass_fields__
                if getattr(primary, name) != getattr(copy, name)
            ]
            stale = any(p.code == "footer.copy_stale" for p in before.problems)
            harmless = _HARMLESS_FOOTER_FIELDS | (_RESIZE_FIELDS if stale else set())
            serious = [name for name in differing if name not in harmless]
            if serious and not self.force:
                self.skip(
                    "footer.mismatch",
                    f"the footer copy at offset 0 differs from the primary in "
                    f"{', '.join(serious)}: which one is right is not obvious; rerun with "
                    f"--force to make the copy equal the primary",
                )
                return
        self.add(Action(
            "write", f"rewrite the footer copy at 0x0 from the primary footer "
                     f"(it was {before.copy_state})",
            0, FOOTER_SIZE, _describe_footer_bytes(current),
            _describe_footer(Footer.from_bytes(good)),
            ("footer.mismatch", "footer.copy_stale", "footer_copy.missing", "footer_copy.checksum",
             "footer_copy.cookie", "footer_copy.version", "footer_copy.features_unknown",
             "footer_copy.disk_type", "footer_copy.data_offset"),
            _PHASE_COPY, good, current,
        ))

    def _plan_truncate(self, new_size: int) -> None:
        if new_size >= self.size:
            return
        cut = self.size - new_size
        if cut > MAX_BACKUP_TAIL and not self.force:
            self.skip(
                "file.trailing_data",
                f"{cut} bytes after the footer exceed the {MAX_BACKUP_TAIL} bytes repair backs "
                f"up; rerun with --force to cut them without a backup",
            )
            return
        original = self.read(new_size, cut) if cut <= MAX_BACKUP_TAIL else b""
        self.add(Action(
            "truncate",
            f"cut the {cut} bytes after the footer (the file ends at {new_size:#x})",
            new_size, 0, f"{self.size} bytes", f"{new_size} bytes",
            ("file.trailing_data", "file.size"), _PHASE_TRUNCATE, b"", original,
        ))


# ---------------------------------------------------------------------------
# backup and applying


def _backup_name(path: str) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{path}.repair-backup-{stamp}"
    candidate, n = base, 1
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def write_backup(path: str, file_size: int, records, backup_path: Optional[str] = None) -> str:
    """Save the original bytes of every range repair changes.

    The format: the line ``VHDCORE-REPAIR-BACKUP 1``; one line of JSON
    ``{"image": ..., "created": ..., "file_size": ..., "records":
    [{"offset": ..., "length": ..., "what": ...}, ...]}``; then the
    records' original bytes, concatenated in the order listed. A record's
    bytes go back at its offset; ``file_size`` is the size to truncate (or
    extend) the image to. Cut bytes are a record at the new end of file.

    Args:
        path: the image.
        file_size: its size before repair.
        records: ``[(offset, bytes, what), ...]``.
        backup_path: where to write (default ``IMAGE.repair-backup-<UTC>``).

    Returns:
        The backup's path (written to a temporary name, fsynced, renamed).
    """
    backup_path = backup_path or _backup_name(path)
    meta = {
        "image": os.path.abspath(path),
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "file_size": file_size,
        "records": [
            {"offset": offset, "length": len(data), "what": what}
            for offset, data, what in records
        ],
    }
    body = BACKUP_MAGIC + json.dumps(meta, sort_keys=True).encode() + b"\n"
    try:
        with atomic.new_file(backup_path, replace=False, mode=0o600,
                             exists=lambda: FileExistsError(17, "exists", backup_path)) as out:
            out.pwrite(0, body)
            position = len(body)
            for _offset, data, _what in records:
                out.pwrite(position, data)
                position += len(data)
    except OSError as exc:
        # Named for the backup the user will look for; nothing was changed yet.
        raise StorageError(
            f"{backup_path}: cannot write the repair backup (the image was not changed): "
            f"{exc.strerror or exc}", exc.errno, backup_path, exc.strerror) from exc
    return backup_path


def read_backup(backup_path) -> Tuple[dict, List[Tuple[int, bytes]]]:
    """``(metadata, [(offset, original bytes), ...])`` of a backup file.

    Raises:
        FormatError: not a vhdcore repair backup, or cut short.
    """
    with open(backup_path, "rb") as handle:
        if handle.readline() != BACKUP_MAGIC:
            raise FormatError(f"{backup_path}: not a vhdcore repair backup")
        try:
            meta = json.loads(handle.readline())
        except ValueError as exc:
            raise FormatError(f"{backup_path}: damaged backup header: {exc}") from None
        records = []
        for record in meta["records"]:
            data = handle.read(record["length"])
            if len(data) != record["length"]:
                raise FormatError(f"{backup_path}: backup ends inside record at "
                                  f"{record['offset']:#x}")
            records.append((record["offset"], data))
    return meta, records


def undo(path, backup_path) -> None:
    """Put back the bytes a repair changed, from its backup file.

    Raises:
        FormatError: the backup is not one or is incomplete.
        OSError: the image cannot be written.
    """
    meta, records = read_backup(backup_path)
    with open_image_file(path, writable=True) as image:
        for offset, data in reversed(records):
            image.pwrite(offset, data)
        image.flush()
        image.truncate(meta["file_size"])
        image.flush()


def _apply(image, report: RepairReport) -> None:
    """Back up, then carry out, the planned actions through the locked ``image``."""
    before = report.before
    path = image.path
    records = []
    for action in report.actions:
        if action.kind == "write":
            records.append((action.offset, action.original, action.what))
        elif action.original:
            records.append((action.offset, action.original, action.what))
    report.backup_path = write_backup(path, before.file_size, records)
    phase = None
    for action in report.actions:
        if phase is not None and action.phase != phase:
            image.flush()  # a barrier between phases: see the module docstring
        phase = action.phase
        if action.kind == "write":
            image.pwrite(action.offset, action.data)
        else:
            image.truncate(action.offset)
    image.flush()
