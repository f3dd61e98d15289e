"""The ehr-connector's tables and all its SQL.

One declarative base (`Base`) and one `metadata` cover every table of the service: the
outbound side's tables are declared here, the inbound side declares its own in
`ehr_connector.inbound.tables` on this same `Base`, so a single Alembic history covers both.

Outbound tables:
* `patient_links`: which EHR Patient each portal patient is (from `patient.linked` and
  `appointment.booked`), one row per pair and each side unique: the outbound side reads it
  from our id (events that carry only ours), the inbound side from the EHR's (whose
  changes to publish, to whom), so the two directions can never disagree;
* `fhir_links`: one of our objects (an appointment, an intake, a message, a thread, a
  triage session's response and task) → the EHR resource written for it, with the version
  we last wrote or saw;
* `outbound_writes`: every write the connector made to the EHR (or decided not to make),
  with the version it produced: the audit trail of outbound traffic, and how the inbound
  side recognises a notification about a version we wrote ourselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Index, String, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from servicekit.db import new_metadata
from servicekit.tables import DeadLetterRow, ParkedRow


class Base(DeclarativeBase):
    """Declarative base of every ehr-connector table (outbound and inbound)."""

    metadata = new_metadata()


metadata = Base.metadata


class PatientLink(Base):
    """Which EHR Patient a portal patient is (and so which portal patient an EHR Patient is)."""

    __tablename__ = "patient_links"

    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_fhir_id: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ux_patient_links_patient_fhir_id", "patient_fhir_id", unique=True),)


class FhirLink(Base):
    """One of our objects and the EHR resource that represents it."""

    __tablename__ = "fhir_links"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    our_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    fhir_id: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_fhir_links_resource", "resource_type", "fhir_id"),)


class OutboundWrite(Base):
    """One outbound decision: a create, an update, a match, a no-op or a rejection."""

    __tablename__ = "outbound_writes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    our_id: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(64))
    fhir_id: Mapped[str | None] = mapped_column(String(64))
    version_id: Mapped[str | None] = mapped_column(String(64))
    interaction: Mapped[str] = mapped_column(String(16))
    written_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_outbound_writes_version", "resource_type", "fhir_id", "version_id"),
        Index("ix_outbound_writes_our_id", "event_type", "our_id"),
    )


class Interaction:
    """Values of `OutboundWrite.interaction`."""

    CREATE = "create"  # a new resource
    MATCH = "match"  # a conditional create found the resource already there
    UPDATE = "update"  # a new version
    NOOP = "noop"  # the EHR already had the target state
    REJECTED = "rejected"  # the EHR (or its state) refused a booking
    COMPENSATE = "compensate"  # undid our own write after losing a race


def _now() -> datetime:
    return datetime.now(UTC)


# -- patients -------------------------------------------------------------------------------


async def remember_patient(
    session: AsyncSession, patient_id: str, patient_fhir_id: str, now: datetime | None = None
) -> None:
    """Record (or correct) which EHR Patient the portal patient `patient_id` is; the latest
    link wins on both sides: a patient linked anew leaves their old EHR Patient, and an EHR
    Patient linked to another portal patient leaves the one it had."""
    at = now or _now()
    await session.execute(
        delete(PatientLink).where(
            PatientLink.patient_fhir_id == patient_fhir_id, PatientLink.patient_id != patient_id
        )
    )
    stmt = insert(PatientLink).values(
        patient_id=patient_id, patient_fhir_id=patient_fhir_id, updated_at=at
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[PatientLink.patient_id],
            set_={"patient_fhir_id": stmt.excluded.patient_fhir_id, "updated_at": at},
            where=PatientLink.patient_fhir_id != stmt.excluded.patient_fhir_id,
        )
    )


async def patient_fhir_id_of(session: AsyncSession, patient_id: str) -> str | None:
    """The EHR Patient id of a portal patient, if known."""
    stmt = select(PatientLink.patient_fhir_id).where(PatientLink.patient_id == patient_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def patient_ids_of(session: AsyncSession, patient_fhir_ids: Iterable[str]) -> dict[str, str]:
    """Portal patient ids of the linked EHR Patients among `patient_fhir_ids`."""
    wanted = sorted(set(patient_fhir_ids))
    if not wanted:
        return {}
    stmt = select(PatientLink.patient_fhir_id, PatientLink.patient_id).where(
        PatientLink.patient_fhir_id.in_(wanted)
    )
    return {str(row[0]): str(row[1]) for row in (await session.execute(stmt)).all()}


# -- links ----------------------------------------------------------------------------------


async def get_link(session: AsyncSession, kind: str, our_id: str) -> FhirLink | None:
    """The EHR resource written for one of our objects, if any."""
    # A select, not `session.get`: get builds its query anew on every call (py-spy: the
    # connector's most expensive statement per message filed); this one is compiled once.
    stmt = select(FhirLink).where(FhirLink.kind == kind, FhirLink.our_id == our_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def save_link(
    session: AsyncSession,
    *,
    kind: str,
    our_id: str,
    resource_type: str,
    fhir_id: str,
    version_id: str,
    patient_id: str,
) -> None:
    """Record (or move forward) the EHR resource of one of our objects: one upsert (the
    first link's patient stays)."""
    now = _now()
    stmt = insert(FhirLink).values(
        kind=kind,
        our_id=our_id,
        resource_type=resource_type,
        fhir_id=fhir_id,
        version_id=version_id,
        patient_id=patient_id,
        updated_at=now,
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[FhirLink.kind, FhirLink.our_id],
            set_={
                "resource_type": stmt.excluded.resource_type,
                "fhir_id": stmt.excluded.fhir_id,
                "version_id": stmt.excluded.version_id,
                "updated_at": stmt.excluded.updated_at,
            },
        )
    )


