"""Secure messages between the patient and the care team."""

from __future__ import annotations

from pydantic import Field

from contracts.base import FhirId, Instant, InternalId, Payload, SourceVersion


class MessageAttachment(Payload):
    """A file the patient attached (an image or a PDF), carried inline: the messaging
    service bounds its size so the event stays well under the broker's message limit."""

    attachment_id: InternalId
    content_type: str = Field(max_length=100, description="image/png, image/jpeg, application/pdf")
    title: str = Field(max_length=200)
    size: int = Field(ge=0)
    data_base64: str = Field(description="The file's bytes, base64")


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
    topic: str | None = Field(
        default=None, description="Topic category the patient chose (routing rules' codes)"
    )
    emergency: bool = Field(
        default=False, description="The emergency check flagged the text (filed with priority)"
    )
    needs_review: bool = Field(
        default=False, description="The emergency check could not run: a clinician should look"
    )
    attachments: list[MessageAttachment] = Field(default_factory=list)


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
    subject: str | None = Field(default=None, max_length=200, description="Communication.topic")


class MessageSyncedV1(Payload):
    """The EHR's copy of a message in the patient's conversations: one the connector filed
    for us (`message_id` set: its EHR identity, for threading), one imported from the
    EHR's history (`imported`), or a later change the EHR made to one (e.g. the care team
    read it). Not a new message for the patient: nobody is notified of it."""

    patient_id: InternalId
    communication_fhir_id: FhirId
    message_id: InternalId | None = Field(default=None, description="Ours, when we filed it")
    thread_id: InternalId | None = Field(default=None, description="Ours, when known")
    thread_fhir_id: FhirId | None = Field(default=None, description="The thread's first")
    in_reply_to_fhir_id: FhirId | None = None
    from_patient: bool = Field(description="Sent by the patient (else by the care team)")
    sender_display: str | None = None
    subject: str | None = Field(default=None, max_length=200)
    body: str | None = Field(default=None, max_length=10_000, description="Imported only")
    status: str = Field(description="Communication.status")
    sent_at: Instant | None = None
    received_at: Instant | None = Field(
        default=None, description="Communication.received: when the recipient got/read it"
    )
    imported: bool = False
    source: SourceVersion
