"""A patient's history → `ImportedEntry` items of `record.imported` (the back-fill).

Only the facts the records read model shows are carried (kind, code, label, status,
rendered value, date), never the resource. Types and categories the read model has no
place for are skipped, not rejected. Lab results and vital signs carry the full result
(`ImportedEntry.observation`) built by the live path's own `lab.map_observation`, and lab
reports the live path's `lab.report_facts`: one mapping for live and back-filled results.
"""

from __future__ import annotations

import re
from typing import Any

from contracts.base import Coding
from contracts.lab import LabObservation
from contracts.record import INLINE_CONTENT_LIMIT, DocumentAttachment, ImportedEntry, RecordKind
from ehr_connector.inbound.domain.fhir_values import (
    Resource,
    as_list,
    best_coding,
    codings,
    concept_text,
    contained,
    parse_instant,
    string,
)
from ehr_connector.inbound.domain.mapping.common import (
    LOINC,
    RXNORM,
    SNOMED,
    Rejected,
    Skipped,
    build,
    clip,
    render_quantity,
    source_version,
)
from ehr_connector.inbound.domain.mapping.lab import (
    map_observation,
    render_components,
    render_value,
    report_facts,
)

OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
TEXT_LIMIT = 500
IMPORTED_TYPES: tuple[str, ...] = (
    "Condition",
    "AllergyIntolerance",
    "MedicationRequest",
    "Immunization",
    "DiagnosticReport",
    "Observation",
    "DocumentReference",
)

HistoryResult = ImportedEntry | Rejected | Skipped


def _status(resource: Resource, *names: str) -> str | None:
    for name in names:
        value = resource.get(name)
        if isinstance(value, str) and value:
            return value
        concept = best_coding(value)
        if concept is not None:
            return concept.code
    return None


def _when(resource: Resource, *names: str) -> Any:
    for name in names:
        value = resource.get(name)
        if isinstance(value, dict):
            value = value.get("start")
        moment = parse_instant(value)
        if moment is not None:
            return moment
    return None


def _observation_kind(observation: Resource) -> RecordKind | None:
    categories = {
        c.code
        for concept in as_list(observation.get("category"))
        for c in codings(concept)
        if c.system == OBSERVATION_CATEGORY
    }
    if "vital-signs" in categories:
        return RecordKind.VITAL_SIGN
    if "laboratory" in categories:
        return RecordKind.LAB_RESULT
    if not categories:
        # Older servers (and the official examples' lipid panel) leave a report's results
        # uncategorised. They are imported as results; the read model lists one on its own
        # only when it is categorised as laboratory, else shows it in the report that
        # names it.
        return RecordKind.LAB_RESULT
    return None


def _observation_value(observation: Resource) -> str | None:
    value = render_quantity(observation.get("valueQuantity"))
    if value is None:
        concept = observation.get("valueCodeableConcept")
        value = concept_text(concept) if concept is not None else None
    return value or render_value(observation) or render_components(observation)


def _entry(
    resource: Resource,
    kind: RecordKind,
    code_element: Any,
    *,
    preferred: tuple[str, ...],
    status: str | None,
    effective: Any,
    display: str | None = None,
    value: str | None = None,
    related: list[str] | None = None,
    observation: LabObservation | None = None,
    category: list[Coding] | None = None,
    issued: Any = None,
    performer: list[str] | None = None,
    attachments: list[DocumentAttachment] | None = None,
) -> HistoryResult:
    source = source_version(resource)
    if isinstance(source, Rejected):
        return source
    built = build(
        ImportedEntry,
        {
            "kind": kind,
            "resource_type": source.resource_type,
            "fhir_id": source.fhir_id,
            "version_id": source.version_id,
            "status": status,
            "code": best_coding(code_element, preferred),
            "display": clip(display or concept_text(code_element), TEXT_LIMIT),
            "value": clip(value, TEXT_LIMIT),
            "effective": effective,
            "related_fhir_ids": related or [],
            "observation": observation,
            "category": category or [],
            "issued": issued,
            "performer": performer or [],
            "attachments": attachments or [],
        },
    )
    if isinstance(built, Rejected):
        return built
    assert isinstance(built, ImportedEntry)
    return built


_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _observation_ids(report: Resource) -> list[str]:
    """Ids of the Observations a report's `result` references (relative `Observation/id`)."""
    ids: list[str] = []
    for item in as_list(report.get("result")):
        reference = item.get("reference") if isinstance(item, dict) else None
        if isinstance(reference, str) and reference.startswith("Observation/"):
            candidate = reference.split("/", 2)[1]
            if _FHIR_ID.fullmatch(candidate):
                ids.append(candidate)
    return ids


