"""Live notifications come first: a back-fill yields part of the time while they arrive.

A back-fill imports a patient's whole history (thousands of resources) through the same
connector, broker, records service and database as the live changes of every other
patient. At full speed it takes the machine from them; their lab results then reach the
portal late. While live event notifications are arriving, the back-fill worker pauses
between pages so that it works only `backfill_share_under_live` of the time; with no live
traffic it runs at full speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class LiveTraffic:
    """When the connector last received a live event notification."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: float | None = None

    def seen(self) -> None:
        """A live event notification arrived now."""
        self._last = self._clock()

    def recent(self, within_s: float) -> bool:
        """Whether one arrived within the last `within_s` seconds."""
        return self._last is not None and self._clock() - self._last <= within_s


def pause_after_page(took_s: float, share: float, interval_s: float, live: bool) -> float:
    """Seconds to wait after a page that took `took_s`: the configured interval, and while
    live traffic arrives at least what keeps the back-fill's share of the time at `share`
    (a page of 0.2 s at a share of 0.5 is followed by 0.2 s of rest)."""
    if live and 0 < share < 1:
        return max(interval_s, took_s * (1 - share) / share)
    return interval_s
