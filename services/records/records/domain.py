"""Rules of the chart read model, free of I/O."""

from __future__ import annotations

from datetime import UTC, datetime

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def newest_first(at: datetime | None) -> tuple[bool, datetime]:
    """Sort key (with `reverse=True`) listing dated entries newest first, undated last."""
    if at is None:
        return (False, _EPOCH)
    return (True, at)