def _attachments(document: Resource) -> list[DocumentAttachment]:
    """A document's attachments; content only when inline and small enough to carry."""
    found: list[DocumentAttachment] = []
    for content in as_list(document.get("content")):
        attachment = content.get("attachment") if isinstance(content, dict) else None
        if not isinstance(attachment, dict):
            continue
        data = string(attachment.get("data"))
        size = attachment.get("size")
        found.append(
            DocumentAttachment(
                content_type=clip(string(attachment.get("contentType")), 200),
                title=clip(string(attachment.get("title")), TEXT_LIMIT),
                language=clip(string(attachment.get("language")), 20),
                size=size if isinstance(size, int) and size >= 0 else None,
                created=parse_instant(attachment.get("creation")),
                data=data if data and len(data) <= INLINE_CONTENT_LIMIT else None,
            )
        )
    return found


def map_history(resource: Resource) -> HistoryResult:
    """One resource of the patient's history as an imported chart entry."""
    kind = resource.get("resourceType")
    if kind == "Observation":
        record_kind = _observation_kind(resource)
        if record_kind is None:
            return Skipped("Observation is neither a lab result nor a vital sign.")
        observation = map_observation(resource)
        if isinstance(observation, Rejected):
            return observation
        return _entry(
            resource,
            record_kind,
            resource.get("code"),
            preferred=(LOINC, SNOMED),
            status=_status(resource, "status"),
            effective=_when(resource, "effectiveDateTime", "effectivePeriod", "issued"),
            value=_observation_value(resource),
            observation=observation,
        )
    if kind == "DiagnosticReport":
        facts = report_facts(resource, None)
        if isinstance(facts, Rejected):
            return facts
        return _entry(
            resource,
            RecordKind.LAB_RESULT,
            resource.get("code"),
            preferred=(LOINC, SNOMED),
            status=_status(resource, "status"),
            effective=facts["effective"] or parse_instant(resource.get("issued")),
            related=_observation_ids(resource),
            category=facts["category"],
            issued=facts["issued"],
            performer=facts["performer"],
        )
    if kind == "MedicationRequest":
        concept = resource.get("medicationCodeableConcept")
        if concept is None:
            medication = contained(resource, resource.get("medicationReference"))
            concept = medication.get("code") if medication else None
        display = concept_text(concept)
        reference = resource.get("medicationReference")
        if display is None and isinstance(reference, dict):
            display = string(reference.get("display"))
        dosage = [
            d["text"]
            for d in as_list(resource.get("dosageInstruction"))
            if isinstance(d, dict) and string(d.get("text"))
        ]
        return _entry(
            resource,
            RecordKind.MEDICATION,
            concept,
            preferred=(RXNORM, SNOMED),
            status=_status(resource, "status"),
            effective=_when(resource, "authoredOn"),
            display=display,
            value="; ".join(dosage) or None,
        )
    if kind == "AllergyIntolerance":
        return _entry(
            resource,
            RecordKind.ALLERGY,
            resource.get("code"),
            preferred=(SNOMED,),
            status=_status(resource, "clinicalStatus", "verificationStatus"),
            effective=_when(resource, "onsetDateTime", "recordedDate"),
        )
    if kind == "Condition":
        return _entry(
            resource,
            RecordKind.CONDITION,
            resource.get("code"),
            preferred=(SNOMED,),
            status=_status(resource, "clinicalStatus", "verificationStatus"),
            effective=_when(resource, "onsetDateTime", "onsetPeriod", "recordedDate"),
        )
    if kind == "Immunization":
        return _entry(
            resource,
            RecordKind.IMMUNIZATION,
            resource.get("vaccineCode"),
            preferred=("http://hl7.org/fhir/sid/cvx", SNOMED),
            status=_status(resource, "status"),
            effective=_when(resource, "occurrenceDateTime", "recorded"),
        )
    if kind == "DocumentReference":
        return _entry(
            resource,
            RecordKind.DOCUMENT,
            resource.get("type"),
            preferred=(LOINC,),
            status=_status(resource, "status"),
            effective=_when(resource, "date"),
            display=string(resource.get("description")),
            attachments=_attachments(resource),
        )
    return Skipped(f"{kind} is not part of the imported chart.")
