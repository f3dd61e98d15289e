"""The gateway's tables and all its SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    DateTime,
    Index,
    Select,
    SmallInteger,
    String,
    UniqueConstraint,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from gateway.domain import GENESIS, AccessRecord
from servicekit.db import new_metadata


class Base(DeclarativeBase):
    """Declarative base of the gateway tables."""

    metadata = new_metadata()


metadata = Base.metadata


class PatientLink(Base):
    """A portal identity linked to its EHR Patient; `patient_id` is our internal id."""

    __tablename__ = "patient_links"

    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(200))
    patient_fhir_id: Mapped[str] = mapped_column(String(64))
    linked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("issuer", "patient_fhir_id", name="uq_patient_links_identity"),
    )


class PatientNotification(Base):
    """A change to tell the patient about; kept so a reconnecting stream can catch up."""

    __tablename__ = "patient_notifications"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    ref: Mapped[str] = mapped_column(String(128))
    status: Mapped[str | None] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # W3C traceparent of the consumer span that stored it: the SSE push continues that trace.
    traceparent: Mapped[str | None] = mapped_column(String(55), default=None)
    # When the EHR wrote the fact (the event's source version), for the latency histogram.
    source_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (Index("ix_patient_notifications_patient_id", "patient_id", "id"),)


class AccessLogEntry(Base):
    """One read of a patient's health data; each row hashes its predecessor (tamper-evident)."""

    __tablename__ = "access_log"
    # A row is the successor of one row at most: two appends from the same head (a writer
    # whose idea of the head is stale, another gateway) cannot both commit, so the chain
    # never forks, with or without the chain's lock (`append_after_head`).
    __table_args__ = (Index("uq_access_log_prev_hash", "prev_hash", unique=True),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # 1: unkeyed SHA-256 (rows from before the keyed chain), 2: HMAC-SHA-256 with the key.
    chain: Mapped[int] = mapped_column(SmallInteger, default=2, server_default="1")
    actor_id: Mapped[str | None] = mapped_column(String(200))
    on_behalf_of: Mapped[str | None] = mapped_column(String(200))
    resource_id: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16), default="allowed", server_default="allowed")
    client_id: Mapped[str | None] = mapped_column(String(200))
    trace_id: Mapped[str | None] = mapped_column(String(32))


class CaregiverGrant(Base):
    """A patient's consent to a caregiver's access (the gateway's authoritative copy: every
    caregiver request and every push to a caregiver's stream is checked against it; the
    connector records it in the EHR as a FHIR Consent)."""

    __tablename__ = "caregiver_grants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    patient_fhir_id: Mapped[str] = mapped_column(String(64))
    related_person_fhir_id: Mapped[str] = mapped_column(String(64))
    parts: Mapped[list[str]] = mapped_column(ARRAY(String(32)))
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (Index("ix_caregiver_grants_patient", "patient_id", "related_person_fhir_id"),)


async def grants_of(session: AsyncSession, patient_id: str) -> list[CaregiverGrant]:
    """Every grant a patient made, newest first."""
    stmt = (
        select(CaregiverGrant)
        .where(CaregiverGrant.patient_id == patient_id)
        .order_by(CaregiverGrant.granted_at.desc(), CaregiverGrant.id)
    )
    return list((await session.execute(stmt)).scalars())


async def lock_caregiver(
    session: AsyncSession, patient_id: str, related_person_fhir_id: str
) -> None:
    """Serialise the patient's grants to one caregiver until the transaction ends: "no
    second live grant" depends on the time, so no unique index can hold it, and two grants
    sent at once would otherwise both see none."""
    key = f"caregiver-grant:{patient_id}:{related_person_fhir_id}"
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))


async def live_grants(
    session: AsyncSession, patient_id: str, related_person_fhir_id: str, now: datetime
) -> list[CaregiverGrant]:
    """A caregiver's grants from the patient that are neither revoked nor over."""
    stmt = select(CaregiverGrant).where(
        CaregiverGrant.patient_id == patient_id,
        CaregiverGrant.related_person_fhir_id == related_person_fhir_id,
        CaregiverGrant.revoked_at.is_(None),
        CaregiverGrant.end > now,
    )
    return list((await session.execute(stmt)).scalars())


async def link_for_identity(
    session: AsyncSession, issuer: str, patient_fhir_id: str
) -> PatientLink | None:
    """The link of a token's identity, if it was linked before."""
    stmt = select(PatientLink).where(
        PatientLink.issuer == issuer, PatientLink.patient_fhir_id == patient_fhir_id
    )
    return (await session.execute(stmt)).scalar_one_or_none()


@dataclass(frozen=True)
class LateNotes:
    """Which notes of an open stream may still arrive below its cursor: those with an id
    above `floor` (where the stream started), stored since `since`, not yet `delivered`."""

    floor: int
    since: datetime
    delivered: frozenset[int]


async def notifications_since(
    session: AsyncSession,
    patient_id: str,
    after_id: int,
    limit: int = 100,
    *,
    late: LateNotes | None = None,
) -> list[PatientNotification]:
    """A patient's notifications after `after_id` (SSE `Last-Event-ID`), oldest first.

    With `late`, also those with a lower id that were stored recently and not delivered
    yet: ids are drawn when a note is stored but become visible when its transaction
    commits, so two consumers storing notes for one patient at once may commit out of id
    order, and a cursor alone would skip the note that committed last."""
    if late is None:
        stmt, params = _NOTES_AFTER, dict[str, Any]()
    else:
        stmt = _NOTES_AFTER_OR_LATE
        params = {"floor": late.floor, "since": late.since, "delivered": list(late.delivered)}
    params |= {"patient_id": patient_id, "after_id": after_id, "limit": limit}
    return list((await session.execute(stmt, params)).scalars())


