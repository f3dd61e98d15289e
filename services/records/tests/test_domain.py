"""The records sort order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from records.domain import newest_first

T = datetime(2026, 11, 25, tzinfo=UTC)


def test_newest_first_puts_undated_entries_last() -> None:
    dated = [T, None, T + timedelta(days=1), T - timedelta(days=1)]
    ordered = sorted(dated, key=newest_first, reverse=True)
    assert ordered[0] == T + timedelta(days=1)
    assert ordered[-1] is None
