"""Rules of the read model: sort order, flags, trends, cursors, amendments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from records.domain import (
    BadCursor,
    Cursor,
    Direction,
    Flag,
    direction_of,
    flag_of,
    newest_first,
    shown_differently,
)

T = datetime(2026, 11, 25, tzinfo=UTC)


def test_newest_first_puts_undated_entries_last() -> None:
    dated = [T, None, T + timedelta(days=1), T - timedelta(days=1)]
    ordered = sorted(dated, key=newest_first, reverse=True)
    assert ordered[0] == T + timedelta(days=1)
    assert ordered[-1] is None


# --- flags, trends, cursors --------------------------------------------------------------


def _result(
    value: float | None, low: float | None, high: float | None, *codes: str
) -> dict[str, Any]:
    return {
        "value_quantity": {"value": value, "unit": "%"} if value is not None else None,
        "reference_ranges": [{"low": {"value": low} if low else None,
                              "high": {"value": high} if high else None}],
        "interpretation": [{"system": "x", "code": c} for c in codes],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (("H",), Flag.HIGH),
        (("L",), Flag.LOW),
        (("A",), Flag.ABNORMAL),
        (("HH",), Flag.CRITICAL_HIGH),
        (("LL",), Flag.CRITICAL_LOW),
        (("AA",), Flag.CRITICAL),
        (("N",), Flag.NORMAL),
        (("H", "HH"), Flag.CRITICAL_HIGH),  # the most severe wins
    ],
)
def test_the_labs_interpretation_becomes_the_flag(codes: tuple[str, ...], expected: Flag) -> None:
    found = flag_of(_result(5.0, 4.0, 6.0, *codes))
    assert found is not None and found.flag is expected and found.source == "lab"


def test_without_an_interpretation_the_value_is_compared_with_the_range() -> None:
    high = flag_of(_result(6.8, 4.0, 5.6))
    low = flag_of(_result(3.0, 4.0, None))
    normal = flag_of(_result(5.0, 4.0, 5.6))
    assert high is not None and (high.flag, high.source) == (Flag.HIGH, "range")
    assert low is not None and low.flag is Flag.LOW
    assert normal is not None and normal.flag is Flag.NORMAL
    assert flag_of(_result(None, 4.0, 5.6)) is None
    assert flag_of(_result(5.0, None, None)) is None


def test_direction_treats_small_changes_as_steady() -> None:
    assert direction_of(6.8, 6.4) is Direction.DOWN
    assert direction_of(6.4, 6.8) is Direction.UP
    assert direction_of(6.8, 6.85) is Direction.STEADY
    assert direction_of(0.0, 0.0) is Direction.STEADY


def test_a_cursor_round_trips_and_a_forged_one_is_refused() -> None:
    cursor = Cursor(T, "dr-1")
    assert Cursor.decode(cursor.encode()) == cursor
    for bad in ("not-a-cursor", "W10", Cursor(T.replace(tzinfo=None), "x").encode()):
        with pytest.raises(BadCursor):
            Cursor.decode(bad)


def test_only_a_change_the_patient_sees_is_an_amendment() -> None:
    old = {"status": "final", "value_quantity": {"value": 7.4}, "effective": "a"}
    assert shown_differently(old, {**old, "value_quantity": {"value": 6.4}})
    assert shown_differently(old, {**old, "status": "amended"})
    assert not shown_differently(old, {**old, "effective": "b"})
