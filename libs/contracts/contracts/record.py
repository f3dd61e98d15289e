"""Back-filled history, published in batches after a patient is linked."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from contracts.base import Coding, FhirId, Instant, InternalId, Payload
from contracts.lab import LabObservation

# Inline document content travels base64-encoded; above this size a document is listed
# without its content (the event batches must stay well under the broker's message size).
INLINE_CONTENT_LIMIT = 96_000


class RecordKind(StrEnum):
    """The kinds of chart entry the records service keeps."""

    LAB_RESULT = "lab-result"
    VITAL_SIGN = "vital-sign"
    MEDICATION = "medication"
    ALLERGY = "allergy"
    CONDITION = "condition"
    IMMUNIZATION = "immunization"
    DOCUMENT = "document"


class DocumentAttachment(Payload):
    """One attachment of a DocumentReference: what it is, and its content when small."""

    content_type: str | None = Field(default=None, max_length=200)
    title: str | None = Field(default=None, max_length=500)
    language: str | None = Field(default=None, max_length=20)
    size: int | None = Field(default=None, ge=0)
    created: Instant | None = None
    data: str | None = Field(
        default=None,
        max_length=INLINE_CONTENT_LIMIT,
        description="Base64 content of an inline attachment (absent when the EHR serves it "
        "by URL or it is larger than the inline limit)",
    )


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
    # Added later (optional, so older batches still parse):
    observation: LabObservation | None = Field(
        default=None,
        description="A lab result or vital sign in full, as `lab.resulted` carries it",
    )
    category: list[Coding] = Field(default_factory=list, description="A lab report's category")
    issued: Instant | None = None
    performer: list[str] = Field(default_factory=list, description="Performer display names")
    attachments: list[DocumentAttachment] = Field(
        default_factory=list, description="A document's attachments"
    )


class RecordImportedV1(Payload):
    """A batch of a patient's history imported from the EHR."""

    patient_id: InternalId
    backfill_id: InternalId
    batch_number: int = Field(ge=1)
    last_batch: bool
    entries: list[ImportedEntry]
    imported_at: Instant
