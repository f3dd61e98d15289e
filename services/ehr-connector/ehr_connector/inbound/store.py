"""All SQL of the inbound side (its tables are in `ehr_connector.inbound.tables`).

Functions take the caller's session and never commit: the use case that owns the
transaction (processing one notification, one back-fill page...) commits it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, tuple_
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from ehr_connector.inbound.tables import (
    Backfill,
    BackfillItem,
    CanaryRun,
    InboundSubscription,
    ProcessedEvent,
    Rejection,
    ResourceVersionSeen,
    SeenJti,
)
from ehr_connector.store import OutboundWrite
from servicekit.tables import OutboxRow

# How many numbers above the watermark one step looks at (a larger gap just takes more steps).
WATERMARK_WINDOW = 5000


async def _insert_ignore(session: AsyncSession, model: Any, values: dict[str, Any]) -> bool:
    """INSERT unless the primary key exists; True when the row is new."""
    stmt = postgresql.insert(model).values(**values).on_conflict_do_nothing()
    result = await session.execute(stmt)
    return bool(result.rowcount)  # type: ignore[attr-defined]


# -- subscriptions -------------------------------------------------------------------------


async def subscriptions(session: AsyncSession) -> list[InboundSubscription]:
    """Every topic's Subscription row, by topic."""
    stmt = select(InboundSubscription).order_by(InboundSubscription.topic)
    return list((await session.execute(stmt)).scalars())


async def subscription_for_topic(session: AsyncSession, topic: str) -> InboundSubscription | None:
    """The row of one topic."""
    return await session.get(InboundSubscription, topic)


async def subscription_by_id(
    session: AsyncSession, subscription_id: str, *, lock: bool = False
) -> InboundSubscription | None:
    """The row of the Subscription with this EHR id (locked for update if asked)."""
    stmt = select(InboundSubscription).where(InboundSubscription.subscription_id == subscription_id)
    if lock:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


# -- processed events and versions ---------------------------------------------------------


async def processed_numbers(
    session: AsyncSession, row: InboundSubscription, numbers: Iterable[int]
) -> set[int]:
    """Which of `numbers` already have an outcome (everything up to the watermark has)."""
    wanted = set(numbers)
    done = {n for n in wanted if n <= row.last_event_number}
    above = sorted(wanted - done)
    if above:
        stmt = select(ProcessedEvent.event_number).where(
            ProcessedEvent.subscription_id == row.subscription_id,
            ProcessedEvent.event_number.in_(above),
        )
        done |= set((await session.execute(stmt)).scalars())
    return done


async def processed_above_watermark(
    session: AsyncSession, row: InboundSubscription, numbers: Iterable[int]
) -> set[int]:
    """The numbers above the watermark that have an outcome: every one of the watermark's
    window (what `record_outcomes` moves it over) and those of `numbers` beyond it."""
    beyond = sorted(n for n in set(numbers) if n > row.last_event_number + WATERMARK_WINDOW)
    window = ProcessedEvent.event_number <= row.last_event_number + WATERMARK_WINDOW
    stmt = select(ProcessedEvent.event_number).where(
        ProcessedEvent.subscription_id == row.subscription_id,
        ProcessedEvent.event_number > row.last_event_number,
        or_(window, ProcessedEvent.event_number.in_(beyond)) if beyond else window,
    )
    return set((await session.execute(stmt)).scalars())


@dataclass(frozen=True)
class Processed:
    """An event number's outcome, to be recorded."""

    number: int
    outcome: str
    resource_ref: str | None


