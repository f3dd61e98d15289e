"""A patient's message → a Communication to the care team. No I/O.

Threading follows R4's Communication: `partOf` names the thread's first Communication,
`inResponseTo` the message answered (the sandbox's clinician replies do the same).
"""

from __future__ import annotations

from typing import Any

from contracts.message import MessageSentV1
from ehr_connector.outbound.identifiers import MESSAGE_ID, identifier
from ehr_connector.outbound.tags import tagged

FhirJson = dict[str, Any]


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
        "identifier": [identifier(MESSAGE_ID, data.message_id)],
        "status": "completed",
        "subject": patient,
        "sender": patient,
        "recipient": [{"reference": recipient}],
        "topic": {"text": data.subject},
        "sent": data.sent_at.isoformat(),
        "payload": [{"contentString": data.body}],
    }
    if thread_fhir_id:
        resource["partOf"] = [{"reference": f"Communication/{thread_fhir_id}"}]
    if in_reply_to_fhir_id:
        resource["inResponseTo"] = [{"reference": f"Communication/{in_reply_to_fhir_id}"}]
    return tagged(resource)
