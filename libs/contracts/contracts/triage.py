"""AI-assisted triage before a visit."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from contracts.base import Coding, Instant, InternalId, Payload


class Urgency(StrEnum):
    """How soon the patient should be seen."""

    EMERGENCY = "emergency"
    URGENT = "urgent"
    ROUTINE = "routine"
    SELF_CARE = "self-care"


class TriageFlag(Payload):
    """A red (emergency) or amber (urgent) flag the rules found, with its evidence."""

    id: str = Field(max_length=64)
    level: Literal["red", "amber", "routine"]
    text: str = Field(max_length=500, description="What the flag means, for the care team")
    evidence: list[str] = Field(
        default_factory=list, description="The patient's words or answers that raised it"
    )


class TriageAnswer(Payload):
    """The patient's answer to a follow-up question."""

    question_id: str = Field(max_length=64)
    question: str = Field(max_length=500)
    answer: str = Field(max_length=100)


class TriageCompletedV1(Payload):
    """A triage session reached an outcome.

    `flags`, `answers`, `patient_text` and `advice` were added later (optional, so old
    events still parse); `patient_text` is the patient's own description, carried so the
    care team's EHR task can quote it.
    """

    session_id: InternalId
    patient_id: InternalId
    urgency: Urgency
    summary: str = Field(max_length=2000, description="For the care team")
    findings: list[Coding] = Field(default_factory=list)
    rule_set_version: str
    recommended_pool: str
    completed_at: Instant
    flags: list[TriageFlag] = Field(default_factory=list)
    answers: list[TriageAnswer] = Field(default_factory=list)
    patient_text: str | None = Field(
        default=None, max_length=2000, description="The patient's own words"
    )
    advice: str | None = Field(
        default=None, max_length=1000, description="What the patient was told"
    )
