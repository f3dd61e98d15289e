"""The event-number watermark of a Subscription (PostgreSQL): every number at or below it
has an outcome; the numbers above it that have one are rows, read back to find duplicates
and forgotten once the watermark passes them. `record_outcomes` moves it without writing
the numbers it passes, so the rows left are exactly the outcomes still above a gap."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from ehr_connector import store as connector_store
from ehr_connector.app import MIGRATIONS
from ehr_connector.inbound import store
from ehr_connector.inbound.service.processor import Summary
from ehr_connector.inbound.tables import InboundSubscription, ProcessedEvent
from servicekit.migrations import _config, set_target_metadata

pytestmark = [pytest.mark.integration]
T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
SUB = "sub-1"


def _upgrade(url: str) -> None:
    set_target_metadata(connector_store.metadata)
    command.upgrade(_config(url, MIGRATIONS), "heads")


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    await asyncio.to_thread(_upgrade, database_url)
    engine = create_async_engine(database_url)
    made = async_sessionmaker(engine, expire_on_commit=False)
    async with made.begin() as session:
        session.add(
            InboundSubscription(
                topic="t",
                subscription_id=SUB,
                resource_type="DiagnosticReport",
                status="active",
                payload="id-only",
                heartbeat_period_s=60,
                last_event_number=0,
                highest_event_number=0,
                events_since_start=0,
                created_at=T0,
                updated_at=T0,
            )
        )
    yield made
    await engine.dispose()


async def commit(sessions: async_sessionmaker[AsyncSession], *numbers: int) -> set[int]:
    """Record `numbers` as the processor's commit does; returns those already recorded."""
    async with sessions.begin() as session:
        row = await store.subscription_by_id(session, SUB, lock=True)
        assert row is not None
        stored = await store.processed_above_watermark(session, row, numbers)
        done = {n for n in numbers if n <= row.last_event_number or n in stored}
        new = [store.Processed(n, "published", None) for n in numbers if n not in done]
        await store.record_outcomes(session, row, new, stored, T0)
        return done


async def state(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, list[int]]:
    async with sessions() as session:
        row = await store.subscription_by_id(session, SUB)
        assert row is not None
        rows = (
            await session.scalars(select(ProcessedEvent.event_number).order_by("event_number"))
        ).all()
        return row.last_event_number, list(rows)


async def test_numbers_in_order_move_the_watermark_and_leave_no_rows(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    for n in (1, 2, 3):
        assert await commit(sessions, n) == set()
    assert await state(sessions) == (3, [])
    assert await commit(sessions, 2, 3) == {2, 3}  # a redelivery is recognised
    assert await state(sessions) == (3, [])


async def test_numbers_above_a_gap_wait_as_rows_until_it_closes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    assert await commit(sessions, 1) == set()
    assert await commit(sessions, 3) == set()
    assert await commit(sessions, 5, 4) == set()
    assert await state(sessions) == (1, [3, 4, 5])
    assert await commit(sessions, 4, 6) == {4}  # 4 again while 2 is still missing
    assert await state(sessions) == (1, [3, 4, 5, 6])
    assert await commit(sessions, 2) == set()
    assert await state(sessions) == (6, [])
    assert await commit(sessions, 3, 7) == {3}
    assert await state(sessions) == (7, [])


async def test_a_gap_as_wide_as_the_window_closes_in_steps(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Numbers 2..7001 are recorded (a long outage's recovery), then 1 arrives: the
    # watermark moves past the first window and on over the rest.
    async with sessions.begin() as session:
        await session.execute(
            insert(ProcessedEvent),
            [
                {
                    "subscription_id": SUB,
                    "event_number": n,
                    "outcome": "published",
                    "resource_ref": None,
                    "processed_at": T0,
                }
                for n in range(2, 7002)
            ],
        )
    assert await commit(sessions, 7001, 9000) == {7001}
    assert await state(sessions) == (0, [*range(2, 7002), 9000])
    assert await commit(sessions, 1) == set()
    assert await state(sessions) == (7001, [9000])


def test_a_commit_tells_whether_numbers_up_to_the_notifications_last_are_missing() -> None:
    # The webhook asks after each notification (a gap schedules recovery): the commit's
    # own view answers without reading the database again.
    assert Summary().has_gap(5) is None  # nothing committed: the webhook reads
    done = Summary(watermark=4, recorded_above=frozenset({6, 7}))
    assert done.has_gap(4) is False
    assert done.has_gap(5) is True
    assert done.has_gap(7) is True  # 5 is still missing
    assert Summary(watermark=7).has_gap(7) is False
    assert Summary(watermark=4, recorded_above=frozenset({5, 6})).has_gap(6) is False
    assert done.has_gap(4 + store.WATERMARK_WINDOW + 1) is None  # beyond what it read
