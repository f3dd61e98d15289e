"""The patient's appointment actions (`/v1/me/appointments`): book, cancel, intake.

Each route declares the SMART scope it needs (gateway.api.requires), checked exactly:
booking is a create (`patient/Appointment.c`), cancelling an update (`patient/Appointment.u`),
intake answers a create of a `QuestionnaireResponse`; read scopes grant none of them. Every
write is recorded in the access log.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, Response
from pydantic import BaseModel, Field

from contracts.intake import IntakeAnswer
from gateway import audit
from gateway.api import Id, Me, requires, service_of, upstreams_of
from gateway.upstream import UpstreamError

router = APIRouter(prefix="/v1/me/appointments", tags=["appointments"])


class BookIn(BaseModel):
    """The slot the patient chose (from `/v1/slots`) and, optionally, why."""

    slot_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    reason: str | None = Field(default=None, max_length=500)


class CancelIn(BaseModel):
    """Optional cancellation reason code (e.g. `pat`)."""

    reason_code: str | None = Field(default=None, max_length=32, pattern=r"^[a-z-]+$")


class IntakeIn(BaseModel):
    """Answers to the intake questionnaire."""

    answers: list[IntakeAnswer] = Field(min_length=1, max_length=100)


async def _call(request: Request, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return await upstreams_of(request).request("scheduling", method, path, **kwargs)
    except UpstreamError as exc:
        if exc.status in (404, 409, 422):
            raise HTTPException(exc.status, exc.detail) from exc
        raise HTTPException(exc.status, f"The scheduling service {exc.detail}.") from exc


@router.post("", status_code=201, dependencies=[requires("patient/Appointment.c")])
async def book(
    caller: Me,
    request: Request,
    response: Response,
    body: BookIn,
    idempotency_key: Annotated[str | None, Header(max_length=100)] = None,
) -> Any:
    """Book a free slot; the appointment is `pending` until the EHR confirms it (the live
    event stream says when). Send an `Idempotency-Key` so a retry books once."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    result = await _call(
        request,
        "POST",
        f"/patients/{caller.patient_id}/appointments",
        json={**body.model_dump(), "patient_fhir_id": caller.token.patient_fhir_id},
        headers=headers,
    )
    await audit.record_access(
        service_of(request).db, caller.patient_id, caller.actor, "write", "Appointment"
    )
    return result


@router.post("/{appointment_id}/cancel", dependencies=[requires("patient/Appointment.u")])
async def cancel(caller: Me, request: Request, appointment_id: Id, body: CancelIn) -> Any:
    """Cancel one of the patient's appointments."""
    path = f"/patients/{caller.patient_id}/appointments/{appointment_id}/cancel"
    result = await _call(request, "POST", path, json=body.model_dump())
    await audit.record_access(
        service_of(request).db, caller.patient_id, caller.actor, "write", "Appointment"
    )
    return result


@router.post(
    "/{appointment_id}/intake",
    status_code=202,
    dependencies=[requires("patient/QuestionnaireResponse.c")],
)
async def intake(caller: Me, request: Request, appointment_id: Id, body: IntakeIn) -> Any:
    """Send intake answers for an upcoming appointment to the care team."""
    path = f"/patients/{caller.patient_id}/appointments/{appointment_id}/intake"
    result = await _call(request, "POST", path, json=body.model_dump(mode="json"))
    await audit.record_access(
        service_of(request).db, caller.patient_id, caller.actor, "write", "QuestionnaireResponse"
    )
    return result
