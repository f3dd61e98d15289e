"""Communication addressed to a patient → `message.received`."""

from __future__ import annotations

from contracts.message import MessageReceivedV1, MessageSyncedV1
from ehr_connector.inbound.domain.fhir_values import (
    Ref,
    Resource,
    as_list,
    contained,
    human_name,
    parse_instant,
    reference_of,
    references,
    string,
)
from ehr_connector.inbound.domain.mapping.common import (
    MappingContext,
    MappingResult,
    Rejected,
    Skipped,
    build,
    clip,
    source_version,
)
from ehr_connector.outbound.domain.identifiers import MESSAGE_ID, THREAD_EXTENSION

BODY_LIMIT = 10_000
# A message still being written, or withdrawn, is not delivered to the patient.
_DELIVERABLE = frozenset({"completed", "in-progress", "unknown"})
_STATUSES = _DELIVERABLE | {
    "preparation",
    "not-done",
    "on-hold",
    "stopped",
    "entered-in-error",
}


def patients(message: Resource) -> list[str]:
    """FHIR ids of the patients the message is addressed to (recipients only)."""
    return [r.id for r in references(message.get("recipient"), "Patient")]


def needs(message: Resource) -> list[Ref]:
    """The sender, when named without a display; the Communications it answers or is part
    of (when we filed one of them, it names our thread)."""
    refs: list[Ref] = []
    sender = message.get("sender")
    if isinstance(sender, dict) and not string(sender.get("display")):
        ref = reference_of(sender)
        if ref is not None and ref.type in (
            "Practitioner",
            "PractitionerRole",
            "Organization",
            "CareTeam",
        ):
            refs.append(ref)
    for element in (message.get("inResponseTo"), message.get("partOf")):
        for item in as_list(element):
            ref = reference_of(item)
            if ref is not None and ref.type == "Communication" and ref not in refs:
                refs.append(ref)
    return refs


def _our_thread(message: Resource, ctx: MappingContext) -> str | None:
    """Our thread id, from the extension on a Communication we filed that this answers."""
    for element in (message.get("inResponseTo"), message.get("partOf")):
        for item in as_list(element):
            related = ctx.get(reference_of(item))
            for extension in as_list(related.get("extension") if related else None):
                if isinstance(extension, dict) and extension.get("url") == THREAD_EXTENSION:
                    value = string(extension.get("valueString"))
                    if value:
                        return value
    return None


def _body(message: Resource) -> str | None:
    parts: list[str] = []
    for payload in as_list(message.get("payload")):
        if not isinstance(payload, dict):
            continue
        if string(payload.get("contentString")):
            parts.append(payload["contentString"])
            continue
        attachment = payload.get("contentAttachment")
        if isinstance(attachment, dict):
            label = string(attachment.get("title")) or string(attachment.get("contentType"))
            parts.append(f"[Attachment: {label}]" if label else "[Attachment]")
        elif isinstance(payload.get("contentReference"), dict):
            parts.append("[Attached record]")
    return clip("\n\n".join(parts), BODY_LIMIT) if parts else None


def _communication_id(element: object) -> str | None:
    for item in as_list(element):
        ref = reference_of(item)
        if ref is not None and ref.type == "Communication":
            return ref.id
    return None


def map_message(message: Resource, ctx: MappingContext) -> MappingResult:
    """A clinician's message to the patient → `MessageReceivedV1`."""
    source = source_version(message)
    if isinstance(source, Rejected):
        return source
    status = message.get("status")
    if status not in _STATUSES:
        return Rejected("Communication.status is missing or not an R4 code.")
    if status not in _DELIVERABLE:
        return Skipped(f"Communication is {status}: not a delivered message.")
    if not patients(message):
        return Rejected("The Communication has no Patient recipient.")
    sender = message.get("sender")
    sender_ref = reference_of(sender)
    if sender_ref is not None and sender_ref.type in ("Patient", "RelatedPerson"):
        return Skipped("The message was sent by the patient's side, not by the care team.")
    body = _body(message)
    if body is None:
        return Rejected("The Communication has no content.")
    sent_at = parse_instant(message.get("sent")) or source.last_updated
    sender_display = None
    if isinstance(sender, dict):
        sender_display = string(sender.get("display")) or human_name(
            contained(message, sender) or ctx.get(sender_ref)
        )
    in_reply_to = _communication_id(message.get("inResponseTo"))
    thread = _communication_id(message.get("partOf")) or in_reply_to
    topic = message.get("topic")
    subject = clip(string(topic.get("text")), 200) if isinstance(topic, dict) else None
    return build(
        MessageReceivedV1,
        {
            "patient_id": ctx.patient_id,
            "communication_fhir_id": source.fhir_id,
            "thread_id": _our_thread(message, ctx),
            "in_reply_to_fhir_id": in_reply_to,
            "thread_fhir_id": thread,
            "sender_display": sender_display,
            "subject": subject,
            "body": body,
            "sent_at": sent_at,
            "source": source,
        },
    )


def _our_message_id(message: Resource) -> str | None:
    for item in as_list(message.get("identifier")):
        if isinstance(item, dict) and item.get("system") == MESSAGE_ID:
            value = item.get("value")
            return value if isinstance(value, str) and value else None
    return None


def _own_thread(message: Resource) -> str | None:
    for extension in as_list(message.get("extension")):
        if isinstance(extension, dict) and extension.get("url") == THREAD_EXTENSION:
            return string(extension.get("valueString"))
    return None


def map_history_message(message: Resource, patient_id: str) -> MappingResult:
    """Any message of the patient's conversations in the EHR (from the patient or the care
    team) → `MessageSyncedV1`, for the back-fill: messaging groups them into threads by
    `partOf`/`inResponseTo` and shows them as history, notifying nobody."""
    source = source_version(message)
    if isinstance(source, Rejected):
        return source
    status = message.get("status")
    if status not in _STATUSES:
        return Rejected("Communication.status is missing or not an R4 code.")
    if status not in _DELIVERABLE:
        return Skipped(f"Communication is {status}: not a delivered message.")
    body = _body(message)
    if body is None:
        return Rejected("The Communication has no content.")
    sender = message.get("sender")
    sender_ref = reference_of(sender)
    from_patient = sender_ref is not None and sender_ref.type in ("Patient", "RelatedPerson")
    in_reply_to = _communication_id(message.get("inResponseTo"))
    topic = message.get("topic")
    return build(
        MessageSyncedV1,
        {
            "patient_id": patient_id,
            "communication_fhir_id": source.fhir_id,
            "message_id": _our_message_id(message),
            "thread_id": _own_thread(message),
            "thread_fhir_id": _communication_id(message.get("partOf")) or in_reply_to,
            "in_reply_to_fhir_id": in_reply_to,
            "from_patient": from_patient,
            "sender_display": string(sender.get("display")) if isinstance(sender, dict) else None,
            "subject": clip(string(topic.get("text")), 200) if isinstance(topic, dict) else None,
            "body": body,
            "status": status,
            "sent_at": parse_instant(message.get("sent")) or source.last_updated,
            "received_at": parse_instant(message.get("received")),
            "imported": True,
            "source": source,
        },
    )
