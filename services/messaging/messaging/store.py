"""The messaging service's tables and all its SQL.

Free text is stored encrypted (`servicekit.crypto` envelopes in `*_enc` columns, with the
key id in `key_id` so rotation finds rows not yet on the active key). The old plaintext
columns (`threads.subject`, `messages.body`, `pool_items.summary`) only hold rows written
before encryption existed; re-encryption moves them into the envelopes and empties them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from servicekit.db import hold_keys, new_metadata


class Base(DeclarativeBase):
    """Declarative base of the messaging tables."""

    metadata = new_metadata()


metadata = Base.metadata

PATIENT = "outbound"  # a message from the patient (outbound from the portal)
CARE_TEAM = "inbound"  # a message from the care team (inbound from the EHR)


class Thread(Base):
    """A conversation between a patient and the care team."""

    __tablename__ = "threads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    thread_fhir_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    subject: Mapped[str | None] = mapped_column(String(200))  # legacy plaintext only
    subject_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_id: Mapped[str | None] = mapped_column(String(64), index=True)
    pool: Mapped[str] = mapped_column(String(64))
    topic: Mapped[str | None] = mapped_column(String(32))
    rules_version: Mapped[str | None] = mapped_column(String(32))
    origin: Mapped[str] = mapped_column(String(16), default="patient", server_default="patient")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Message(Base):
    """One message in a thread, from the patient or from a clinician."""

    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    thread_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(16))
    communication_fhir_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    sender_display: Mapped[str | None] = mapped_column(String(200))
    body: Mapped[str | None] = mapped_column(Text)  # legacy plaintext only
    body_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_id: Mapped[str | None] = mapped_column(String(64), index=True)
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ehr_status: Mapped[str | None] = mapped_column(String(32))
    care_team_read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    source_version: Mapped[str | None] = mapped_column(String(64))
    source_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    emergency: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")

    __table_args__ = (
        Index("ix_messages_patient_direction_sent", "patient_id", "direction", "sent_at"),
    )


class Attachment(Base):
    """A file attached to a patient's message (content and name encrypted)."""

    __tablename__ = "attachments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer)
    title_enc: Mapped[bytes] = mapped_column(LargeBinary)
    data_enc: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(64), index=True)


class PoolItem(Base):
    """Work routed to a care-team pool: a triage summary or a patient's message."""

    __tablename__ = "pool_items"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pool: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    urgency: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str | None] = mapped_column(Text)  # legacy plaintext only
    summary_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    key_id: Mapped[str | None] = mapped_column(String(64), index=True)
    thread_id: Mapped[str | None] = mapped_column(String(64))
    message_id: Mapped[str | None] = mapped_column(String(64))
    emergency: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_pool_items_pool_created", "pool", "created_at"),)


async def get_thread(session: AsyncSession, thread_id: str) -> Thread | None:
    """One thread by our id."""
    return await session.get(Thread, thread_id)


async def thread_by_fhir_id(session: AsyncSession, thread_fhir_id: str) -> Thread | None:
    """The thread whose first Communication has this EHR id."""
    stmt = select(Thread).where(Thread.thread_fhir_id == thread_fhir_id)
    return (await session.execute(stmt)).scalar_one_or_none()


# The scope in which the consumers writing a patient's messages take turns
# (`Subscription.turns`).
CONVERSATION_TURNS = "messaging.conversation"


async def message_by_fhir_id(session: AsyncSession, fhir_id: str) -> Message | None:
    """A message by its EHR Communication id."""
    stmt = select(Message).where(Message.communication_fhir_id == fhir_id)
    return (await session.execute(stmt)).scalar_one_or_none()


# The portal's hot reads, built once with their values bound at each call: building a
# statement per request, and the cache key SQLAlchemy derives from a new one at each
# execution, cost every thread list (and the home screen) CPU for nothing (py-spy,
# benchmark 4).
_THREADS_OF = (
    select(Thread)
    .where(Thread.patient_id == bindparam("patient_id"))
    .order_by(Thread.updated_at.desc())
)
_UNREAD_COUNTS = (
    select(Message.thread_id, func.count())
    .where(
        Message.patient_id == bindparam("patient_id"),
        Message.direction == CARE_TEAM,
        Message.read_at.is_(None),
    )
    .group_by(Message.thread_id)
)


async def threads_of(session: AsyncSession, patient_id: str) -> list[Thread]:
    """A patient's threads, most recently active first."""
    return list((await session.execute(_THREADS_OF, {"patient_id": patient_id})).scalars())


