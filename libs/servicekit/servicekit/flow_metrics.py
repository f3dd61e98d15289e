"""Metrics of how events flow through a service, for the event-flow dashboard and alerts.

* `event_age_seconds{service, consumer}`: from the event's `ce_time` (when its producer
  wrote it) to the moment this consumer starts handling it: the end-to-end delay of each
  hop, whatever lag, retries or a stuck relay caused it.
* `outbox_oldest_pending_age_seconds{service}`: age of the oldest row not yet published
  (0 when none), refreshed at each scrape: a backlog count says how much, this says how
  long, which is what a patient waiting for a result feels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import Gauge, Histogram
from sqlalchemy import func, select

from servicekit.tables import OutboxRow

if TYPE_CHECKING:
    from servicekit.db import Database

EVENT_AGE = Histogram(
    "event_age_seconds",
    "From the event's ce_time to the start of its handling, per consumer",
    ["service", "consumer"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)
OUTBOX_OLDEST_PENDING_AGE = Gauge(
    "outbox_oldest_pending_age_seconds",
    "Age of the oldest outbox row waiting to be published (0: none)",
    ["service"],
)
SCRAPE_QUERY_TIMEOUT_S = 2.0


def observe_event_age(
    service: str,
    consumer: str,
    headers: Mapping[str, str | bytes] | Iterable[tuple[str, bytes]],
) -> None:
    """Observe the age of a message about to be handled (no `ce_time`: nothing observed;
    a malformed one is the envelope check's business, not this metric's)."""
    observe_event_ages(service, consumer, [headers])


def observe_event_ages(
    service: str,
    consumer: str,
    messages: Iterable[Mapping[str, str | bytes] | Iterable[tuple[str, bytes]]],
) -> None:
    """`observe_event_age` for a batch's messages (one label lookup, one clock reading:
    per message they were 2% of records' CPU draining a backlog)."""
    histogram = EVENT_AGE.labels(service, consumer)
    now = datetime.now(UTC)
    for headers in messages:
        items = headers.items() if isinstance(headers, Mapping) else headers
        for key, value in items:
            if key != "ce_time":
                continue
            text = value.decode() if isinstance(value, bytes) else value
            try:
                written = datetime.fromisoformat(text)
            except ValueError:
                break
            if written.tzinfo is not None:
                histogram.observe(max(0.0, (now - written).total_seconds()))
            break


async def refresh_outbox_age(service: str, db: Database) -> None:
    """Set the oldest-pending gauge from the outbox table (bounded: a slow database must
    not hang the scrape; the gauge then keeps its last value)."""
    try:
        async with asyncio.timeout(SCRAPE_QUERY_TIMEOUT_S), db.sessions() as session:
            oldest = await session.scalar(
                select(func.min(OutboxRow.created_at)).where(OutboxRow.status == "pending")
            )
    except Exception:  # the scrape must answer whatever the database does
        return
    if oldest is None:
        OUTBOX_OLDEST_PENDING_AGE.labels(service).set(0)
        return
    at = oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)
    OUTBOX_OLDEST_PENDING_AGE.labels(service).set(
        max(0.0, (datetime.now(UTC) - at).total_seconds())
    )
