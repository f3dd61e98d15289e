"""Operations routes of the gateway (ops bearer token): audit-chain verification and the
access log's export as FHIR AuditEvents (`gateway.audit_export`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gateway import audit, audit_export
from gateway.settings import Settings
from servicekit.app import Service
from servicekit.ops_api import Ops

router = APIRouter(prefix="/ops", tags=["ops"])
FHIR_JSON = "application/fhir+json"


class AuditVerification(BaseModel):
    """Whether the PHI access log's keyed hash chain and its anchors are intact."""

    intact: bool
    first_broken_id: int | None = Field(description="The first row that does not match")
    rows: int = Field(description="Rows verified")
    checkpoints: int = Field(description="Signed checkpoints the log was checked against")
    problem: str | None = Field(default=None, description="What is wrong, when not intact")


@router.get("/audit/verify", response_model=AuditVerification)
async def verify_audit_chain(_: Ops, request: Request) -> AuditVerification:
    """Verify the whole access log against the audit key and every signed checkpoint, then
    anchor its present end (reads every row: not for hot paths)."""
    service: Service = request.app.state.service
    verdict = await audit.anchor_and_verify(service)
    return AuditVerification(
        intact=verdict.intact,
        first_broken_id=verdict.first_broken_id,
        rows=verdict.rows,
        checkpoints=verdict.checkpoints,
        problem=verdict.problem,
    )


MAX_EXPORT = 50_000
PatientParam = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="The patient's portal id or EHR (FHIR) id; none = every patient",
    ),
]


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise HTTPException(422, f"{name} needs a time zone offset, e.g. 2026-12-01T00:00:00Z")
    return value


@router.get(
    "/audit/export",
    response_class=JSONResponse,
    responses={200: {"content": {FHIR_JSON: {}}, "description": "A Bundle (collection)"}},
)
async def export_audit_events(
    _: Ops,
    request: Request,
    patient: PatientParam = None,
    since: Annotated[datetime | None, Query(description="From this time on (with offset)")] = None,
    until: Annotated[datetime | None, Query(description="Before this time (with offset)")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EXPORT)] = 10_000,
) -> JSONResponse:
    """The access log as FHIR R4 AuditEvents (IHE BALP patterns) in a Bundle of type
    collection, oldest first: every read, write and refused attempt of the period."""
    service: Service = request.app.state.service
    settings: Settings = service.settings  # type: ignore[assignment]
    async with service.db.sessions() as session:
        rows, links = await audit_export.rows_for(
            session,
            patient=patient,
            since=_aware(since, "since"),
            until=_aware(until, "until"),
            limit=limit,
        )
    body = audit_export.bundle(
        rows, links, issuer=settings.oidc_issuer, observer=settings.audit_source_id
    )
    return JSONResponse(body, media_type=FHIR_JSON)
