"""The sandbox's SubscriptionTopics: what fires, for whom, and with which context.

Each topic has a canonical URL (`http://portal.example.org/fhir/SubscriptionTopic/<id>`),
a focus resource type, a trigger rule over (interaction, current version, previous
version), the `patient` filter (which patients a focus resource concerns) and the
additional context a notification may carry. In R4 a SubscriptionTopic has no resource of
its own, so each is also served as a `Basic` resource in the Subscriptions Backport IG's
R4 representation (cross-version `extension-SubscriptionTopic.*` extensions), readable at
`/fhir/Basic/<id>`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

CANONICAL_BASE = "http://portal.example.org/fhir/SubscriptionTopic/"
TOPIC_VERSION = "1.0.0"
TOPIC_DATE = "2026-11-25"

_R5_EXT = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic."
_R4B_EXT = "http://hl7.org/fhir/4.3/StructureDefinition/extension-SubscriptionTopic."

Resource = dict[str, Any]
Trigger = Callable[[str, Resource, Resource | None], bool]

_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
# R4 DiagnosticReport/Observation statuses meaning "a result a patient may see": final and
# the amended family (corrected and appended are kinds of amended in R4).
RESULT_STATUSES = frozenset({"final", "amended", "corrected", "appended"})


def normalise_reference(reference: str) -> str | None:
    """`Type/id` of a relative, absolute or versioned reference; None if it is not one."""
    match = _REFERENCE.search(reference.strip())
    if match is None:
        return None
    return f"{match.group(1)}/{match.group(2)}"


def _refs(values: Iterable[Any], resource_type: str | None = None) -> set[str]:
    found: set[str] = set()
    for value in values:
        if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
            continue
        ref = normalise_reference(value["reference"])
        if ref is not None and (resource_type is None or ref.startswith(resource_type + "/")):
            found.add(ref)
    return found


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _status(resource: Resource | None) -> Any:
    return None if resource is None else resource.get("status")


def _became(statuses: frozenset[str]) -> Trigger:
    def trigger(interaction: str, current: Resource, previous: Resource | None) -> bool:
        if interaction not in ("create", "update"):
            return False
        status = _status(current)
        return status in statuses and (previous is None or _status(previous) != status)

    return trigger


def _written(interaction: str, _current: Resource, _previous: Resource | None) -> bool:
    return interaction in ("create", "update")


def _status_changed(interaction: str, current: Resource, previous: Resource | None) -> bool:
    if interaction == "create":
        return True
    return interaction == "update" and (previous is None or _status(previous) != _status(current))


def _any_change(interaction: str, _current: Resource, _previous: Resource | None) -> bool:
    return interaction in ("create", "update", "delete")


def _patient_recipients(resource: Resource | None) -> set[str]:
    if resource is None:
        return set()
    return _refs(_as_list(resource.get("recipient")), "Patient")


def _communication_to_patient(
    interaction: str, current: Resource, previous: Resource | None
) -> bool:
    if interaction not in ("create", "update") or not _patient_recipients(current):
        return False
    # An update fires only when it is what made the message one to a patient.
    return interaction == "create" or previous is None or not _patient_recipients(previous)


def _subject_patients(resource: Resource) -> set[str]:
    return _refs(_as_list(resource.get("subject")), "Patient") | _refs(
        _as_list(resource.get("patient")), "Patient"
    )


def _appointment_patients(resource: Resource) -> set[str]:
    actors = [p.get("actor") for p in _as_list(resource.get("participant")) if isinstance(p, dict)]
    return _refs(actors, "Patient")


def _communication_patients(resource: Resource) -> set[str]:
    return _patient_recipients(resource) | _refs(_as_list(resource.get("subject")), "Patient")


def _no_patients(_resource: Resource) -> set[str]:
    # Slots: the manager looks up the Appointments booked into the slot instead.
    return set()


def _report_results(resource: Resource) -> list[str]:
    return sorted(_refs(_as_list(resource.get("result")), "Observation"))


def _medication(resource: Resource) -> list[str]:
    return sorted(_refs(_as_list(resource.get("medicationReference")), "Medication"))


def _nothing(_resource: Resource) -> list[str]:
    return []


@dataclass(frozen=True)
class Topic:
    """One SubscriptionTopic the sandbox supports."""

    id: str
    name: str
    title: str
    description: str
    resource_type: str
    interactions: tuple[str, ...]
    trigger: Trigger
    patients: Callable[[Resource], set[str]]
    additional_context: Callable[[Resource], list[str]]
    query_previous: str | None
    query_current: str | None
    fhirpath: str
    includes: tuple[str, ...] = ()
    patient_filter_note: str = "Filter on the patient the focus resource is about."

    @property
    def canonical(self) -> str:
        """The topic's canonical URL, used as `Subscription.criteria`."""
        return CANONICAL_BASE + self.id

    def fires(self, interaction: str, current: Resource, previous: Resource | None) -> bool:
        """Whether a committed write of the focus type is an event of this topic."""
        return self.trigger(interaction, current, previous)


