"""The scheduling service's tables and all its SQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from servicekit.db import hold_keys, new_metadata


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
    location_fhir_id: Mapped[str | None] = mapped_column(String(64), default=None)
    service_type: Mapped[str | None] = mapped_column(String(64), default=None)
    service_type_display: Mapped[str | None] = mapped_column(String(200), default=None)
    visit_type: Mapped[str | None] = mapped_column(String(64), default=None)
    visit_type_display: Mapped[str | None] = mapped_column(String(200), default=None)
    status: Mapped[str] = mapped_column(String(32))
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source_version: Mapped[str] = mapped_column(String(64))
    source_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_slots_status_start", "status", "start"),)


class SlotHold(Base):
    """The portal's claim on a slot while a booking or a move to it is under way or stands.

    At most one hold per slot is active (`released_at IS NULL`), enforced by a unique
    partial index: of any number of concurrent requests for one slot, exactly one inserts
    its hold and the others fail on the index, before anything is sent to the EHR."""

    __tablename__ = "slot_holds"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot_fhir_id: Mapped[str] = mapped_column(String(64))
    appointment_id: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (
        Index(
            "uq_slot_holds_active_slot",
            "slot_fhir_id",
            unique=True,
            postgresql_where=text("released_at IS NULL"),
        ),
    )


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
    practitioner_name: Mapped[str | None] = mapped_column(String(200), default=None)
    location_fhir_id: Mapped[str | None] = mapped_column(String(64), default=None)
    location_name: Mapped[str | None] = mapped_column(String(200), default=None)
    visit_type: Mapped[str | None] = mapped_column(String(64), default=None)
    visit_type_display: Mapped[str | None] = mapped_column(String(200), default=None)
    ehr_version: Mapped[str | None] = mapped_column(String(64))
    status_reason: Mapped[str | None] = mapped_column(String(500))
    # The slot a requested move goes to, until the EHR has moved the appointment or refused.
    pending_slot_fhir_id: Mapped[str | None] = mapped_column(String(64), default=None)
    intake_reminded_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), default=None
    )
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Intake(Base):
    """A patient's intake answers for one appointment: a draft, then submitted once."""

    __tablename__ = "intakes"

    appointment_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    intake_id: Mapped[str] = mapped_column(String(64), unique=True)
    questionnaire: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16))
    answers: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # 1 once submitted; each amendment sent to the EHR is the next number.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Questionnaire(Base):
    """A Questionnaire as the EHR published it; `url|version` never changes its content."""

    __tablename__ = "questionnaires"

    canonical: Mapped[str] = mapped_column(String(300), primary_key=True)
    resource: Mapped[str] = mapped_column(Text)
    fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# -- slots ----------------------------------------------------------------------------------


async def get_slot(session: AsyncSession, slot_fhir_id: str) -> Slot | None:
    """One cached slot."""
    return await session.get(Slot, slot_fhir_id)


def _active_hold_of_slot() -> Any:
    return exists().where(
        SlotHold.slot_fhir_id == Slot.slot_fhir_id, SlotHold.released_at.is_(None)
    )


@dataclass(frozen=True)
class SlotQuery:
    """What the patient searches for; every filter is optional except the time window."""

    start: datetime
    end: datetime
    practitioner: str | None = None
    location: str | None = None
    service_type: str | None = None
    visit_type: str | None = None
    after: tuple[datetime, str] | None = None
    limit: int = 50


async def free_slots(session: AsyncSession, query: SlotQuery) -> list[Slot]:
    """Free, unheld slots starting within [start, end), earliest first, after the cursor."""
    conditions = [
        Slot.status == "free",
        Slot.start >= query.start,
        Slot.start < query.end,
        ~_active_hold_of_slot(),
    ]
    if query.practitioner:
        conditions.append(Slot.practitioner_fhir_id == query.practitioner)
    if query.location:
        conditions.append(Slot.location_fhir_id == query.location)
    if query.service_type:
        conditions.append(Slot.service_type == query.service_type)
    if query.visit_type:
        conditions.append(Slot.visit_type == query.visit_type)
    if query.after is not None:
        at, slot_id = query.after
        conditions.append(or_(Slot.start > at, and_(Slot.start == at, Slot.slot_fhir_id > slot_id)))
    stmt = (
        select(Slot).where(*conditions).order_by(Slot.start, Slot.slot_fhir_id).limit(query.limit)
    )
    return list((await session.execute(stmt)).scalars())


async def slot_is_held(session: AsyncSession, slot_fhir_id: str) -> bool:
    """Whether a booking or move of the portal holds the slot."""
    stmt = select(
        exists().where(SlotHold.slot_fhir_id == slot_fhir_id, SlotHold.released_at.is_(None))
    )
    return bool((await session.execute(stmt)).scalar())


