"""Back-filled history, published in batches after a patient is linked."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from contracts.base import Coding, FhirId, Instant, InternalId, Payload


class RecordKind(StrEnum):
    """The kinds of chart entry the records service keeps."""

    LAB_RESULT = "lab-result"
    VITAL_SIGN = "vital-sign"
    MEDICATION = "medication"
    ALLERGY = "allergy"
    CONDITION = "condition"
    IMMUNIZATION = "immunization"
    DOCUMENT = "document"


class ImportedEntry(Payload):
    """One chart entry: the facts the records read model shows, never the whole resource."""

    kind: RecordKind
    resource_type: str
    fhir_id: FhirId
    version_id: str
    status: str | None = None
    code: Coding | None = None
    display: str | None = Field(default=None, max_length=500)
    value: str | None = Field(default=None, max_length=500, description="Rendered value+unit")
    effective: Instant | None = None
    related_fhir_ids: list[FhirId] = Field(
        default_factory=list,
        description="A lab report's result Observations (their own entries carry the values)",
    )


class RecordImportedV1(Payload):
    """A batch of a patient's history imported from the EHR."""

    patient_id: InternalId
    backfill_id: InternalId
    batch_number: int = Field(ge=1)
    last_batch: bool
    entries: list[ImportedEntry]
    imported_at: Instant
