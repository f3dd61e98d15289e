"""Prometheus metrics every service exports on `/metrics`.

Defined once per process (prometheus_client registries are global), labelled by service.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession

OUTBOX_BACKLOG = Gauge("outbox_backlog", "Outbox rows waiting to be published", ["service"])
OUTBOX_OLDEST_AGE = Gauge(
    "outbox_oldest_pending_seconds",
    "Age of the oldest outbox row waiting to be published (0 when none)",
    ["service"],
)
OUTBOX_PUBLISHED = Counter(
    "outbox_published_total", "Events published from the outbox", ["service", "topic"]
)
OUTBOX_REPUBLISHED = Counter(
    "outbox_republished_total",
    "Sent outbox rows published again because the broker lost them after acknowledging",
    ["service", "topic"],
)
OUTBOX_PUBLISH_ERRORS = Counter(
    "outbox_publish_errors_total", "Failed publish attempts from the outbox", ["service"]
)
CONSUMED = Counter(
    "consumer_messages_total",
    "Messages handled by a consumer, by outcome",
    ["service", "consumer", "outcome"],
)
HANDLER_LATENCY = Histogram(
    "consumer_handler_seconds",
    "Time to handle one message, retries included",
    ["service", "consumer"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "consumer_batch_events",
    "Events of one partition handled in one transaction (1: one at a time)",
    ["service", "consumer"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
)
CONSUMER_LAG = Gauge(
    "consumer_lag",
    "Messages of an assigned partition not yet committed by the consumer group",
    ["service", "consumer", "topic", "partition"],
)
DLQ_OPEN = Gauge(
    "dead_letters_open", "Dead letters not yet re-driven or discarded", ["service", "consumer"]
)
PARKED = Gauge(
    "parked_messages", "Messages held behind an open dead letter", ["service", "consumer"]
)
DLQ_TOTAL = Counter(
    "dead_letters_total", "Messages sent to a dead-letter topic", ["service", "consumer", "kind"]
)


class CounterChild(Protocol):
    """A labelled counter (`Counter(...).labels(...)`)."""

    def inc(self, amount: float = 1) -> None: ...


def inc_after_commit(session: AsyncSession, counter: CounterChild) -> None:
    """Count once the session's transaction commits: a retried handler or a rolled-back
    request must not count twice."""
    sa_event.listen(session.sync_session, "after_commit", lambda _s: counter.inc(), once=True)
