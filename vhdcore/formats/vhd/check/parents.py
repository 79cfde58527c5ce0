"""The parent rules of a differencing disk.

Finding the parent under the chain policy, its identity, and the rules
between child and parent.
"""

from __future__ import annotations

from typing import Optional

from ....errors import (
    ChainLoopError,
    CorruptImageError,
    FormatError,
    LimitError,
    ParentMismatchError,
    ParentNotFoundError,
    UnsafeParentError,
    UnsupportedError,
)
from ....io.imagefile import open_image_file
from ....problems import Problem
from ..chain import ParentPolicy, file_identity, read_payloads, screen_candidates
from ..constants import (
    DISK_FIXED,
    FOOTER_COOKIE,
    FOOTER_SIZE,
)
from ..footer import Footer
from ..layout import read_primary_footer
from ..locators import candidate_paths, decode_locator
from .base import CheckerBase
from .report import CheckReport


def _chain_rules(child: CheckReport, parent: CheckReport) -> None:
    """Rules between a child and its checked parent."""
    if child.header is not None and parent.header is not None:
        if child.header.block_size != parent.header.block_size:
            child.problems.append(Problem(
                "chain.block_size",
                f"{child.path}: block size {child.header.block_size} differs from the "
                f"parent {parent.path}'s {parent.header.block_size}; reading works, but "
                f"coalescing (vhd-util, vhdcore commit) needs equal block sizes",
                "warning", child.footer_offset, UnsupportedError,
            ))
    if child.virtual_size is not None and parent.virtual_size is not None:
        if parent.virtual_size < child.virtual_size:
            child.problems.append(Problem(
                "chain.parent_smaller",
                f"{child.path}: parent {parent.path} holds {parent.virtual_size} bytes, less "
                f"than the child's {child.virtual_size}; the child reads zeros past the "
                f"parent's end (Hyper-V refuses such chains)",
                "warning", None, CorruptImageError,
            ))


def _peek_footer(path) -> Optional[Footer]:
    """The footer of a would-be parent (the primary, else the copy at 0), or None."""
    with open_image_file(path) as parent:
        size = parent.size()
        raws = []
        if size >= FOOTER_SIZE:
            raws.append(read_primary_footer(parent.pread, size)[0])
        if size >= 2 * FOOTER_SIZE:
            raws.append(None)  # the copy at 0, read only if the primary fails
        for raw in raws:
            copy = raw is None
            footer = Footer.from_bytes(parent.pread(0, FOOTER_SIZE, "footer copy") if copy
                                       else raw)
            if footer.cookie == FOOTER_COOKIE and footer.checksum == footer.computed_checksum:
                if copy and footer.disk_type == DISK_FIXED:
                    continue
                return footer
    return None


class ParentRules(CheckerBase):
    """Finds a differencing disk's parent as an open would, and compares it."""

    def check_parent(self, policy: ParentPolicy, depth: int, seen) -> Optional[str]:
        """Find the parent of a differencing disk; compare names and UUIDs.

        Returns:
            The parent's path when it was found and may be checked further.
        """
        report = self.report
        header = report.header
        if depth + 2 > policy.max_depth:
            self.add(
                "chain.depth",
                f"differencing chain is deeper than the limit of {policy.max_depth} images",
                offset=None, error=LimitError,
            )
            return None
        payloads = read_payloads(header, self.read, self.size, known_only=True)
        for index, data in payloads.items():
            locator = header.locators[index]
            offset = locator.data_offset
            try:
                text = decode_locator(locator.code, data)
            except (FormatError, UnsupportedError) as exc:
                self.add(
                    "locator.decode",
                    f"parent locator {index} ({locator.code_name}) cannot be decoded: {exc}",
                    "warning", offset,
                )
                continue
            name = header.parent_name
            base = text.replace("\\", "/").rsplit("/", 1)[-1]
            if name and base and base != name.replace("\\", "/").rsplit("/", 1)[-1]:
                self.add(
                    "locator.name_mismatch",
                    f"parent locator {index} ({locator.code_name}) names {base!r}, the header's "
                    f"parent name is {name!r}",
                    "warning", offset,
                )
        candidates = candidate_paths(self.path, header, payloads)
        tried, refused = [], []
        own = set(seen) | {file_identity(self.path)}
        for _code, candidate in screen_candidates(candidates, policy, tried, refused):
            if file_identity(candidate) in own:
                self.add(
                    "chain.loop",
                    f"parent {candidate} is already part of this chain (a loop)",
                    offset=None, error=ChainLoopError,
                )
                return None
            self._compare_parent(candidate)
            report.counts["parent_found"] = 1
            report.parent_path = candidate
            return candidate
        if refused:
            self.add(
                "parent.refused",
                f"parent refused by the path policy: {'; '.join(refused)}",
                offset=None, error=UnsafeParentError,
            )
            return None
        name = header.parent_name or "(no name)"
        self.add(
            "parent.missing",
            f"parent {name!r} not found"
            + (f" (tried {', '.join(tried)})" if tried else " (no usable locator)"),
            offset=None, error=ParentNotFoundError,
        )
        return None

    def _compare_parent(self, parent_path: str) -> None:
        header = self.report.header
        try:
            footer = _peek_footer(parent_path)
        except OSError as exc:
            self.add(
                "parent.unreadable",
                f"parent {parent_path} cannot be read: {exc.strerror or exc}",
                offset=None, error=ParentNotFoundError,
            )
            return
        if footer is None:
            self.add(
                "parent.invalid",
                f"parent {parent_path} has no valid VHD footer",
                offset=None, error=FormatError,
            )
            return
        if header.parent_uuid.int and footer.uuid != header.parent_uuid:
            self.add(
                "parent.uuid",
                f"parent {parent_path} has UUID {footer.uuid}, but the child was made from "
                f"{header.parent_uuid}",
                offset=self.report.footer.data_offset + 40, error=ParentMismatchError,
            )