async def record_outcomes(
    session: AsyncSession,
    row: InboundSubscription,
    outcomes: Sequence[Processed],
    stored: set[int],
    now: datetime,
) -> None:
    """Record event numbers' outcomes and move the watermark over those that now follow
    it without a gap. `stored`: the numbers above the watermark already recorded (all of
    its window, from `processed_above_watermark` in this transaction, under the row's
    lock). A number the watermark passes is not written at all; the rows it passes are
    forgotten. One statement or none in the usual case, where the new number follows the
    watermark (a row written, read back and deleted was four round trips an event)."""
    start = row.last_event_number
    known = stored | {o.number for o in outcomes}
    while row.last_event_number + 1 in known:
        row.last_event_number += 1
    if row.last_event_number >= start + WATERMARK_WINDOW:
        # A gap of a whole window closed at once: the rows beyond it are not all known.
        row.last_event_number = start
        await _insert_outcomes(session, row.subscription_id, outcomes, now)
        await advance_watermark(session, row)
        return
    await _insert_outcomes(
        session,
        row.subscription_id,
        [o for o in outcomes if o.number > row.last_event_number],
        now,
    )
    if any(start < n <= row.last_event_number for n in stored):
        await session.execute(
            delete(ProcessedEvent).where(
                ProcessedEvent.subscription_id == row.subscription_id,
                ProcessedEvent.event_number <= row.last_event_number,
            )
        )


async def _insert_outcomes(
    session: AsyncSession, subscription_id: str, outcomes: Sequence[Processed], now: datetime
) -> None:
    if outcomes:
        await session.execute(
            insert(ProcessedEvent),
            [
                {
                    "subscription_id": subscription_id,
                    "event_number": o.number,
                    "outcome": o.outcome,
                    "resource_ref": o.resource_ref,
                    "processed_at": now,
                }
                for o in outcomes
            ],
        )


async def advance_watermark(session: AsyncSession, row: InboundSubscription) -> int:
    """Move the watermark over the processed numbers that now follow it without a gap,
    and forget the rows below it (a number at or below the watermark is processed)."""
    while True:
        stmt = (
            select(ProcessedEvent.event_number)
            .where(
                ProcessedEvent.subscription_id == row.subscription_id,
                ProcessedEvent.event_number > row.last_event_number,
                ProcessedEvent.event_number <= row.last_event_number + WATERMARK_WINDOW,
            )
            .order_by(ProcessedEvent.event_number)
        )
        numbers = list((await session.execute(stmt)).scalars())
        start = row.last_event_number
        for number in numbers:
            if number != row.last_event_number + 1:
                break
            row.last_event_number = number
        if row.last_event_number == start or row.last_event_number < start + WATERMARK_WINDOW:
            break
    await session.execute(
        delete(ProcessedEvent).where(
            ProcessedEvent.subscription_id == row.subscription_id,
            ProcessedEvent.event_number <= row.last_event_number,
        )
    )
    return row.last_event_number


async def missing_numbers(
    session: AsyncSession, row: InboundSubscription, upto: int, limit: int
) -> list[int]:
    """Event numbers above the watermark, up to `upto`, that have no outcome yet."""
    if upto <= row.last_event_number:
        return []
    stop = min(upto, row.last_event_number + limit)
    stmt = select(ProcessedEvent.event_number).where(
        ProcessedEvent.subscription_id == row.subscription_id,
        ProcessedEvent.event_number > row.last_event_number,
        ProcessedEvent.event_number <= stop,
    )
    done = set((await session.execute(stmt)).scalars())
    return [n for n in range(row.last_event_number + 1, stop + 1) if n not in done]


async def has_gap(session: AsyncSession, row: InboundSubscription, upto: int) -> bool:
    """Whether some number above the watermark, up to `upto`, has no outcome yet."""
    if upto <= row.last_event_number:
        return False
    stmt = (
        select(func.count())
        .select_from(ProcessedEvent)
        .where(
            ProcessedEvent.subscription_id == row.subscription_id,
            ProcessedEvent.event_number > row.last_event_number,
            ProcessedEvent.event_number <= upto,
        )
    )
    return int(await session.scalar(stmt) or 0) < upto - row.last_event_number


