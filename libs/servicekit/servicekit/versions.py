"""Which of two versions of an EHR resource is newer: the rule every read model applies so
a late or replayed event never overwrites a newer state (events of one patient arrive in
order, but a re-drive, a replay or a back-fill can bring an older version later)."""

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
    """Whether an incoming EHR version should replace the stored one.

    FHIR version ids are opaque strings, but most servers (the sandbox included) number
    them 1, 2, 3: compare numerically when both are numbers, else by `meta.lastUpdated`.
    An equal version is not newer: redelivered or replayed events change nothing.
    """
    if stored_version is None:
        return True
    numeric = version_is_newer(incoming.version_id, stored_version)
    if numeric is not None:
        return numeric
    if stored_at is None:
        return True
    return incoming.last_updated > stored_at