TOPICS: tuple[Topic, ...] = (
    Topic(
        id="diagnosticreport-final",
        name="DiagnosticReportFinal",
        title="Lab result final or amended",
        description=(
            "A DiagnosticReport (lab result) became final or amended (including corrected "
            "and appended) on create or update. Additional context: its result Observations."
        ),
        resource_type="DiagnosticReport",
        interactions=("create", "update"),
        trigger=_became(RESULT_STATUSES),
        patients=_subject_patients,
        additional_context=_report_results,
        query_previous="status:not=final,amended,corrected,appended",
        query_current="status=final,amended,corrected,appended",
        fhirpath=(
            "(%previous.id.empty() or %previous.status != %current.status) and "
            "(%current.status in ('final' | 'amended' | 'corrected' | 'appended'))"
        ),
        includes=("DiagnosticReport:result",),
    ),
    Topic(
        id="observation-final",
        name="ObservationFinal",
        title="Observation final",
        description=("An Observation became final (or amended/corrected) on create or update."),
        resource_type="Observation",
        interactions=("create", "update"),
        trigger=_became(frozenset({"final", "amended", "corrected"})),
        patients=_subject_patients,
        additional_context=_nothing,
        query_previous="status:not=final,amended,corrected",
        query_current="status=final,amended,corrected",
        fhirpath=(
            "(%previous.id.empty() or %previous.status != %current.status) and "
            "(%current.status in ('final' | 'amended' | 'corrected'))"
        ),
    ),
    Topic(
        id="medicationrequest-change",
        name="MedicationRequestChange",
        title="Medication request created or updated",
        description=(
            "A MedicationRequest was created or updated. Additional context: the "
            "referenced Medication, if any."
        ),
        resource_type="MedicationRequest",
        interactions=("create", "update"),
        trigger=_written,
        patients=_subject_patients,
        additional_context=_medication,
        query_previous=None,
        query_current=None,
        fhirpath="%current.exists()",
        includes=("MedicationRequest:medication",),
    ),
    Topic(
        id="appointment-status",
        name="AppointmentStatusChange",
        title="Appointment status changed",
        description="An Appointment was created, or updated with a different status.",
        resource_type="Appointment",
        interactions=("create", "update"),
        trigger=_status_changed,
        patients=_appointment_patients,
        additional_context=_nothing,
        query_previous=None,
        query_current=None,
        fhirpath="%previous.id.empty() or (%previous.status != %current.status)",
        patient_filter_note="Filter on a Patient participant of the appointment.",
    ),
    Topic(
        id="slot-change",
        name="SlotChange",
        title="Slot changed",
        description="A Slot was created, updated or deleted (availability changed).",
        resource_type="Slot",
        interactions=("create", "update", "delete"),
        trigger=_any_change,
        patients=_no_patients,
        additional_context=_nothing,
        query_previous=None,
        query_current=None,
        fhirpath="true",
        patient_filter_note=(
            "A Slot belongs to no patient: `patient` matches the patients of the "
            "Appointments booked into the slot. Subscribe without a filter to follow all "
            "availability changes."
        ),
    ),
    Topic(
        id="communication-patient",
        name="CommunicationToPatient",
        title="Message to a patient",
        description=(
            "A Communication addressed to a Patient (a recipient is a Patient) was created, "
            "or updated so that it now is."
        ),
        resource_type="Communication",
        interactions=("create", "update"),
        trigger=_communication_to_patient,
        patients=_communication_patients,
        additional_context=_nothing,
        query_previous=None,
        query_current="recipient:Patient",
        fhirpath="%current.recipient.where(resolve() is Patient).exists()",
        patient_filter_note="Filter on the Patient recipient (or subject) of the message.",
    ),
)

