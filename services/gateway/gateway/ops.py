"""Operations routes of the gateway (ops bearer token): audit-chain verification."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from gateway import audit
from servicekit.app import Service
from servicekit.ops_api import Ops

router = APIRouter(prefix="/ops", tags=["ops"])


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
