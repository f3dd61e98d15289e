"""The patient's symptom checks (`/v1/me/triage`): the one-shot assessment and the
interactive session that asks follow-up questions, both answered by the triage service
with the internal patient id of the bearer token (never one from the client).

`POST /v1/me/triage/assess` keeps the shape DESIGN.md fixes. A session starts with the same
body (`POST /v1/me/triage/sessions`), returns the outcome so far with the questions worth
asking, takes answers (`POST .../sessions/{id}/answers`: `{"answers": {"<question id>":
true | 38.5 | "<choice>"}, "finish": false}`) and ends with the disposition. Reading a past
session needs a QuestionnaireResponse read scope and is recorded in the access log.

Starting, assessing and answering pass the client's `Idempotency-Key` on: a retry gets the
original answer (`Idempotent-Replayed: true`) instead of a second check, a second
`triage.completed` and a second Task in the EHR. Each is recorded in the access log.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from gateway.api.access import Caller, Id, Me, _read, command, requires
from servicekit.idempotency import IdempotencyKey

router = APIRouter(prefix="/v1", tags=["triage"])
RESOURCE = "QuestionnaireResponse"
QuestionId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")]
AnswerValue = bool | float | Annotated[str, StringConstraints(max_length=64)]


class AssessIn(BaseModel):
    """A one-shot symptom check."""

    age: int = Field(ge=0, le=130, strict=True)
    sex: str = Field(pattern="^(female|male|other|unknown)$")
    text: str = Field(min_length=3, max_length=2000)


class SessionIn(AssessIn):
    """The start of an interactive symptom check (infants: age in months too)."""

    age_months: int | None = Field(default=None, ge=0, le=36, strict=True)


class AnswersIn(BaseModel):
    """Answers to pending questions; `finish` ends the check now."""

    answers: dict[QuestionId, AnswerValue] = Field(default_factory=dict, max_length=50)
    finish: bool = False


async def _call(
    request: Request, caller: Caller, path: str, body: BaseModel, key: str | None
) -> JSONResponse:
    return await command(
        request,
        caller,
        "triage",
        "POST",
        f"/patients/{caller.patient_id}{path}",
        action="write",
        resource=RESOURCE,
        json=body.model_dump(exclude_none=True),
        key=key,
    )


@router.get("/me/triage", dependencies=[requires("patient/QuestionnaireResponse.s")])
async def triage_sessions(caller: Me, request: Request) -> Any:
    """The patient's past symptom checks."""
    return await _read(
        request, caller, RESOURCE, "triage", f"/patients/{caller.patient_id}/sessions"
    )


@router.post(
    "/me/triage/assess",
    status_code=201,
    dependencies=[requires("patient/QuestionnaireResponse.c")],
)
async def triage_assess(
    caller: Me, request: Request, body: AssessIn, key: IdempotencyKey = None
) -> JSONResponse:
    """Assess symptoms now: `{"urgency": "emergency|urgent|routine|self-care", ...}`."""
    return await _call(request, caller, "/assess", body, key)


@router.post(
    "/me/triage/sessions",
    status_code=201,
    dependencies=[requires("patient/QuestionnaireResponse.c")],
)
async def start_triage_session(
    caller: Me, request: Request, body: SessionIn, key: IdempotencyKey = None
) -> JSONResponse:
    """Start a symptom check that asks follow-up questions."""
    return await _call(request, caller, "/sessions", body, key)


@router.get(
    "/me/triage/sessions/{session_id}",
    dependencies=[requires("patient/QuestionnaireResponse.r")],
)
async def triage_session(caller: Me, request: Request, session_id: Id) -> Any:
    """One symptom check's current state."""
    path = f"/patients/{caller.patient_id}/sessions/{session_id}"
    return await _read(request, caller, RESOURCE, "triage", path)


@router.post(
    "/me/triage/sessions/{session_id}/answers",
    dependencies=[requires("patient/QuestionnaireResponse.u")],
)
async def answer_triage_session(
    caller: Me, request: Request, session_id: Id, body: AnswersIn, key: IdempotencyKey = None
) -> JSONResponse:
    """Answer follow-up questions; the reply carries the updated outcome."""
    return await _call(request, caller, f"/sessions/{session_id}/answers", body, key)
