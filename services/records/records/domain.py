"""Rules of the chart read model, free of I/O: flags, trends, versions, paging cursors."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Kinds of result rows: lab results and vital signs are both Observations with values.
LAB = "lab-result"
VITAL = "vital-sign"
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def newest_first(at: datetime | None) -> tuple[bool, datetime]:
    """Sort key (with `reverse=True`) listing dated entries newest first, undated last."""
    if at is None:
        return (False, EPOCH)
    return (True, at)


class Flag(StrEnum):
    """How a result compares with normal, as the patient is told."""

    NORMAL = "normal"
    HIGH = "high"
    LOW = "low"
    ABNORMAL = "abnormal"
    CRITICAL_HIGH = "critical-high"
    CRITICAL_LOW = "critical-low"
    CRITICAL = "critical"


# v3 ObservationInterpretation codes (R4) to our flags; `HH`/`LL`/`AA` are the critical ones.
_INTERPRETATION: dict[str, Flag] = {
    "N": Flag.NORMAL,
    "H": Flag.HIGH,
    "HU": Flag.HIGH,
    ">": Flag.HIGH,
    "L": Flag.LOW,
    "LU": Flag.LOW,
    "<": Flag.LOW,
    "A": Flag.ABNORMAL,
    "POS": Flag.ABNORMAL,
    "DET": Flag.ABNORMAL,
    "R": Flag.ABNORMAL,
    "HH": Flag.CRITICAL_HIGH,
    "LL": Flag.CRITICAL_LOW,
    "AA": Flag.CRITICAL,
}
_SEVERITY = {
    Flag.NORMAL: 0,
    Flag.ABNORMAL: 1,
    Flag.HIGH: 1,
    Flag.LOW: 1,
    Flag.CRITICAL: 2,
    Flag.CRITICAL_HIGH: 2,
    Flag.CRITICAL_LOW: 2,
}
_LABELS = {
    Flag.NORMAL: "Normal",
    Flag.HIGH: "High",
    Flag.LOW: "Low",
    Flag.ABNORMAL: "Outside the usual range",
    Flag.CRITICAL_HIGH: "Very high: needs attention soon",
    Flag.CRITICAL_LOW: "Very low: needs attention soon",
    Flag.CRITICAL: "Needs attention soon",
}


@dataclass(frozen=True)
class ResultFlag:
    """A result's flag and where it came from (`lab`: the lab's interpretation; `range`:
    the value compared with the lab's reference range, when the lab gave no flag)."""

    flag: Flag
    source: str

    def as_json(self) -> dict[str, str]:
        """The flag as the API shows it."""
        return {"code": self.flag.value, "label": _LABELS[self.flag], "source": self.source}


def flag_of(result: dict[str, Any]) -> ResultFlag | None:
    """The flag of a result (a `LabObservation` as JSON); None when nothing says."""
    found: list[Flag] = []
    for coding in result.get("interpretation") or []:
        code = coding.get("code") if isinstance(coding, dict) else None
        if isinstance(code, str) and code.upper() in _INTERPRETATION:
            found.append(_INTERPRETATION[code.upper()])
    if found:
        return ResultFlag(max(found, key=lambda f: _SEVERITY[f]), "lab")
    value = numeric_value(result)
    low, high = range_of(result)
    if value is None or (low is None and high is None):
        return None
    if high is not None and value > high:
        return ResultFlag(Flag.HIGH, "range")
    if low is not None and value < low:
        return ResultFlag(Flag.LOW, "range")
    return ResultFlag(Flag.NORMAL, "range")


def numeric_value(result: dict[str, Any]) -> float | None:
    """The number of a quantity result."""
    quantity = result.get("value_quantity")
    if isinstance(quantity, dict) and isinstance(quantity.get("value"), int | float):
        return float(quantity["value"])
    return None


def unit_of(result: dict[str, Any]) -> str | None:
    """The unit of a quantity result."""
    quantity = result.get("value_quantity")
    unit = quantity.get("unit") if isinstance(quantity, dict) else None
    return unit if isinstance(unit, str) else None


def range_of(result: dict[str, Any]) -> tuple[float | None, float | None]:
    """Low and high of the first reference range with numbers."""
    for item in result.get("reference_ranges") or []:
        if not isinstance(item, dict):
            continue
        low = (item.get("low") or {}).get("value")
        high = (item.get("high") or {}).get("value")
        if isinstance(low, int | float) or isinstance(high, int | float):
            return (
                float(low) if isinstance(low, int | float) else None,
                float(high) if isinstance(high, int | float) else None,
            )
    return None, None


# What a patient sees of a result: a new version that changes none of it is not an amendment.
_SHOWN = (
    "status",
    "value_quantity",
    "value_string",
    "value_coding",
    "reference_ranges",
    "interpretation",
)


def shown_differently(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a new version of a result changes what the patient sees."""
    return any(old.get(key) != new.get(key) for key in _SHOWN)


class Direction(StrEnum):
    """How a series of values moved between its last two points."""

    UP = "up"
    DOWN = "down"
    STEADY = "steady"


# Changes smaller than this share of the previous value read as "steady" (lab noise).
STEADY_SHARE = 0.02


def direction_of(previous: float, latest: float) -> Direction:
    """The direction from `previous` to `latest`."""
    tolerance = abs(previous) * STEADY_SHARE
    if abs(latest - previous) <= tolerance:
        return Direction.STEADY
    return Direction.UP if latest > previous else Direction.DOWN


class BadCursor(ValueError):
    """A paging cursor that this service did not issue."""


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after the entry sorted at `at` with id `id`."""

    at: datetime
    id: str

    def encode(self) -> str:
        """An opaque token for the client."""
        raw = json.dumps([self.at.isoformat(), self.id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode(token: str) -> Cursor:
        """The cursor of a token (BadCursor if it is not one of ours)."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            at, entry_id = json.loads(raw)
            moment = datetime.fromisoformat(at)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise BadCursor("The cursor is not valid.") from exc
        if moment.tzinfo is None or not isinstance(entry_id, str):
            raise BadCursor("The cursor is not valid.")
        return Cursor(moment, entry_id)


def sort_time(*candidates: datetime | None) -> datetime:
    """The time an entry sorts by: the first known of its candidate times."""
    for moment in candidates:
        if moment is not None:
            return moment
    return EPOCH