async def unread_counts(session: AsyncSession, patient_id: str) -> dict[str, int]:
    """Unread care-team messages per thread of a patient (threads with none are absent)."""
    rows = (await session.execute(_UNREAD_COUNTS, {"patient_id": patient_id})).all()
    return {thread_id: int(n) for thread_id, n in rows}


async def messages_in(session: AsyncSession, thread_id: str) -> list[Message]:
    """A thread's messages, oldest first."""
    stmt = (
        select(Message).where(Message.thread_id == thread_id).order_by(Message.sent_at, Message.id)
    )
    return list((await session.execute(stmt)).scalars())


async def attachments_of(session: AsyncSession, message_ids: list[str]) -> list[Attachment]:
    """The attachments of some messages."""
    if not message_ids:
        return []
    stmt = select(Attachment).where(Attachment.message_id.in_(message_ids)).order_by(Attachment.id)
    return list((await session.execute(stmt)).scalars())


async def get_attachment(session: AsyncSession, attachment_id: str) -> Attachment | None:
    """One attachment by id."""
    return await session.get(Attachment, attachment_id)


async def pool_items(session: AsyncSession, pool: str) -> list[PoolItem]:
    """A pool's work items, oldest first."""
    stmt = select(PoolItem).where(PoolItem.pool == pool).order_by(PoolItem.created_at)
    return list((await session.execute(stmt)).scalars())


async def latest_inbound_fhir_id(session: AsyncSession, thread_id: str) -> str | None:
    """The EHR Communication id of the newest clinician message in a thread, if any."""
    stmt = (
        select(Message.communication_fhir_id)
        .where(
            Message.thread_id == thread_id,
            Message.direction == CARE_TEAM,
            Message.communication_fhir_id.is_not(None),
        )
        .order_by(Message.sent_at.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def hold_conversation(session: AsyncSession, patient_id: str) -> None:
    """Hold the patient's conversation until the transaction ends, as the consumers writing
    it do (`CONVERSATION_TURNS`): the patient's sends take turns with each other (the rate
    limit counts what the others committed) and with the care team's answers (both set a
    thread's last activity from what they read)."""
    await hold_keys(session, CONVERSATION_TURNS, [patient_id])


async def sends_since(session: AsyncSession, patient_id: str, since: datetime) -> list[datetime]:
    """When the patient sent messages since a time, oldest first."""
    stmt = (
        select(Message.sent_at)
        .where(
            Message.patient_id == patient_id,
            Message.direction == PATIENT,
            Message.sent_at > since,
        )
        .order_by(Message.sent_at)
    )
    return list((await session.execute(stmt)).scalars())


async def mark_inbound_read(session: AsyncSession, thread_id: str, at: datetime) -> int:
    """Mark a thread's unread clinician messages read; returns how many were."""
    stmt = (
        update(Message)
        .where(
            Message.thread_id == thread_id,
            Message.direction == CARE_TEAM,
            Message.read_at.is_(None),
        )
        .values(read_at=at)
    )
    result = await session.execute(stmt)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def mark_care_team_read(
    session: AsyncSession, thread_id: str, before: datetime, at: datetime
) -> None:
    """The care team answered: the patient's messages before the answer were read by then."""
    stmt = (
        update(Message)
        .where(
            Message.thread_id == thread_id,
            Message.direction == PATIENT,
            Message.sent_at <= before,
            Message.care_team_read_at.is_(None),
        )
        .values(care_team_read_at=at)
    )
    await session.execute(stmt)


# -- key rotation -------------------------------------------------------------------------

ENCRYPTED_TABLES: tuple[type[Thread] | type[Message] | type[Attachment] | type[PoolItem], ...] = (
    Thread,
    Message,
    Attachment,
    PoolItem,
)


async def rows_to_reencrypt(
    session: AsyncSession,
    table: type[Thread] | type[Message] | type[Attachment] | type[PoolItem],
    active_key_id: str,
    limit: int,
) -> list[Thread] | list[Message] | list[Attachment] | list[PoolItem]:
    """Rows (locked, skipping ones another worker holds) not yet on the active key."""
    stmt = (
        select(table)
        .where(or_(table.key_id.is_(None), table.key_id != active_key_id))
        .order_by(table.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(stmt)).scalars())  # type: ignore[return-value]


async def count_not_on_key(session: AsyncSession, active_key_id: str) -> dict[str, int]:
    """Rows per table whose encrypted columns are not on the active key."""
    counts: dict[str, int] = {}
    for table in ENCRYPTED_TABLES:
        stmt = select(func.count()).where(
            or_(table.key_id.is_(None), table.key_id != active_key_id)
        )
        counts[str(table.__tablename__)] = int((await session.execute(stmt)).scalar_one())
    return counts
