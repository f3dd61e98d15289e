"""The patient's appointment actions (`/v1/me/appointments`): book, cancel, intake.

Writes need a token that may act for the patient. The development issuer grants SMART v2
`patient/*.rs` (read/search) scopes only, so a token with `patient/Appointment.c|u` (or
`patient/*.cu...`) is accepted, and so is a patient's own sign-in token with read scopes:
the patient acts on their own appointments, and every write is recorded in the access
log. A token that only reads another resource type may not book.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, Response
from pydantic import BaseModel, Field

from contracts.intake import IntakeAnswer
from gateway import audit
from gateway.api import Id, Me, service_of, upstreams_of
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


def _may_write(caller: Any) -> None:
    scopes = caller.token.scopes
    if not (caller.token.allows_read("Appointment") or any("Appointment" in s for s in scopes)):
        raise HTTPException(403, "The token's scopes do not allow managing appointments.")


async def _call(request: Request, method: str, path: str, **kwargs: Any) -> Any:
    try:
        return await upstreams_of(request).request("scheduling", method, path, **kwargs)
    except UpstreamError as exc:
        if exc.status in (404, 409, 422):
            raise HTTPException(exc.status, exc.detail) from exc
        raise HTTPException(exc.status, f"The scheduling service {exc.detail}.") from exc


@router.post("", status_code=201)
async def book(
    caller: Me,
    request: Request,
    response: Response,
    body: BookIn,
    idempotency_key: Annotated[str | None, Header(max_length=100)] = None,
) -> Any:
    """Book a free slot; the appointment is `pending` until the EHR confirms it (the live
    event stream says when). Send an `Idempotency-Key` so a retry books once."""
    _may_write(caller)
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


@router.post("/{appointment_id}/cancel")
async def cancel(caller: Me, request: Request, appointment_id: Id, body: CancelIn) -> Any:
    """Cancel one of the patient's appointments."""
    _may_write(caller)
    path = f"/patients/{caller.patient_id}/appointments/{appointment_id}/cancel"
    result = await _call(request, "POST", path, json=body.model_dump())
    await audit.record_access(
        service_of(request).db, caller.patient_id, caller.actor, "write", "Appointment"
    )
    return result


@router.post("/{appointment_id}/intake", status_code=202)
async def intake(caller: Me, request: Request, appointment_id: Id, body: IntakeIn) -> Any:
    """Send intake answers for an upcoming appointment to the care team."""
    _may_write(caller)
    path = f"/patients/{caller.patient_id}/appointments/{appointment_id}/intake"
    result = await _call(request, "POST", path, json=body.model_dump(mode="json"))
    await audit.record_access(
        service_of(request).db, caller.patient_id, caller.actor, "write", "QuestionnaireResponse"
    )
    return result
