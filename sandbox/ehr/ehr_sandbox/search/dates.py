"""FHIR dates as ranges: `2024-03` covers the whole month, an instant covers its precision.

Every instant the index stores or a search compares is timezone-aware UTC; a value without
a time zone is taken as UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

# Bounds standing in for "open" ends of periods; aware UTC like every indexed instant.
MIN_INSTANT = datetime(1, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def date_range(value: str) -> tuple[datetime, datetime]:
    """The inclusive UTC range a FHIR date, dateTime or instant covers.

    Raises ValueError for anything else. A value without a time zone is taken as UTC.
    """
    match = _DATE_RE.match(value.strip())
    if not match:
        raise ValueError(f"not a FHIR date/dateTime: {value!r}")
    g = match.groupdict()
    year = int(g["y"])
    if g["m"] is None:
        lo = datetime(year, 1, 1, tzinfo=UTC)
        hi = datetime(year + 1, 1, 1, tzinfo=UTC) if year < 9999 else None
    elif g["d"] is None:
        month = int(g["m"])
        lo = datetime(year, month, 1, tzinfo=UTC)
        hi = (
            datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            if year < 9999 or month < 12
            else None
        )
    elif g["H"] is None:
        lo = datetime(year, int(g["m"]), int(g["d"]), tzinfo=UTC)
        hi = lo + timedelta(days=1)
    else:
        second = int(g["S"] or 0)
        fraction = g["f"] or ""
        micro = int((fraction + "000000")[:6]) if fraction else 0
        lo = datetime(
            year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]), second, micro, tzinfo=UTC
        )
        if g["S"] is None:
            step = timedelta(minutes=1)
        elif not fraction:
            step = timedelta(seconds=1)
        else:
            step = timedelta(microseconds=10 ** max(0, 6 - len(fraction)))
        tz = g["tz"]
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            lo -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
        hi = lo + step
    upper = MAX_INSTANT if hi is None else hi - timedelta(microseconds=1)
    return lo, upper


def to_utc(moment: datetime) -> datetime:
    """`moment` in UTC (a time without a zone is taken as UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_instant(moment: datetime) -> str:
    """A FHIR instant with microseconds and `Z`."""
    return to_utc(moment).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