def _notes_statement(late: bool) -> Select[tuple[PatientNotification]]:
    # Built once with its values bound at each call: every open stream reads its new notes
    # after each notification, and building this statement per read was about a quarter
    # of that read's CPU in the gateway (py-spy, benchmark 1).
    wanted = PatientNotification.id > bindparam("after_id")
    if late:
        recent = and_(
            PatientNotification.id > bindparam("floor"),
            PatientNotification.created_at >= bindparam("since"),
            # An empty list is NOT IN an empty set: true.
            PatientNotification.id.not_in(bindparam("delivered", expanding=True)),
        )
        wanted = or_(wanted, recent)
    return (
        select(PatientNotification)
        .where(PatientNotification.patient_id == bindparam("patient_id"), wanted)
        .order_by(PatientNotification.id)
        .limit(bindparam("limit"))
    )


_NOTES_AFTER = _notes_statement(late=False)
_NOTES_AFTER_OR_LATE = _notes_statement(late=True)


async def last_access_hash(conn: AsyncConnection) -> str:
    """The hash at the head of the access-log chain."""
    stmt = select(AccessLogEntry.hash).order_by(AccessLogEntry.id.desc()).limit(1)
    return (await conn.execute(stmt)).scalar_one_or_none() or GENESIS


async def access_log_of(
    session: AsyncSession, patient_id: str, limit: int = 200
) -> list[AccessLogEntry]:
    """Who read a patient's data, newest first."""
    stmt = (
        select(AccessLogEntry)
        .where(AccessLogEntry.patient_id == patient_id)
        .order_by(AccessLogEntry.id.desc())
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())


async def whole_access_log(session: AsyncSession) -> list[AccessRecord]:
    """The whole chain, oldest first (for verification): plain rows, not ORM objects, as
    the log is long."""
    t = AccessLogEntry.__table__
    stmt = select(
        t.c.patient_id,
        t.c.actor,
        t.c.action,
        t.c.resource,
        t.c.at,
        t.c.prev_hash,
        t.c.hash,
        t.c.chain,
        t.c.actor_id,
        t.c.on_behalf_of,
        t.c.resource_id,
        t.c.outcome,
        t.c.client_id,
        t.c.trace_id,
        t.c.id,
    ).order_by(t.c.id)
    return [AccessRecord(*row) for row in (await session.execute(stmt)).tuples()]


# One statement, one round trip outside a transaction: takes the chain's lock for its own
# length (a writer holding it, mid-commit, is waited for), appends the rows in list order
# (ids drawn in that order) only if the chain's head is still `prev`. A head that moved
# while the statement's snapshot was taken makes the unique prev_hash index refuse it.
_APPEND_AFTER_HEAD = text(
    """
    WITH chain_lock AS (SELECT pg_advisory_xact_lock(:lock_key)),
    head AS (
        SELECT coalesce(
            (SELECT hash FROM access_log ORDER BY id DESC LIMIT 1), :genesis
        ) AS hash
    )
    INSERT INTO access_log (patient_id, actor, action, resource, at, prev_hash, hash, chain,
                            actor_id, on_behalf_of, resource_id, outcome, client_id, trace_id)
    SELECT r.patient_id, r.actor, r.action, r.resource, r.at, r.prev_hash, r.hash, 2,
           r.actor_id, r.on_behalf_of, r.resource_id, r.outcome, r.client_id, r.trace_id
    FROM chain_lock, head,
         unnest(
             CAST(:patient_id AS varchar[]), CAST(:actor AS varchar[]),
             CAST(:action AS varchar[]), CAST(:resource AS varchar[]),
             CAST(:at AS timestamptz[]), CAST(:prev_hash AS varchar[]),
             CAST(:hash AS varchar[]), CAST(:actor_id AS varchar[]),
             CAST(:on_behalf_of AS varchar[]), CAST(:resource_id AS varchar[]),
             CAST(:outcome AS varchar[]), CAST(:client_id AS varchar[]),
             CAST(:trace_id AS varchar[])
         ) WITH ORDINALITY AS r(patient_id, actor, action, resource, at, prev_hash, hash,
                                actor_id, on_behalf_of, resource_id, outcome, client_id,
                                trace_id, n)
    WHERE head.hash = :prev
    ORDER BY r.n
    """
)
_APPEND_COLUMNS = (
    "patient_id",
    "actor",
    "action",
    "resource",
    "at",
    "prev_hash",
    "hash",
    "actor_id",
    "on_behalf_of",
    "resource_id",
    "outcome",
    "client_id",
    "trace_id",
)


async def append_after_head(
    conn: AsyncConnection, prev: str, rows: list[dict[str, Any]], lock_key: int
) -> bool:
    """Append chained rows (the first one's `prev_hash` is `prev`) if `prev` is still the
    chain's head; False when it is not (nothing written). `conn` must be in autocommit
    mode. Raises IntegrityError when another append from `prev` won meanwhile."""
    params: dict[str, Any] = {c: [row[c] for row in rows] for c in _APPEND_COLUMNS}
    params.update(lock_key=lock_key, genesis=GENESIS, prev=prev)
    result = await conn.execute(_APPEND_AFTER_HEAD, params)
    return int(result.rowcount or 0) == len(rows)


async def append_access_rows(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert chained access-log rows in one round trip; ids are drawn in list order, so
    the chain's order by id is the order its hashes were computed in."""
    if rows:
        await conn.execute(insert(AccessLogEntry), rows)
