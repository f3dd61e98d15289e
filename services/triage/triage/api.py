"""HTTP API of the triage service, for the gateway (which scopes calls to the caller)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from contracts.base import Coding
from contracts.triage import TriageCompletedV1, Urgency
from servicekit.app import Service
from servicekit.http import PatientId
from triage import domain, store
from triage.metrics import ASSESSMENTS

router = APIRouter(tags=["triage"])


class AssessRequest(BaseModel):
    """The patient's age, sex and complaint in their own words."""

    age: int = Field(ge=0, le=130, strict=True)
    sex: domain.Sex
    text: str = Field(min_length=3, max_length=2000)


class AssessResponse(BaseModel):
    """The outcome, with advice for the patient."""

    session_id: str
    urgency: Urgency
    advice: str
    findings: list[Coding]
    recommended_pool: str
    rule_set_version: str


@router.post("/patients/{patient_id}/assess", response_model=AssessResponse, status_code=201)
async def assess(patient_id: PatientId, body: AssessRequest, request: Request) -> AssessResponse:
    """Assess the complaint, store the session and publish `triage.completed` with it."""
    service: Service = request.app.state.service
    outcome = domain.assess(body.age, body.sex, body.text)
    session_id = f"tri-{uuid.uuid4().hex[:16]}"
    now = datetime.now(UTC)
    async with service.db.transaction() as session:
        session.add(
            store.TriageSession(
                id=session_id,
                patient_id=patient_id,
                age=body.age,
                sex=body.sex.value,
                text=body.text,
                urgency=outcome.urgency.value,
                findings=[f.model_dump(mode="json") for f in outcome.findings],
                matched_rules=list(outcome.matched_rules),
                recommended_pool=outcome.recommended_pool,
                rule_set_version=outcome.rule_set_version,
                completed_at=now,
            )
        )
        service.outbox.add(
            session,
            TriageCompletedV1(
                session_id=session_id,
                patient_id=patient_id,
                urgency=outcome.urgency,
                summary=domain.summary(outcome, body.age, body.sex),
                findings=list(outcome.findings),
                rule_set_version=outcome.rule_set_version,
                recommended_pool=outcome.recommended_pool,
                completed_at=now,
            ),
            subject=patient_id,
        )
    # Counted once committed: a failed transaction raised above and is not counted.
    ASSESSMENTS.labels(outcome.urgency.value, outcome.recommended_pool or "default").inc()
    return AssessResponse(
        session_id=session_id,
        urgency=outcome.urgency,
        advice=outcome.advice,
        findings=list(outcome.findings),
        recommended_pool=outcome.recommended_pool,
        rule_set_version=outcome.rule_set_version,
    )


class SessionOut(BaseModel):
    """A past triage session (without the patient's text)."""

    session_id: str
    urgency: Urgency
    recommended_pool: str
    rule_set_version: str
    completed_at: datetime


@router.get("/patients/{patient_id}/sessions", response_model=list[SessionOut])
async def list_sessions(patient_id: PatientId, request: Request) -> list[SessionOut]:
    """The patient's triage sessions, newest first."""
    service: Service = request.app.state.service
    async with service.db.sessions() as session:
        rows = await store.sessions_of(session, patient_id)
    return [
        SessionOut(
            session_id=r.id,
            urgency=Urgency(r.urgency),
            recommended_pool=r.recommended_pool,
            rule_set_version=r.rule_set_version,
            completed_at=r.completed_at,
        )
        for r in rows
    ]