TOPICS_BY_CANONICAL: dict[str, Topic] = {topic.canonical: topic for topic in TOPICS}
TOPICS_BY_TYPE: dict[str, list[Topic]] = {}
for _topic in TOPICS:
    TOPICS_BY_TYPE.setdefault(_topic.resource_type, []).append(_topic)


def topic_for(canonical: str) -> Topic | None:
    """The topic with this canonical URL (a `|version` suffix is ignored)."""
    return TOPICS_BY_CANONICAL.get(canonical.split("|", 1)[0])


def topics_for(resource_type: str) -> list[Topic]:
    """The topics whose focus is `resource_type`."""
    return TOPICS_BY_TYPE.get(resource_type, [])


def topic_basic_resource(topic: Topic) -> Resource:
    """The topic as an R4 `Basic` resource in the Backport IG's cross-version form."""
    trigger: list[dict[str, Any]] = [
        {"url": "description", "valueMarkdown": topic.description},
        {
            "url": "resource",
            "valueUri": f"http://hl7.org/fhir/StructureDefinition/{topic.resource_type}",
        },
    ]
    trigger += [{"url": "supportedInteraction", "valueCode": i} for i in topic.interactions]
    if topic.query_current is not None:
        query: list[dict[str, Any]] = []
        if topic.query_previous is not None:
            query.append({"url": "previous", "valueString": topic.query_previous})
            query.append({"url": "resultForCreate", "valueCode": "test-passes"})
        query.append({"url": "current", "valueString": topic.query_current})
        query.append({"url": "resultForDelete", "valueCode": "test-fails"})
        query.append({"url": "requireBoth", "valueBoolean": topic.query_previous is not None})
        trigger.append({"url": "queryCriteria", "extension": query})
    trigger.append({"url": "fhirPathCriteria", "valueString": topic.fhirpath})
    extensions: list[dict[str, Any]] = [
        {"url": _R5_EXT + "url", "valueUri": topic.canonical},
        {"url": _R5_EXT + "version", "valueString": TOPIC_VERSION},
        {"url": _R5_EXT + "name", "valueString": topic.name},
        {"url": _R5_EXT + "title", "valueString": topic.title},
        {"url": _R5_EXT + "date", "valueDateTime": TOPIC_DATE},
        {"url": _R5_EXT + "description", "valueMarkdown": topic.description},
        {"url": _R4B_EXT + "resourceTrigger", "extension": trigger},
        {
            "url": _R4B_EXT + "canFilterBy",
            "extension": [
                {"url": "description", "valueMarkdown": topic.patient_filter_note},
                {"url": "resource", "valueUri": topic.resource_type},
                {"url": "filterParameter", "valueString": "patient"},
            ],
        },
    ]
    shape: list[dict[str, Any]] = [{"url": "resource", "valueUri": topic.resource_type}]
    shape += [{"url": "include", "valueString": include} for include in topic.includes]
    extensions.append({"url": _R4B_EXT + "notificationShape", "extension": shape})
    return {
        "resourceType": "Basic",
        "id": topic.id,
        "extension": extensions,
        "modifierExtension": [{"url": _R5_EXT + "status", "valueCode": "active"}],
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]
        },
        "text": {
            "status": "generated",
            "div": (
                '<div xmlns="http://www.w3.org/1999/xhtml"><p>SubscriptionTopic '
                f"<b>{topic.title}</b>: {topic.canonical}</p></div>"
            ),
        },
    }
