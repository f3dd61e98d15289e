"""A patient's history → `ImportedEntry` items of `record.imported` (the back-fill).

Only the facts the records read model shows are carried (kind, code, label, status,
rendered value, date), never the resource. Types and categories the read model has no
place for are skipped, not rejected.
"""

from __future__ import annotations

import re
from typing import Any

from contracts.record import ImportedEntry, RecordKind
from ehr_connector.inbound.fhir_values import (
    Resource,
    as_list,
    best_coding,
    codings,
    concept_text,
    contained,
    parse_instant,
    string,
)
from ehr_connector.inbound.mapping.common import (
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
from ehr_connector.inbound.mapping.lab import render_components, render_value

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


def map_history(resource: Resource) -> HistoryResult:
    """One resource of the patient's history as an imported chart entry."""
    kind = resource.get("resourceType")
    if kind == "Observation":
        record_kind = _observation_kind(resource)
        if record_kind is None:
            return Skipped("Observation is neither a lab result nor a vital sign.")
        return _entry(
            resource,
            record_kind,
            resource.get("code"),
            preferred=(LOINC, SNOMED),
            status=_status(resource, "status"),
            effective=_when(resource, "effectiveDateTime", "effectivePeriod", "issued"),
            value=_observation_value(resource),
        )
    if kind == "DiagnosticReport":
        return _entry(
            resource,
            RecordKind.LAB_RESULT,
            resource.get("code"),
            preferred=(LOINC, SNOMED),
            status=_status(resource, "status"),
            effective=_when(resource, "effectiveDateTime", "effectivePeriod", "issued"),
            related=_observation_ids(resource),
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
        )
    return Skipped(f"{kind} is not part of the imported chart.")
