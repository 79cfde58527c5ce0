"""The record ``vhdcore info --json`` prints: one key set for every format.

Scripts read ``info`` without knowing the format first, so every format
fills the same keys; what a format does not record is ``None`` (a raw disk
has no UUID, a qcow2 no CHS geometry). A format's own details go under
its name (``"qcow2": {...}``), ``None`` for the others.
"""

from __future__ import annotations


def _blank() -> dict:
    return {
        "filename": None,
        "format": None,
        "type": None,
        "virtual_size": None,
        "size_rule": None,
        "current_size": None,
        "chs_size": None,
        "file_size": None,
        "allocated_bytes": None,
        "blocks": {"allocated": None, "total": None},
        "block_size": None,
        "creator": {"application": None, "version": None, "host_os": None},
        "uuid": None,
        "timestamp": None,
        "geometry": {"cylinders": None, "heads": None, "sectors_per_track": None},
        "saved_state": None,
        "hidden": None,
        "batmap": None,
        "notes": [],
        "parent_uuid": None,
        "parent_name": None,
        "parent_timestamp": None,
        "qcow2": None,
        "chain": [],
    }


#: Every key of the record, in the order ``--json`` prints them.
KEYS = tuple(_blank())


def description(**fields) -> dict:
    """The record with ``fields`` filled in and every other key ``None`` (or empty).

    Raises:
        KeyError: a field that is not one of :data:`KEYS` (the key set is a contract).
    """
    record = _blank()
    unknown = set(fields) - set(record)
    if unknown:
        raise KeyError(f"not info keys: {', '.join(sorted(unknown))}")
    record.update(fields)
    return record


__all__ = ["KEYS", "description"]
