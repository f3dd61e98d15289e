"""Slots and the patient's appointments (`/v1/slots`, `/v1/me/appointments`): search,
book, cancel, reschedule, intake.

Each route declares the SMART scope it needs (gateway.api.access.requires), checked exactly:
booking is a create (`patient/Appointment.c`), cancelling and rescheduling updates
(`patient/Appointment.u`), intake answers a create of a `QuestionnaireResponse`; read
scopes grant none of them. Every write is recorded in the access log.

Commands pass the client's `Idempotency-Key` on, and the scheduling service's answer comes
back as it is: its status (201 booked, 202 move or intake under way, the original status
of a replayed retry with `Idempotent-Replayed: true`) and its problem details (409 with
the clinic rule that refused, 422 naming the intake question).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, Field

from contracts.intake import IntakeAnswer
from gateway.api.access import Caller, Id, Me, command, requires
from servicekit.idempotency import IdempotencyKey

router = APIRouter(prefix="/v1", tags=["appointments"])
Code = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class BookIn(BaseModel):
    """The slot the patient chose (from `/v1/slots`) and, optionally, why."""

    slot_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    reason: str | None = Field(default=None, max_length=500)


class CancelIn(BaseModel):
    """Optional cancellation reason code (e.g. `pat`)."""

    reason_code: str | None = Field(default=None, max_length=32, pattern=r"^[a-z-]+$")


class RescheduleIn(BaseModel):
    """The free slot (from `/v1/slots`) to move the appointment to."""

    slot_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")


class IntakeIn(BaseModel):
    """Answers to the intake questionnaire."""

    answers: list[IntakeAnswer] = Field(max_length=200)


async def _forward(
    request: Request,
    caller: Caller,
    method: str,
    path: str,
    *,
    action: str,
    resource: str = "Appointment",
    json: Any = None,
    params: Any = None,
    key: str | None = None,
) -> JSONResponse:
    return await command(
        request,
        caller,
        "scheduling",
        method,
        path,
        action=action,
        resource=resource,
        json=json,
        params=params,
        key=key,
    )


def _mine(caller: Caller, appointment_id: str = "", tail: str = "") -> str:
    base = f"/patients/{caller.patient_id}/appointments"
    return f"{base}/{appointment_id}{tail}" if appointment_id else base


@router.get("/slots", dependencies=[requires("patient/Slot.s")])
async def slots(
    caller: Me,
    request: Request,
    start: Annotated[AwareDatetime | None, Query(description="Default: now")] = None,
    end: Annotated[AwareDatetime | None, Query(description="Default: start + 14 days")] = None,
    practitioner: Code = None,
    location: Code = None,
    service_type: Code = None,
    visit_type: Code = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=300)] = None,
) -> JSONResponse:
    """Free appointment slots, earliest first: `{"items": [...], "next_cursor": ...}`."""
    params: dict[str, Any] = {
        "start": start,
        "end": end,
        "practitioner": practitioner,
        "location": location,
        "service_type": service_type,
        "visit_type": visit_type,
        "limit": limit,
        "cursor": cursor,
    }
    given = {
        k: (v.isoformat() if isinstance(v, datetime) else v)
        for k, v in params.items()
        if v is not None
    }
    return await _forward(
        request, caller, "GET", "/slots", action="read", resource="Slot", params=given
    )


@router.get("/me/appointments", dependencies=[requires("patient/Appointment.s")])
async def appointments(caller: Me, request: Request) -> JSONResponse:
    """The patient's appointments, soonest first, with clinician, place and intake state."""
    return await _forward(request, caller, "GET", _mine(caller), action="read")


@router.get("/me/appointments/{appointment_id}", dependencies=[requires("patient/Appointment.r")])
async def appointment(caller: Me, request: Request, appointment_id: Id) -> JSONResponse:
    """One of the patient's appointments."""
    return await _forward(request, caller, "GET", _mine(caller, appointment_id), action="read")


