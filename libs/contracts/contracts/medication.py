"""Medication changes made in the EHR (started, changed, stopped)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from contracts.base import Coding, FhirId, Instant, InternalId, Payload, SourceVersion


class MedicationStatus(StrEnum):
    """FHIR R4 MedicationRequest.status values."""

    ACTIVE = "active"
    ON_HOLD = "on-hold"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    ENTERED_IN_ERROR = "entered-in-error"
    STOPPED = "stopped"
    DRAFT = "draft"
    UNKNOWN = "unknown"


class MedicationChangedV1(Payload):
    """A MedicationRequest of the patient was created or updated in the EHR."""

    patient_id: InternalId
    medication_request_fhir_id: FhirId
    status: MedicationStatus
    medication: Coding
    dosage_text: str | None = Field(default=None, max_length=1000)
    authored_on: Instant | None = None
    prescriber: str | None = Field(default=None, description="Prescriber display name")
    source: SourceVersion
