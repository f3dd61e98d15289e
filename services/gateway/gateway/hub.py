"""In-process fan-out of notifications to the patient's open event streams.

The database row is the record; the hub only wakes streams up. A stream that misses a
wake-up (or a replica that did not consume the event) still catches up from the table
via `Last-Event-ID`, so nothing depends on the hub being perfect.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict


class NotificationHub:
    """Wakes the streams of one patient when a notification for them is stored."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    def listen(self, patient_id: str) -> asyncio.Event:
        """An event set whenever something new is stored for the patient."""
        waiter = asyncio.Event()
        self._waiters[patient_id].add(waiter)
        return waiter

    def forget(self, patient_id: str, waiter: asyncio.Event) -> None:
        """Stop waking a closed stream."""
        waiters = self._waiters.get(patient_id)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[patient_id]

    def wake(self, patient_id: str) -> None:
        """Wake every open stream of the patient."""
        for waiter in self._waiters.get(patient_id, ()):
            waiter.set()

    def listeners(self, patient_id: str) -> int:
        """How many streams the patient has open."""
        return len(self._waiters.get(patient_id, ()))