@router.post("/me/appointments", status_code=201, dependencies=[requires("patient/Appointment.c")])
async def book(
    caller: Me, request: Request, body: BookIn, key: IdempotencyKey = None
) -> JSONResponse:
    """Book a free slot; the appointment is `pending` until the EHR confirms it (the live
    event stream says when). Send an `Idempotency-Key` so a retry books once."""
    payload = {**body.model_dump(), "patient_fhir_id": caller.token.patient_fhir_id}
    return await _forward(
        request, caller, "POST", _mine(caller), action="write", json=payload, key=key
    )


@router.post(
    "/me/appointments/{appointment_id}/cancel", dependencies=[requires("patient/Appointment.u")]
)
async def cancel(
    caller: Me, request: Request, appointment_id: Id, body: CancelIn, key: IdempotencyKey = None
) -> JSONResponse:
    """Cancel one of the patient's appointments (not within the clinic's notice period:
    the answer says why and whom to call)."""
    path = _mine(caller, appointment_id, "/cancel")
    return await _forward(
        request, caller, "POST", path, action="write", json=body.model_dump(), key=key
    )


@router.post(
    "/me/appointments/{appointment_id}/reschedule",
    status_code=202,
    dependencies=[requires("patient/Appointment.u")],
)
async def reschedule(
    caller: Me,
    request: Request,
    appointment_id: Id,
    body: RescheduleIn,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """Move an appointment to another free slot: 202 with `pending_slot` until the EHR has
    moved it; if the EHR refuses, the appointment keeps its time."""
    path = _mine(caller, appointment_id, "/reschedule")
    return await _forward(
        request, caller, "POST", path, action="write", json=body.model_dump(), key=key
    )


@router.get(
    "/me/appointments/{appointment_id}/intake",
    dependencies=[requires("patient/Questionnaire.r")],
)
async def intake_form(caller: Me, request: Request, appointment_id: Id) -> JSONResponse:
    """The intake form of the visit (the EHR's Questionnaire) and the answers so far."""
    path = _mine(caller, appointment_id, "/intake")
    return await _forward(
        request, caller, "GET", path, action="read", resource="QuestionnaireResponse"
    )


@router.put(
    "/me/appointments/{appointment_id}/intake/draft",
    dependencies=[requires("patient/QuestionnaireResponse.c")],
)
async def intake_draft(
    caller: Me, request: Request, appointment_id: Id, body: IntakeIn
) -> JSONResponse:
    """Save intake answers to finish later (nothing is sent to the clinic yet)."""
    path = _mine(caller, appointment_id, "/intake/draft")
    return await _forward(
        request,
        caller,
        "PUT",
        path,
        action="write",
        resource="QuestionnaireResponse",
        json=body.model_dump(mode="json"),
    )


@router.post(
    "/me/appointments/{appointment_id}/intake",
    status_code=202,
    dependencies=[requires("patient/QuestionnaireResponse.c")],
)
async def intake(
    caller: Me, request: Request, appointment_id: Id, body: IntakeIn, key: IdempotencyKey = None
) -> JSONResponse:
    """Send intake answers for an upcoming appointment to the care team, once; a wrong or
    missing answer is 422 naming the question."""
    path = _mine(caller, appointment_id, "/intake")
    return await _forward(
        request,
        caller,
        "POST",
        path,
        action="write",
        resource="QuestionnaireResponse",
        json=body.model_dump(mode="json"),
        key=key,
    )


@router.post(
    "/me/appointments/{appointment_id}/intake/amend",
    status_code=202,
    dependencies=[requires("patient/QuestionnaireResponse.u")],
)
async def amend_intake(
    caller: Me, request: Request, appointment_id: Id, body: IntakeIn, key: IdempotencyKey = None
) -> JSONResponse:
    """Change intake answers already sent: the clinic's copy is updated, not duplicated."""
    path = _mine(caller, appointment_id, "/intake/amend")
    return await _forward(
        request,
        caller,
        "POST",
        path,
        action="write",
        resource="QuestionnaireResponse",
        json=body.model_dump(mode="json"),
        key=key,
    )