async def forget_subscription_events(session: AsyncSession, subscription_id: str) -> None:
    """Drop the processed numbers of a Subscription that was replaced."""
    await session.execute(
        delete(ProcessedEvent).where(ProcessedEvent.subscription_id == subscription_id)
    )


async def versions_seen(
    session: AsyncSession, keys: Sequence[tuple[str, str, str]]
) -> set[tuple[str, str, str]]:
    """Which `(type, id, version)` already have an outcome."""
    if not keys:
        return set()
    stmt = select(
        ResourceVersionSeen.resource_type,
        ResourceVersionSeen.fhir_id,
        ResourceVersionSeen.version_id,
    ).where(
        tuple_(
            ResourceVersionSeen.resource_type,
            ResourceVersionSeen.fhir_id,
            ResourceVersionSeen.version_id,
        ).in_(list(keys))
    )
    return {(r[0], r[1], r[2]) for r in (await session.execute(stmt)).all()}


async def add_version(
    session: AsyncSession,
    resource_type: str,
    fhir_id: str,
    version_id: str,
    outcome: str,
    now: datetime,
) -> None:
    """Record that a resource version has its outcome."""
    session.add(
        ResourceVersionSeen(
            resource_type=resource_type,
            fhir_id=fhir_id,
            version_id=version_id,
            outcome=outcome,
            processed_at=now,
        )
    )


