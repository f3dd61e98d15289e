"""Persisted subscription state and events (SQLAlchemy Core, PostgreSQL).

- `subscription_state`: per Subscription, the last event number assigned
  (`events_since_start`), the last one handed to the channel (`last_delivered`), and the
  delivery failure count and error.
- `subscription_events`: every event with its gap-free number, the focus as it was at the
  event, and its additional-context references; kept for `SANDBOX_EVENT_RETENTION_HOURS`
  so `$events` can replay what a receiver missed.

Numbers are assigned in the change feed's commit order, one change at a time, inside one
transaction with the event row, so they have no gaps and survive restarts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

metadata = MetaData()

subscription_state = Table(
    "subscription_state",
    metadata,
    Column("subscription_id", String(64), primary_key=True),
    Column("events_since_start", Integer, nullable=False),
    Column("last_delivered", Integer, nullable=False),
    Column("consecutive_failures", Integer, nullable=False),
    Column("last_error", Text),
    Column("started_at", DateTime(timezone=True), nullable=False),
)

subscription_events = Table(
    "subscription_events",
    metadata,
    Column("subscription_id", String(64), primary_key=True),
    Column("event_number", Integer, primary_key=True),
    Column("topic", String(256), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("interaction", String(8), nullable=False),
    Column("focus_type", String(64), nullable=False),
    Column("focus_id", String(64), nullable=False),
    Column("focus_version", String(64)),
    Column("focus", Text),
    Column("context", Text, nullable=False),
    Index("ix_subscription_events_occurred", "occurred_at"),
)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@dataclass(frozen=True)
class StoredEvent:
    """One persisted event of one subscription."""

    subscription_id: str
    number: int
    topic: str
    occurred_at: datetime
    interaction: str
    focus_type: str
    focus_id: str
    focus_version: str | None
    focus: dict[str, Any] | None
    context: tuple[str, ...]


@dataclass(frozen=True)
class DeliveryState:
    """Counters of one subscription."""

    subscription_id: str
    events_since_start: int
    last_delivered: int
    consecutive_failures: int
    last_error: str | None


@dataclass(frozen=True)
class NewEvent:
    """An event about to be numbered and stored."""

    topic: str
    occurred_at: datetime
    interaction: str
    focus_type: str
    focus_id: str
    focus_version: str | None
    focus: dict[str, Any] | None
    context: Sequence[str]


def _event(row: Any) -> StoredEvent:
    return StoredEvent(
        subscription_id=row.subscription_id,
        number=row.event_number,
        topic=row.topic,
        occurred_at=_aware(row.occurred_at),
        interaction=row.interaction,
        focus_type=row.focus_type,
        focus_id=row.focus_id,
        focus_version=row.focus_version,
        focus=json.loads(row.focus) if row.focus else None,
        context=tuple(json.loads(row.context)),
    )


def _new_state(subscription_id: str, *, events_since_start: int) -> Any:
    """The insert of a Subscription's counters, starting now."""
    return insert(subscription_state).values(
        subscription_id=subscription_id,
        events_since_start=events_since_start,
        last_delivered=0,
        consecutive_failures=0,
        last_error=None,
        started_at=_utc(datetime.now(UTC)),
    )


async def append_in(conn: AsyncConnection, subscription_id: str, event: NewEvent) -> int:
    """Number and store an event in the caller's transaction (the write that caused it);
    returns its number. Two statements: the counter's increment returns the number."""
    number = await conn.scalar(
        update(subscription_state)
        .where(subscription_state.c.subscription_id == subscription_id)
        .values(events_since_start=subscription_state.c.events_since_start + 1)
        .returning(subscription_state.c.events_since_start)
    )
    if number is None:
        # The Subscription's first event: its counters start here. A concurrent insert of
        # the same row (a channel reading its state) fails this one on the primary key,
        # and the write is tried again, finding the row.
        number = 1
        await conn.execute(_new_state(subscription_id, events_since_start=number))
    await conn.execute(
        insert(subscription_events).values(
            subscription_id=subscription_id,
            event_number=number,
            topic=event.topic,
            occurred_at=_utc(event.occurred_at),
            interaction=event.interaction,
            focus_type=event.focus_type,
            focus_id=event.focus_id,
            focus_version=event.focus_version,
            focus=json.dumps(event.focus, separators=(",", ":"))
            if event.focus is not None
            else None,
            context=json.dumps(list(event.context)),
        )
    )
    return int(number)


