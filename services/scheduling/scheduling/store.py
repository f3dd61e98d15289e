"""The scheduling service's tables and all its SQL."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, String, UniqueConstraint, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from servicekit.db import new_metadata


class Base(DeclarativeBase):
    """Declarative base of the scheduling tables."""

    metadata = new_metadata()


metadata = Base.metadata


class Slot(Base):
    """A slot as the EHR last described it (the EHR owns slots; this is a cache)."""

    __tablename__ = "slots"

    slot_fhir_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    schedule_fhir_id: Mapped[str] = mapped_column(String(64))
    practitioner_fhir_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source_version: Mapped[str] = mapped_column(String(64))
    source_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_slots_status_start", "status", "start"),)


class Appointment(Base):
    """A patient's appointment: booked in the portal or known from the EHR."""

    __tablename__ = "appointments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    appointment_fhir_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(32))
    start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    slot_fhir_id: Mapped[str | None] = mapped_column(String(64))
    practitioner_fhir_id: Mapped[str | None] = mapped_column(String(64))
    ehr_version: Mapped[str | None] = mapped_column(String(64))
    status_reason: Mapped[str | None] = mapped_column(String(500))
    idempotency_key: Mapped[str | None] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("patient_id", "idempotency_key", name="uq_appointments_idempotency"),
    )


async def get_slot(
    session: AsyncSession, slot_fhir_id: str, *, for_update: bool = False
) -> Slot | None:
    """One cached slot (locked for the transaction when booking it)."""
    return await session.get(Slot, slot_fhir_id, with_for_update=for_update)


async def free_slots(
    session: AsyncSession, start: datetime, end: datetime, limit: int = 200
) -> list[Slot]:
    """Free slots starting within [start, end), earliest first."""
    stmt = (
        select(Slot)
        .where(Slot.status == "free", Slot.start >= start, Slot.start < end)
        .order_by(Slot.start, Slot.slot_fhir_id)
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())


async def get_appointment(session: AsyncSession, appointment_id: str) -> Appointment | None:
    """One appointment by our id."""
    return await session.get(Appointment, appointment_id)


async def appointment_by_fhir_id(session: AsyncSession, fhir_id: str) -> Appointment | None:
    """One appointment by its EHR id."""
    stmt = select(Appointment).where(Appointment.appointment_fhir_id == fhir_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def appointment_by_key(
    session: AsyncSession, patient_id: str, idempotency_key: str
) -> Appointment | None:
    """The appointment an earlier request with this idempotency key created."""
    stmt = select(Appointment).where(
        Appointment.patient_id == patient_id, Appointment.idempotency_key == idempotency_key
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def appointments_of(session: AsyncSession, patient_id: str) -> list[Appointment]:
    """A patient's appointments, soonest first."""
    stmt = (
        select(Appointment)
        .where(Appointment.patient_id == patient_id)
        .order_by(Appointment.start.nulls_last(), Appointment.id)
    )
    return list((await session.execute(stmt)).scalars())