async def prune_versions(session: AsyncSession, before: datetime) -> int:
    """Forget resource versions handled before `before`."""
    result = await session.execute(
        delete(ResourceVersionSeen).where(ResourceVersionSeen.processed_at < before)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def resource_written_by_us(session: AsyncSession, resource_type: str, fhir_id: str) -> bool:
    """Whether the outbound write log has any version of this resource (for the echo rule
    in `domain.echo_verdict`)."""
    stmt = select(OutboundWrite.id).where(
        OutboundWrite.resource_type == resource_type, OutboundWrite.fhir_id == fhir_id
    )
    return (await session.execute(stmt.limit(1))).first() is not None


# -- rejections ----------------------------------------------------------------------------


async def add_rejection(
    session: AsyncSession,
    *,
    subscription_id: str | None,
    event_number: int | None,
    resource_ref: str,
    version_id: str | None,
    reason: str,
    now: datetime,
) -> None:
    """Record a resource that could not be mapped, with the reason."""
    session.add(
        Rejection(
            subscription_id=subscription_id,
            event_number=event_number,
            resource_ref=resource_ref[:200],
            version_id=version_id,
            reason=reason[:2000],
            created_at=now,
        )
    )


async def rejections(session: AsyncSession, limit: int, before_id: int | None) -> list[Rejection]:
    """Recorded rejections, newest first (`before_id` pages further back)."""
    stmt = select(Rejection).order_by(Rejection.id.desc()).limit(limit)
    if before_id is not None:
        stmt = stmt.where(Rejection.id < before_id)
    return list((await session.execute(stmt)).scalars())


# -- replay protection ---------------------------------------------------------------------


async def remember_jti(session: AsyncSession, jti: str, now: datetime) -> bool:
    """Record a signature id; False when it was seen before (a replay)."""
    return await _insert_ignore(session, SeenJti, {"jti": jti, "seen_at": now})


async def prune_jti(session: AsyncSession, before: datetime) -> int:
    """Forget signature ids older than the replay window (their `iat` is refused anyway)."""
    result = await session.execute(delete(SeenJti).where(SeenJti.seen_at < before))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- back-fills ----------------------------------------------------------------------------

ACTIVE_STATES = ("pending", "running")
# Every state a back-fill job can be in (the `backfills` gauge has one series each).
BACKFILL_STATES = (*ACTIVE_STATES, "done", "failed")


async def get_backfill(session: AsyncSession, backfill_id: str) -> Backfill | None:
    """One back-fill."""
    return await session.get(Backfill, backfill_id)


async def latest_backfill(session: AsyncSession, patient_id: str) -> Backfill | None:
    """A patient's most recent back-fill."""
    stmt = (
        select(Backfill)
        .where(Backfill.patient_id == patient_id)
        .order_by(Backfill.created_at.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def active_backfill(session: AsyncSession, patient_id: str) -> Backfill | None:
    """A patient's back-fill that has not finished, if any."""
    stmt = (
        select(Backfill)
        .where(Backfill.patient_id == patient_id, Backfill.state.in_(ACTIVE_STATES))
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def claim_backfill(
    session: AsyncSession, owner: str, now: datetime, lease: timedelta
) -> Backfill | None:
    """Lease the oldest unfinished back-fill nobody holds (or whose holder went silent)."""
    stmt = (
        select(Backfill)
        .where(
            Backfill.state.in_(ACTIVE_STATES),
            or_(
                Backfill.lease_until.is_(None),
                Backfill.lease_until < now,
                Backfill.lease_owner == owner,
            ),
        )
        .order_by(Backfill.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    row = (await session.execute(stmt)).scalar_one_or_none()
    if row is not None:
        row.lease_owner = owner
        row.lease_until = now + lease
        row.state = "running"
        row.updated_at = now
    return row


async def lock_backfill(session: AsyncSession, backfill_id: str, owner: str) -> Backfill | None:
    """The back-fill, locked for update, if `owner` still holds its lease."""
    stmt = (
        select(Backfill)
        .where(Backfill.backfill_id == backfill_id, Backfill.lease_owner == owner)
        .with_for_update()
    )
    return (await session.execute(stmt)).scalar_one_or_none()


_BACKFILLS_BY_STATE = select(Backfill.state, func.count()).group_by(Backfill.state)


async def count_backfills(session: AsyncSession) -> dict[str, int]:
    """How many back-fills are in each state (states with none are absent). One statement:
    the loop refreshes these gauges every time it looks for work (each second when idle),
    and a count per state was four scans of a table that keeps every finished job."""
    rows = (await session.execute(_BACKFILLS_BY_STATE)).all()
    return {str(state): int(n) for state, n in rows}


async def items_published(
    session: AsyncSession, backfill_id: str, keys: Sequence[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which `(type, id)` this back-fill has already published."""
    if not keys:
        return set()
    stmt = select(BackfillItem.resource_type, BackfillItem.fhir_id).where(
        BackfillItem.backfill_id == backfill_id,
        tuple_(BackfillItem.resource_type, BackfillItem.fhir_id).in_(list(keys)),
    )
    return {(r[0], r[1]) for r in (await session.execute(stmt)).all()}


async def add_items(
    session: AsyncSession, backfill_id: str, keys: Iterable[tuple[str, str]]
) -> None:
    """Record resources this back-fill has published."""
    session.add_all(
        BackfillItem(backfill_id=backfill_id, resource_type=t, fhir_id=i) for t, i in keys
    )


# -- canary ----------------------------------------------------------------------------------


async def add_canary_run(session: AsyncSession, run_id: str, now: datetime) -> CanaryRun:
    """Record a canary run before it writes to the EHR (its notification may come first)."""
    run = CanaryRun(run_id=run_id, state="writing", created_at=now)
    session.add(run)
    return run


async def canary_run(session: AsyncSession, run_id: str) -> CanaryRun | None:
    """One canary run."""
    return await session.get(CanaryRun, run_id)


async def outbox_sent_at(session: AsyncSession, event_id: str) -> datetime | None:
    """When the outbox relay published an event (None while it waits)."""
    stmt = select(OutboxRow.sent_at).where(
        and_(OutboxRow.event_id == event_id, OutboxRow.status == "sent")
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def prune_canary_runs(session: AsyncSession, before: datetime) -> None:
    """Forget canary runs older than `before`."""
    await session.execute(delete(CanaryRun).where(CanaryRun.created_at < before))