class EventLog:
    """Subscription counters and retained events in the sandbox database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create_tables(self) -> None:
        """Create the tables if they do not exist (idempotent)."""
        async with self._engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def _ensure_state(self, conn: AsyncConnection, subscription_id: str) -> Any:
        row = (
            await conn.execute(
                select(subscription_state).where(
                    subscription_state.c.subscription_id == subscription_id
                )
            )
        ).first()
        if row is None:
            await conn.execute(_new_state(subscription_id, events_since_start=0))
            row = (
                await conn.execute(
                    select(subscription_state).where(
                        subscription_state.c.subscription_id == subscription_id
                    )
                )
            ).one()
        return row

    async def state(self, subscription_id: str) -> DeliveryState:
        """The counters of a subscription (created at zero on first use)."""
        async with self._engine.begin() as conn:
            row = await self._ensure_state(conn, subscription_id)
        return DeliveryState(
            subscription_id=subscription_id,
            events_since_start=row.events_since_start,
            last_delivered=row.last_delivered,
            consecutive_failures=row.consecutive_failures,
            last_error=row.last_error,
        )

    async def append(self, subscription_id: str, event: NewEvent) -> int:
        """Number and store an event in a transaction of its own; returns its number."""
        async with self._engine.begin() as conn:
            return await append_in(conn, subscription_id, event)

    async def pending(self, subscription_id: str, after: int, limit: int) -> list[StoredEvent]:
        """Retained events numbered above `after`, oldest first, at most `limit`."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(subscription_events)
                .where(
                    and_(
                        subscription_events.c.subscription_id == subscription_id,
                        subscription_events.c.event_number > after,
                    )
                )
                .order_by(subscription_events.c.event_number)
                .limit(limit)
            )
            return [_event(row) for row in rows]

    async def range(
        self, subscription_id: str, since: int | None, until: int | None, limit: int
    ) -> list[StoredEvent]:
        """Retained events with since <= number <= until (either bound optional)."""
        conditions = [subscription_events.c.subscription_id == subscription_id]
        if since is not None:
            conditions.append(subscription_events.c.event_number >= since)
        if until is not None:
            conditions.append(subscription_events.c.event_number <= until)
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(subscription_events)
                .where(and_(*conditions))
                .order_by(subscription_events.c.event_number)
                .limit(limit)
            )
            return [_event(row) for row in rows]

    async def mark_delivered(self, subscription_id: str, number: int) -> None:
        """Record that events up to `number` were handed over; clears the failure count.

        One statement (the channel read the counters, creating them, before it sent)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(subscription_state)
                .where(subscription_state.c.subscription_id == subscription_id)
                .values(
                    last_delivered=func.greatest(subscription_state.c.last_delivered, number),
                    consecutive_failures=0,
                    last_error=None,
                )
            )

    async def record_failure(self, subscription_id: str, error: str) -> int:
        """Count one failed delivery attempt; returns the consecutive failure count."""
        async with self._engine.begin() as conn:
            row = await self._ensure_state(conn, subscription_id)
            failures = int(row.consecutive_failures) + 1
            await conn.execute(
                update(subscription_state)
                .where(subscription_state.c.subscription_id == subscription_id)
                .values(consecutive_failures=failures, last_error=error[:1000])
            )
        return failures

    async def reset_failures(self, subscription_id: str) -> None:
        """Forget past failures (a subscription that is being (re)activated, or whose
        delivery succeeded). With none to forget nothing is written: no commit to wait
        for on each notification."""
        async with self._engine.begin() as conn:
            await self._ensure_state(conn, subscription_id)
            await conn.execute(
                update(subscription_state)
                .where(
                    subscription_state.c.subscription_id == subscription_id,
                    or_(
                        subscription_state.c.consecutive_failures != 0,
                        subscription_state.c.last_error.is_not(None),
                    ),
                )
                .values(consecutive_failures=0, last_error=None)
            )

    async def forget(self, subscription_id: str) -> None:
        """Drop a deleted subscription's counters and events."""
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(subscription_events).where(
                    subscription_events.c.subscription_id == subscription_id
                )
            )
            await conn.execute(
                delete(subscription_state).where(
                    subscription_state.c.subscription_id == subscription_id
                )
            )

    async def prune(self, retention: timedelta) -> int:
        """Delete events older than the retention period; returns how many went."""
        cutoff = _utc(datetime.now(UTC) - retention)
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(subscription_events).where(subscription_events.c.occurred_at < cutoff)
            )
        return int(result.rowcount or 0)
