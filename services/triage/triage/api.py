"""HTTP API of the triage service, for the gateway (which scopes calls to the caller) and,
for `/emergency-check`, for other services (messaging checks patients' messages)."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.base import Coding
from contracts.triage import Urgency
from servicekit.http import PatientId
from servicekit.idempotency import IdempotencyKey, idempotent
from servicekit.ops_api import encryption_routes
from servicekit.problems import documented
from triage.domain import Sex
from triage.ruleset import Question
from triage.service import (
    Complaint,
    InvalidAnswer,
    SessionClosed,
    SessionNotFound,
    SessionView,
    TriageService,
)

router = APIRouter(tags=["triage"])
SessionId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
QuestionId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")]
AnswerValue = Annotated[bool | float | Annotated[str, StringConstraints(max_length=64)], Field()]


def triage_of(request: Request) -> TriageService:
    """The use cases of the running service."""
    triage: TriageService = request.app.state.service.state["triage"]
    return triage


class AssessRequest(BaseModel):
    """The patient's age, sex and complaint in their own words (or a clinician's)."""

    age: int = Field(ge=0, le=130, strict=True)
    sex: Sex
    text: str = Field(min_length=3, max_length=2000)
    age_months: int | None = Field(
        default=None, ge=0, le=36, strict=True, description="For infants: age in months"
    )
    answers: dict[QuestionId, AnswerValue] = Field(
        default_factory=dict, max_length=50, description="Answers to follow-up questions, by id"
    )


class EvidenceOut(BaseModel):
    """Why a flag fired: a span of the text (character offsets) or an answer."""

    text: str
    start: int | None = None
    end: int | None = None
    source: str


class FlagOut(BaseModel):
    """A red (emergency), amber (urgent) or routine flag, with its evidence and source."""

    id: str
    level: str
    complaint: str
    text: str
    source: str
    evidence: list[EvidenceOut]


class ChoiceOut(BaseModel):
    """An option of a choice question."""

    value: str
    label: str


class QuestionOut(BaseModel):
    """A follow-up question still worth asking: answer `true`/`false`, a number or a choice."""

    id: str
    text: str
    kind: str
    choices: list[ChoiceOut] = Field(default_factory=list)

    @classmethod
    def of(cls, q: Question) -> QuestionOut:
        """The API form of a rule-set question."""
        return cls(
            id=q.id,
            text=q.text,
            kind=q.kind,
            choices=[ChoiceOut(value=c.value, label=c.label) for c in q.choices],
        )


class AssessResponse(BaseModel):
    """The outcome, with advice for the patient (fields after `rule_set_version` were added
    later; clients of the first version ignore them)."""

    session_id: str
    urgency: Urgency
    advice: str
    findings: list[Coding]
    recommended_pool: str
    rule_set_version: str
    flags: list[FlagOut] = Field(default_factory=list)
    questions: list[QuestionOut] = Field(default_factory=list)


class SessionOut(BaseModel):
    """A past triage session (without the patient's text)."""

    session_id: str
    urgency: Urgency
    recommended_pool: str
    rule_set_version: str
    completed_at: datetime


class SessionStateOut(AssessResponse):
    """An interactive session: `open` while questions are pending, then `completed`."""

    status: str
    answers: dict[str, Any]
    started_at: datetime | None
    completed_at: datetime | None


class AnswersRequest(BaseModel):
    """Answers to some of the pending questions; `finish` ends the session now."""

    answers: dict[QuestionId, AnswerValue] = Field(default_factory=dict, max_length=50)
    finish: bool = False


class EmergencyCheckRequest(BaseModel):
    """A free text to check, e.g. a patient's message; age and sex when known."""

    text: str = Field(min_length=1, max_length=10_000)
    age: int | None = Field(default=None, ge=0, le=130, strict=True)
    sex: Sex = Sex.UNKNOWN


class EmergencyCheckResponse(BaseModel):
    """`emergency` true means: tell the writer to call emergency services now."""

    emergency: bool
    urgency: Urgency
    flags: list[FlagOut]
    advice: str | None
    rule_set_version: str


def _state(view: SessionView) -> SessionStateOut:
    return SessionStateOut(
        session_id=view.id,
        status=view.status,
        urgency=view.urgency,
        advice=view.advice,
        findings=view.findings,
        recommended_pool=view.recommended_pool,
        rule_set_version=view.rule_set_version,
        flags=[FlagOut.model_validate(f) for f in view.flags],
        questions=[QuestionOut.of(q) for q in view.questions],
        answers=view.answers,
        started_at=view.started_at,
        completed_at=view.completed_at,
    )


def _complaint(body: AssessRequest) -> Complaint:
    return Complaint(body.age, body.sex, body.text, body.age_months, body.answers)


# Commands take an `Idempotency-Key` (servicekit.idempotency): a retried request answers
# the original result instead of a second session and a second `triage.completed` (which
# would file a second Task in the EHR). The decision runs inside that transaction; with the
# optional model reviewer on, that holds it for the model's answer.


@router.post("/patients/{patient_id}/assess", response_model=AssessResponse, status_code=201)
async def assess(
    patient_id: PatientId, body: AssessRequest, request: Request, key: IdempotencyKey = None
) -> JSONResponse:
    """Assess the complaint at once, store it and publish `triage.completed`; the result
    lists the follow-up questions still worth asking."""

    async def action(session: AsyncSession) -> AssessResponse:
        view = await triage_of(request).assess(patient_id, _complaint(body), session)
        state = _state(view)
        return AssessResponse.model_validate(
            state.model_dump(include=set(AssessResponse.model_fields))
        )

    return await _answer(idempotent(request, f"{patient_id}:assess", key, body, action, status=201))


@router.post("/patients/{patient_id}/sessions", response_model=SessionStateOut, status_code=201)
async def start_session(
    patient_id: PatientId, body: AssessRequest, request: Request, key: IdempotencyKey = None
) -> JSONResponse:
    """Start an interactive session: the first outcome and the questions worth asking."""

    async def action(session: AsyncSession) -> SessionStateOut:
        return _state(await triage_of(request).start_session(patient_id, _complaint(body), session))

    scope = f"{patient_id}:start-session"
    return await _answer(idempotent(request, scope, key, body, action, status=201))


async def _answer(call: Awaitable[JSONResponse]) -> JSONResponse:
    """The command's response, its refusals as problem details."""
    try:
        return await call
    except SessionNotFound as exc:
        raise HTTPException(404, "No such triage session.") from exc
    except SessionClosed as exc:
        raise HTTPException(409, "The session is already completed.") from exc
    except InvalidAnswer as exc:
        raise HTTPException(422, str(exc)) from exc


@router.get(
    "/patients/{patient_id}/sessions/{session_id}",
    response_model=SessionStateOut,
    responses=documented(404),
)
async def get_session(
    patient_id: PatientId, session_id: SessionId, request: Request
) -> SessionStateOut:
    """One session's current state."""
    try:
        return _state(await triage_of(request).get(patient_id, session_id))
    except SessionNotFound as exc:
        raise HTTPException(404, "No such triage session.") from exc


@router.post(
    "/patients/{patient_id}/sessions/{session_id}/answers",
    response_model=SessionStateOut,
    responses=documented(404, 409, 422),
)
async def answer(
    patient_id: PatientId,
    session_id: SessionId,
    body: AnswersRequest,
    request: Request,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """Answer pending questions; the session completes when nothing is left worth asking
    (or `finish` is true) and is then published."""

    async def action(session: AsyncSession) -> SessionStateOut:
        view = await triage_of(request).answer(
            patient_id, session_id, body.answers, finish=body.finish, session=session
        )
        return _state(view)

    scope = f"{patient_id}:answer:{session_id}"
    return await _answer(idempotent(request, scope, key, body, action))


@router.get("/patients/{patient_id}/sessions", response_model=list[SessionOut])
async def list_sessions(patient_id: PatientId, request: Request) -> list[SessionOut]:
    """The patient's completed triage sessions, newest first."""
    rows = await triage_of(request).history(patient_id)
    return [
        SessionOut(
            session_id=r.id,
            urgency=Urgency(r.urgency),
            recommended_pool=r.recommended_pool,
            rule_set_version=r.rule_set_version,
            completed_at=r.completed_at,
        )
        for r in rows
        if r.completed_at is not None
    ]


@router.post("/emergency-check", response_model=EmergencyCheckResponse)
async def emergency_check(body: EmergencyCheckRequest, request: Request) -> EmergencyCheckResponse:
    """Does this text describe an emergency? For other services (messages); stores nothing."""
    check = triage_of(request).emergency_check(body.text, body.age, body.sex)
    return EmergencyCheckResponse(
        emergency=check.emergency,
        urgency=check.urgency,
        flags=[FlagOut.model_validate(f) for f in check.flags],
        advice=check.advice,
        rule_set_version=check.rule_set_version,
    )


# Operators' routes: the ops token, not a service token (`ServiceDefinition.public_api`).
ops_router = APIRouter(tags=["ops"])
ops_router.include_router(encryption_routes(triage_of))
