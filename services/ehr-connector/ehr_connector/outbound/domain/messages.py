"""A patient's message → a Communication to the care team. No I/O.

Threading follows R4's Communication: `partOf` names the thread's first Communication,
`inResponseTo` the message answered (the sandbox's clinician replies do the same).
"""

from __future__ import annotations

from typing import Any

from contracts.message import MessageSentV1
from ehr_connector.outbound.domain.identifiers import MESSAGE_ID, THREAD_EXTENSION, identifier
from ehr_connector.outbound.domain.tags import tagged

FhirJson = dict[str, Any]
EMERGENCY_NOTE = (
    "The portal's emergency check flagged this message; the patient was told to call "
    "emergency services now."
)
UNCHECKED_NOTE = (
    "The portal could not check this message for emergency language: please review it soon."
)


def _attachments(data: MessageSentV1) -> list[FhirJson]:
    """The patient's files as `payload.contentAttachment` (R4 Attachment, inline data)."""
    return [
        {
            "contentAttachment": {
                "contentType": a.content_type,
                "data": a.data_base64,
                "title": a.title,
                "size": a.size,
                "creation": data.sent_at.isoformat(),
            }
        }
        for a in data.attachments
    ]


def communication(
    data: MessageSentV1,
    *,
    patient_fhir_id: str,
    recipient: str,
    thread_fhir_id: str | None,
    in_reply_to_fhir_id: str | None,
) -> FhirJson:
    """The Communication from the patient to `recipient` (`CareTeam/<id>` or
    `Practitioner/<id>`), about the patient, threaded when part of a thread."""
    patient = {"reference": f"Patient/{patient_fhir_id}"}
    resource: FhirJson = {
        "resourceType": "Communication",
        "extension": [{"url": THREAD_EXTENSION, "valueString": data.thread_id}],
        "identifier": [identifier(MESSAGE_ID, data.message_id)],
        "status": "completed",
        "subject": patient,
        "sender": patient,
        "recipient": [{"reference": recipient}],
        "topic": {"text": data.subject},
        "sent": data.sent_at.isoformat(),
        "payload": [{"contentString": data.body}, *_attachments(data)],
    }
    if data.emergency:
        # The portal told the patient to call emergency services; the clinician sees why.
        resource["priority"] = "stat"
        resource["note"] = [{"text": EMERGENCY_NOTE}]
    elif data.needs_review:
        resource["priority"] = "urgent"
        resource["note"] = [{"text": UNCHECKED_NOTE}]
    if thread_fhir_id:
        resource["partOf"] = [{"reference": f"Communication/{thread_fhir_id}"}]
    if in_reply_to_fhir_id:
        resource["inResponseTo"] = [{"reference": f"Communication/{in_reply_to_fhir_id}"}]
    return tagged(resource)