async def hold_slot(
    session: AsyncSession,
    hold_id: str,
    slot_fhir_id: str,
    appointment_id: str,
    purpose: str,
    now: datetime,
) -> None:
    """Insert an active hold; raises `IntegrityError` when another one holds the slot."""
    session.add(
        SlotHold(
            id=hold_id,
            slot_fhir_id=slot_fhir_id,
            appointment_id=appointment_id,
            purpose=purpose,
            created_at=now,
        )
    )
    await session.flush()


async def release_holds(
    session: AsyncSession, appointment_id: str, now: datetime, *, slot_fhir_id: str | None = None
) -> None:
    """Release an appointment's active holds (of one slot, or all)."""
    conditions = [SlotHold.appointment_id == appointment_id, SlotHold.released_at.is_(None)]
    if slot_fhir_id is not None:
        conditions.append(SlotHold.slot_fhir_id == slot_fhir_id)
    await session.execute(update(SlotHold).where(*conditions).values(released_at=now))


async def release_holds_except(
    session: AsyncSession, appointment_id: str, keep: set[str], now: datetime
) -> None:
    """Release an appointment's active holds of slots it no longer uses."""
    await session.execute(
        update(SlotHold)
        .where(
            SlotHold.appointment_id == appointment_id,
            SlotHold.released_at.is_(None),
            SlotHold.slot_fhir_id.not_in(sorted(keep)),
        )
        .values(released_at=now)
    )


# -- appointments ---------------------------------------------------------------------------


async def get_appointment(session: AsyncSession, appointment_id: str) -> Appointment | None:
    """One appointment by our id."""
    return await session.get(Appointment, appointment_id)


async def appointment_by_fhir_id(session: AsyncSession, fhir_id: str) -> Appointment | None:
    """One appointment by its EHR id."""
    stmt = select(Appointment).where(Appointment.appointment_fhir_id == fhir_id)
    return (await session.execute(stmt)).scalar_one_or_none()


# Built once, its value bound at each call: building it per request, and the cache key
# SQLAlchemy derives from a new statement at each execution, cost the patient's list (and
# the portal's home screen) CPU for nothing (py-spy, benchmark 4).
_APPOINTMENTS_OF = (
    select(Appointment)
    .where(Appointment.patient_id == bindparam("patient_id"))
    .order_by(Appointment.start.nulls_last(), Appointment.id)
)


async def appointments_of(session: AsyncSession, patient_id: str) -> list[Appointment]:
    """A patient's appointments, soonest first."""
    params = {"patient_id": patient_id}
    return list((await session.execute(_APPOINTMENTS_OF, params)).scalars())


# The scope in which a patient's appointment writers take turns: the patient's booking,
# cancel and move, and the `appointment.updated` consumer (`Subscription.turns`).
PATIENT_TURNS = "scheduling.patient"


async def lock_patient(session: AsyncSession, patient_id: str) -> None:
    """Hold the patient's appointments until the transaction ends: two bookings must not
    both read the count of open ones, and a cancel must not be written over by an EHR
    change that read the appointment before the cancel committed."""
    await hold_keys(session, PATIENT_TURNS, [patient_id])


async def count_open(
    session: AsyncSession, patient_id: str, statuses: frozenset[str], now: datetime
) -> int:
    """How many of the patient's appointments are open (in `statuses`, not yet started)."""
    stmt = select(func.count()).where(
        Appointment.patient_id == patient_id,
        Appointment.status.in_(sorted(statuses)),
        Appointment.start > now,
    )
    return int((await session.execute(stmt)).scalar_one())


async def due_for_intake_reminder(
    session: AsyncSession, statuses: frozenset[str], now: datetime, until: datetime, limit: int
) -> list[Appointment]:
    """Open appointments starting within (now, until] with no submitted intake and no
    reminder sent yet (locked, so two replicas never remind twice)."""
    submitted = exists().where(
        Intake.appointment_id == Appointment.id, Intake.status == "submitted"
    )
    stmt = (
        select(Appointment)
        .where(
            Appointment.status.in_(sorted(statuses)),
            Appointment.start > now,
            Appointment.start <= until,
            Appointment.intake_reminded_at.is_(None),
            ~submitted,
        )
        .order_by(Appointment.start)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await session.execute(stmt)).scalars())


# -- intake ---------------------------------------------------------------------------------


async def get_intake(
    session: AsyncSession, appointment_id: str, *, for_update: bool = False
) -> Intake | None:
    """The intake of one appointment."""
    return await session.get(Intake, appointment_id, with_for_update=for_update)


async def intakes_of(session: AsyncSession, appointment_ids: list[str]) -> dict[str, Intake]:
    """The intakes of several appointments, by appointment id."""
    if not appointment_ids:
        return {}
    stmt = select(Intake).where(Intake.appointment_id.in_(appointment_ids))
    return {i.appointment_id: i for i in (await session.execute(stmt)).scalars()}


async def get_questionnaire(session: AsyncSession, canonical: str) -> Questionnaire | None:
    """A cached Questionnaire by `url|version`."""
    return await session.get(Questionnaire, canonical)
