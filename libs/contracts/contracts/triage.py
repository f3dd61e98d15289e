"""AI-assisted triage before a visit."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from contracts.base import Coding, Instant, InternalId, Payload


class Urgency(StrEnum):
    """How soon the patient should be seen."""

    EMERGENCY = "emergency"
    URGENT = "urgent"
    ROUTINE = "routine"
    SELF_CARE = "self-care"


class TriageCompletedV1(Payload):
    """A triage session reached an outcome."""

    session_id: InternalId
    patient_id: InternalId
    urgency: Urgency
    summary: str = Field(max_length=2000, description="For the care team")
    findings: list[Coding] = Field(default_factory=list)
    rule_set_version: str
    recommended_pool: str
    completed_at: Instant
