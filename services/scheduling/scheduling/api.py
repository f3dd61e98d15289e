"""HTTP API of the scheduling service, for the gateway (which scopes every call to the
patient of the caller's token; this service is not reachable from outside)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, Field

from contracts.intake import IntakeAnswer
from scheduling import booking, store
from scheduling.settings import Settings
from servicekit.app import Service
from servicekit.http import ID_PATTERN, PatientId, ReadSession, ResourceId

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
    try:
        until = end or start + timedelta(days=14)
    except OverflowError as exc:  # start near year 9999: a clear 422, not a 500
        raise HTTPException(422, "`start` is out of range.") from exc
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
    patient_id: PatientId, appointment_id: ResourceId, session: ReadSession
) -> AppointmentOut:
    """One appointment of the patient (404 if it is not theirs)."""
    row = await store.get_appointment(session, appointment_id)
    if row is None or row.patient_id != patient_id:
        raise HTTPException(404, "No such appointment for this patient.")
    return _appointment(row)


class BookIn(BaseModel):
    """A booking request from the gateway (the patient's EHR id comes from their link)."""

    slot_id: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)
    patient_fhir_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    reason: str | None = Field(default=None, max_length=500)


class CancelIn(BaseModel):
    """Why the patient cancels (FHIR appointment-cancellation-reason code, optional)."""

    reason_code: str | None = Field(default=None, max_length=32, pattern=r"^[a-z-]+$")


class IntakeIn(BaseModel):
    """The patient's answers to the intake questionnaire."""

    answers: list[IntakeAnswer] = Field(min_length=1, max_length=100)


def _http_error(exc: booking.BookingError) -> HTTPException:
    return HTTPException(exc.status, exc.detail)


@router.post("/patients/{patient_id}/appointments", response_model=AppointmentOut)
async def book_appointment(
    patient_id: PatientId,
    body: BookIn,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=100)] = None,
) -> AppointmentOut:
    """Book a free slot: 201 pending until the EHR confirms (a retry with the same
    `Idempotency-Key` answers 200 with the same appointment)."""
    service: Service = request.app.state.service
    try:
        appointment, created = await booking.book(
            service,
            booking.BookRequest(
                patient_id=patient_id,
                patient_fhir_id=body.patient_fhir_id,
                slot_id=body.slot_id,
                reason=body.reason,
                idempotency_key=idempotency_key,
            ),
        )
    except booking.BookingError as exc:
        raise _http_error(exc) from exc
    response.status_code = 201 if created else 200
    return _appointment(appointment)


@router.post(
    "/patients/{patient_id}/appointments/{appointment_id}/cancel", response_model=AppointmentOut
)
async def cancel_appointment(
    patient_id: PatientId, appointment_id: ResourceId, body: CancelIn, request: Request
) -> AppointmentOut:
    """Cancel the patient's appointment; the EHR is updated by the ehr-connector."""
    service: Service = request.app.state.service
    try:
        appointment = await booking.cancel(service, patient_id, appointment_id, body.reason_code)
    except booking.BookingError as exc:
        raise _http_error(exc) from exc
    return _appointment(appointment)


@router.post("/patients/{patient_id}/appointments/{appointment_id}/intake", status_code=202)
async def submit_intake(
    patient_id: PatientId, appointment_id: ResourceId, body: IntakeIn, request: Request
) -> dict[str, str]:
    """Send intake answers for an upcoming appointment to the EHR."""
    service: Service = request.app.state.service
    settings: Settings = service.settings  # type: ignore[assignment]
    try:
        intake_id = await booking.submit_intake(
            service, patient_id, appointment_id, settings.intake_questionnaire, body.answers
        )
    except booking.BookingError as exc:
        raise _http_error(exc) from exc
    return {"intake_id": intake_id}
