"""The triage service's tables and all its SQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, LargeBinary, String, Text, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from servicekit.db import new_metadata


class Base(DeclarativeBase):
    """Declarative base of the triage tables."""

    metadata = new_metadata()


metadata = Base.metadata

OPEN = "open"
COMPLETED = "completed"


class TriageSession(Base):
    """One assessment: the patient's text and answers, the outcome and what decided it.

    A one-shot assessment is completed at once; an interactive session stays `open` while
    follow-up questions are pending, and is completed (and published) once.
    """

    __tablename__ = "triage_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    age: Mapped[int] = mapped_column(Integer)
    sex: Mapped[str] = mapped_column(String(16))
    # The patient's words, the flags' evidence (excerpts of them) and the answers are kept
    # in `private_enc` (AES-GCM envelope, servicekit.crypto) under key `key_id`; the plain
    # columns hold them only for rows written before encryption, until re-encrypted.
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    urgency: Mapped[str] = mapped_column(String(16))
    findings: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    matched_rules: Mapped[list[str]] = mapped_column(JSON)
    recommended_pool: Mapped[str] = mapped_column(String(64))
    rule_set_version: Mapped[str] = mapped_column(String(32))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=COMPLETED, server_default=COMPLETED)
    age_months: Mapped[int | None] = mapped_column(Integer, nullable=True)
    answers: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    flags: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    questions: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    advice: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    private_enc: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


async def sessions_of(session: AsyncSession, patient_id: str) -> list[TriageSession]:
    """A patient's completed triage sessions, newest first."""
    stmt = (
        select(TriageSession)
        .where(TriageSession.patient_id == patient_id, TriageSession.status == COMPLETED)
        .order_by(TriageSession.completed_at.desc())
    )
    return list((await session.execute(stmt)).scalars())


async def session_of(
    session: AsyncSession, patient_id: str, session_id: str, *, for_update: bool = False
) -> TriageSession | None:
    """One of the patient's sessions (locked for an update when asked)."""
    stmt = select(TriageSession).where(
        TriageSession.id == session_id, TriageSession.patient_id == patient_id
    )
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


def _not_on_key(active_key_id: str) -> Any:
    return or_(
        TriageSession.key_id.is_(None),
        TriageSession.key_id != active_key_id,
        TriageSession.private_enc.is_(None),
    )


async def rows_to_reencrypt(
    session: AsyncSession, active_key_id: str, limit: int
) -> list[TriageSession]:
    """Sessions not yet under the active key (or written before encryption), locked."""
    stmt = (
        select(TriageSession)
        .where(_not_on_key(active_key_id))
        .order_by(TriageSession.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(stmt)).scalars())


async def count_not_on_key(session: AsyncSession, active_key_id: str) -> int:
    """How many sessions are not yet under the active key."""
    stmt = select(func.count()).select_from(TriageSession).where(_not_on_key(active_key_id))
    return int((await session.execute(stmt)).scalar_one())
