"""Lab results: a final or amended DiagnosticReport with its result Observations."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from contracts.base import (
    Coding,
    FhirId,
    Instant,
    InternalId,
    Payload,
    Quantity,
    ReferenceRange,
    SourceVersion,
)


class ReportStatus(StrEnum):
    """DiagnosticReport.status values a patient may see."""

    PRELIMINARY = "preliminary"
    FINAL = "final"
    AMENDED = "amended"
    CORRECTED = "corrected"
    APPENDED = "appended"
    CANCELLED = "cancelled"
    ENTERED_IN_ERROR = "entered-in-error"


class LabObservation(Payload):
    """One result line of a report."""

    observation_fhir_id: FhirId
    code: Coding
    status: str
    value_quantity: Quantity | None = None
    value_string: str | None = Field(default=None, max_length=1000)
    value_coding: Coding | None = None
    reference_ranges: list[ReferenceRange] = Field(default_factory=list)
    interpretation: list[Coding] = Field(default_factory=list)
    effective: Instant | None = None


class LabResultedV1(Payload):
    """A lab report reached final (or amended) state in the EHR."""

    patient_id: InternalId
    report_fhir_id: FhirId
    status: ReportStatus
    code: Coding
    category: list[Coding] = Field(default_factory=list)
    effective: Instant | None = None
    issued: Instant | None = None
    performer: list[str] = Field(default_factory=list, description="Performer display names")
    observations: list[LabObservation] = Field(default_factory=list)
    source: SourceVersion
