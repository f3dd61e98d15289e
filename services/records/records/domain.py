"""Rules of the chart read model, free of I/O."""

from __future__ import annotations

from datetime import datetime

from contracts.base import SourceVersion


def _as_int(version_id: str) -> int | None:
    return int(version_id) if version_id.isdigit() else None


def version_is_newer(incoming: str, stored: str) -> bool | None:
    """Compare two FHIR version ids when both are numbers (None when they cannot be)."""
    new_n, old_n = _as_int(incoming), _as_int(stored)
    if new_n is None or old_n is None:
        return None
    return new_n > old_n


def is_newer(
    incoming: SourceVersion, stored_version: str | None, stored_at: datetime | None
) -> bool:
    """Whether an incoming EHR version should replace what the read model holds.

    FHIR version ids are opaque strings, but servers (ours included) number them 1, 2, 3:
    compare numerically when both are numbers, else fall back to `meta.lastUpdated`. An
    equal version is not newer: redelivered or replayed events change nothing.
    """
    if stored_version is None:
        return True
    numeric = version_is_newer(incoming.version_id, stored_version)
    if numeric is not None:
        return numeric
    if stored_at is None:
        return True
    return incoming.last_updated > stored_at
