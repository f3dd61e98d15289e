"""HTTP API of the scheduling service, for the gateway (which scopes every call to the
patient of the caller's token; this service is not reachable from outside)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import AwareDatetime, BaseModel

from scheduling import store
from servicekit.http import PatientId, ReadSession

router = APIRouter(tags=["scheduling"])


class SlotOut(BaseModel):
    """A free slot."""

    id: str
    schedule: str
    practitioner: str | None
    start: datetime
    end: datetime


class AppointmentOut(BaseModel):
    """An appointment as the patient sees it."""

    id: str
    status: str
    start: datetime | None
    end: datetime | None
    slot: str | None
    practitioner: str | None
    status_reason: str | None


@router.get("/slots", response_model=list[SlotOut])
async def list_free_slots(
    session: ReadSession,
    start: Annotated[AwareDatetime, Query(strict=False)],
    end: Annotated[AwareDatetime | None, Query()] = None,
) -> list[SlotOut]:
    """Free slots starting in [start, end) (default: 14 days from start)."""
    until = end or start + timedelta(days=14)
    if until <= start:
        raise HTTPException(422, "`end` must be after `start`.")
    return [
        SlotOut(
            id=s.slot_fhir_id,
            schedule=s.schedule_fhir_id,
            practitioner=s.practitioner_fhir_id,
            start=s.start,
            end=s.end,
        )
        for s in await store.free_slots(session, start, until)
    ]


def _appointment(row: store.Appointment) -> AppointmentOut:
    return AppointmentOut(
        id=row.id,
        status=row.status,
        start=row.start,
        end=row.end,
        slot=row.slot_fhir_id,
        practitioner=row.practitioner_fhir_id,
        status_reason=row.status_reason,
    )


@router.get("/patients/{patient_id}/appointments", response_model=list[AppointmentOut])
async def list_appointments(patient_id: PatientId, session: ReadSession) -> list[AppointmentOut]:
    """The patient's appointments, soonest first."""
    return [_appointment(a) for a in await store.appointments_of(session, patient_id)]


@router.get("/patients/{patient_id}/appointments/{appointment_id}", response_model=AppointmentOut)
async def get_appointment(
    patient_id: PatientId, appointment_id: str, session: ReadSession
) -> AppointmentOut:
    """One appointment of the patient (404 if it is not theirs)."""
    row = await store.get_appointment(session, appointment_id)
    if row is None or row.patient_id != patient_id:
        raise HTTPException(404, "No such appointment for this patient.")
    return _appointment(row)
