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
    """One result line of a report (or a result on its own, or a vital sign).

    The same model carries a result in `lab.resulted` and in `record.imported`, built by
    one mapping in the connector, so a back-filled result has every fact a live one has.
    Fields after `effective` were added later (optional: older events still parse).
    """

    observation_fhir_id: FhirId
    code: Coding
    status: str
    value_quantity: Quantity | None = None
    value_string: str | None = Field(default=None, max_length=1000)
    value_coding: Coding | None = None
    reference_ranges: list[ReferenceRange] = Field(default_factory=list)
    interpretation: list[Coding] = Field(default_factory=list)
    effective: Instant | None = None
    issued: Instant | None = None
    performer: list[str] = Field(default_factory=list, description="Performer display names")
    category: list[Coding] = Field(default_factory=list)
    version_id: str | None = Field(
        default=None, max_length=64, description="The Observation's meta.versionId"
    )
    last_updated: Instant | None = Field(
        default=None, description="The Observation's meta.lastUpdated"
    )


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
