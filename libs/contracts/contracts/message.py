"""Secure messages between the patient and the care team."""

from __future__ import annotations

from pydantic import Field

from contracts.base import FhirId, Instant, InternalId, Payload, SourceVersion


class MessageSentV1(Payload):
    """The patient sent a message to the care team."""

    message_id: InternalId
    thread_id: InternalId
    patient_id: InternalId
    recipient_pool: str = Field(description="Care-team pool the routing rules chose")
    care_team_fhir_id: FhirId | None = None
    in_reply_to_fhir_id: FhirId | None = Field(
        default=None, description="Communication this answers, for threading"
    )
    thread_fhir_id: FhirId | None = Field(default=None, description="First Communication")
    subject: str = Field(max_length=200)
    body: str = Field(max_length=10_000)
    sent_at: Instant


class MessageReceivedV1(Payload):
    """A clinician's message to the patient arrived from the EHR."""

    patient_id: InternalId
    communication_fhir_id: FhirId
    thread_id: InternalId | None = Field(default=None, description="Known when a reply")
    in_reply_to_fhir_id: FhirId | None = None
    thread_fhir_id: FhirId | None = None
    sender_display: str | None = None
    body: str = Field(max_length=10_000)
    sent_at: Instant
    source: SourceVersion
