"""The triage service's tables and all its SQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from servicekit.db import new_metadata


class Base(DeclarativeBase):
    """Declarative base of the triage tables."""

    metadata = new_metadata()


metadata = Base.metadata


class TriageSession(Base):
    """One assessment: the patient's answers, the outcome and the rules that decided it."""

    __tablename__ = "triage_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    age: Mapped[int] = mapped_column(Integer)
    sex: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    urgency: Mapped[str] = mapped_column(String(16))
    findings: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    matched_rules: Mapped[list[str]] = mapped_column(JSON)
    recommended_pool: Mapped[str] = mapped_column(String(64))
    rule_set_version: Mapped[str] = mapped_column(String(32))
    completed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


async def sessions_of(session: AsyncSession, patient_id: str) -> list[TriageSession]:
    """A patient's triage sessions, newest first."""
    stmt = (
        select(TriageSession)
        .where(TriageSession.patient_id == patient_id)
        .order_by(TriageSession.completed_at.desc())
    )
    return list((await session.execute(stmt)).scalars())
