"""The messaging service's tables and all its SQL."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, String, Text, UniqueConstraint, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from servicekit.db import new_metadata


class Base(DeclarativeBase):
    """Declarative base of the messaging tables."""

    metadata = new_metadata()


metadata = Base.metadata


class Thread(Base):
    """A conversation between a patient and the care team."""

    __tablename__ = "threads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    thread_fhir_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    subject: Mapped[str | None] = mapped_column(String(200))
    pool: Mapped[str] = mapped_column(String(64))
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
    body: Mapped[str] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str | None] = mapped_column(String(128))

    # A client's retry of the same send (same key) finds the first message.
    __table_args__ = (
        UniqueConstraint("patient_id", "idempotency_key", name="uq_messages_idempotency_key"),
    )


class PoolItem(Base):
    """Work routed to a care-team pool (e.g. a triage summary awaiting a clinician)."""

    __tablename__ = "pool_items"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pool: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    urgency: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_pool_items_pool_created", "pool", "created_at"),)


async def get_thread(session: AsyncSession, thread_id: str) -> Thread | None:
    """One thread by our id."""
    return await session.get(Thread, thread_id)


async def thread_by_fhir_id(session: AsyncSession, thread_fhir_id: str) -> Thread | None:
    """The thread whose first Communication has this EHR id."""
    stmt = select(Thread).where(Thread.thread_fhir_id == thread_fhir_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def message_by_fhir_id(session: AsyncSession, fhir_id: str) -> Message | None:
    """A message by its EHR Communication id."""
    stmt = select(Message).where(Message.communication_fhir_id == fhir_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def threads_of(session: AsyncSession, patient_id: str) -> list[Thread]:
    """A patient's threads, most recently active first."""
    stmt = select(Thread).where(Thread.patient_id == patient_id).order_by(Thread.updated_at.desc())
    return list((await session.execute(stmt)).scalars())


async def messages_in(session: AsyncSession, thread_id: str) -> list[Message]:
    """A thread's messages, oldest first."""
    stmt = select(Message).where(Message.thread_id == thread_id).order_by(Message.sent_at)
    return list((await session.execute(stmt)).scalars())


async def pool_items(session: AsyncSession, pool: str) -> list[PoolItem]:
    """A pool's work items, oldest first."""
    stmt = select(PoolItem).where(PoolItem.pool == pool).order_by(PoolItem.created_at)
    return list((await session.execute(stmt)).scalars())


async def message_by_idempotency_key(
    session: AsyncSession, patient_id: str, key: str
) -> Message | None:
    """The patient's message sent with this client-generated idempotency key."""
    stmt = select(Message).where(Message.patient_id == patient_id, Message.idempotency_key == key)
    return (await session.execute(stmt)).scalar_one_or_none()


async def latest_inbound_fhir_id(session: AsyncSession, thread_id: str) -> str | None:
    """The EHR Communication id of the newest clinician message in a thread, if any."""
    stmt = (
        select(Message.communication_fhir_id)
        .where(
            Message.thread_id == thread_id,
            Message.direction == "inbound",
            Message.communication_fhir_id.is_not(None),
        )
        .order_by(Message.sent_at.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def mark_inbound_read(session: AsyncSession, thread_id: str, at: datetime) -> int:
    """Mark a thread's unread clinician messages read; returns how many were."""
    stmt = (
        update(Message)
        .where(
            Message.thread_id == thread_id,
            Message.direction == "inbound",
            Message.read_at.is_(None),
        )
        .values(read_at=at)
    )
    result = await session.execute(stmt)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
