"""Operations routes of the gateway (ops bearer token): audit-chain verification."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from gateway import audit
from servicekit.app import Service
from servicekit.ops_api import Ops

router = APIRouter(prefix="/ops", tags=["ops"])


class AuditVerification(BaseModel):
    """Whether the PHI access log's hash chain is intact."""

    intact: bool
    first_broken_id: int | None = Field(description="The first row whose hash does not match")


@router.get("/audit/verify", response_model=AuditVerification)
async def verify_audit_chain(_: Ops, request: Request) -> AuditVerification:
    """Recompute the whole access log's hash chain (reads every row: not for hot paths)."""
    service: Service = request.app.state.service
    broken = await audit.verify(service.db)
    return AuditVerification(intact=broken is None, first_broken_id=broken)