async def our_id_for(session: AsyncSession, kind: str, fhir_id: str) -> str | None:
    """Our id of the object an EHR resource was written for (e.g. a Communication's
    message id), if the connector wrote it."""
    stmt = select(FhirLink.our_id).where(FhirLink.kind == kind, FhirLink.fhir_id == fhir_id)
    return (await session.execute(stmt.limit(1))).scalar_one_or_none()


# -- the write log --------------------------------------------------------------------------


async def log_write(
    session: AsyncSession,
    *,
    event_id: str,
    event_type: str,
    patient_id: str,
    our_id: str,
    resource_type: str,
    interaction: str,
    fhir_id: str | None = None,
    version_id: str | None = None,
) -> None:
    """Append one outbound decision to the write log (one INSERT, no ORM object)."""
    await session.execute(
        insert(OutboundWrite).values(
            event_id=event_id,
            event_type=event_type,
            patient_id=patient_id,
            our_id=our_id,
            resource_type=resource_type,
            fhir_id=fhir_id,
            version_id=version_id,
            interaction=interaction,
            written_at=_now(),
        )
    )


async def is_own_write(
    session: AsyncSession, resource_type: str, fhir_id: str, version_id: str
) -> bool:
    """Whether this exact resource version was written by the connector (echo check)."""
    stmt = select(OutboundWrite.id).where(
        OutboundWrite.resource_type == resource_type,
        OutboundWrite.fhir_id == fhir_id,
        OutboundWrite.version_id == version_id,
        OutboundWrite.interaction.in_(
            (Interaction.CREATE, Interaction.UPDATE, Interaction.COMPENSATE)
        ),
    )
    return (await session.execute(stmt.limit(1))).first() is not None


async def booking_was_rejected(session: AsyncSession, appointment_id: str) -> bool:
    """Whether the EHR refused the booking of our appointment `appointment_id`."""
    stmt = select(OutboundWrite.id).where(
        OutboundWrite.event_type == "appointment.booked",
        OutboundWrite.our_id == appointment_id,
        OutboundWrite.interaction == Interaction.REJECTED,
    )
    return (await session.execute(stmt.limit(1))).first() is not None


async def booking_blocked(session: AsyncSession, consumer: str, patient_id: str) -> str | None:
    """Why the booking consumer `consumer` cannot handle this patient's bookings now: an
    open dead letter or a parked message of the patient's, else None."""
    dead = await session.scalar(
        select(func.count())
        .select_from(DeadLetterRow)
        .where(
            DeadLetterRow.consumer == consumer,
            DeadLetterRow.key == patient_id,
            DeadLetterRow.status == "open",
        )
    )
    if dead:
        return "the patient's bookings have an open dead letter"
    parked = await session.scalar(
        select(func.count())
        .select_from(ParkedRow)
        .where(ParkedRow.consumer == consumer, ParkedRow.key == patient_id)
    )
    return "the patient's bookings are parked behind a dead letter" if parked else None


async def writes_for(session: AsyncSession, event_type: str, our_id: str) -> list[OutboundWrite]:
    """The write log of one of our objects for one event type, oldest first."""
    stmt = (
        select(OutboundWrite)
        .where(OutboundWrite.event_type == event_type, OutboundWrite.our_id == our_id)
        .order_by(OutboundWrite.id)
    )
    return list((await session.execute(stmt)).scalars())


# The inbound side's tables live on this Base too; importing them here makes `metadata`
# (and so Alembic) see every table of the service.
from ehr_connector.inbound import tables as _inbound_tables  # noqa: E402, F401
