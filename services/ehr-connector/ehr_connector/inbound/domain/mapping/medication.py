"""MedicationRequest → `medication.changed`."""

from __future__ import annotations

from contracts.base import Coding
from contracts.medication import MedicationChangedV1, MedicationStatus
from ehr_connector.inbound.domain.fhir_values import (
    Ref,
    Resource,
    as_list,
    best_coding,
    contained,
    human_name,
    parse_instant,
    reference_of,
    references,
    string,
)
from ehr_connector.inbound.domain.mapping.common import (
    RXNORM,
    SNOMED,
    MappingContext,
    MappingResult,
    Rejected,
    build,
    clip,
    source_version,
)

_STATUSES = frozenset(s.value for s in MedicationStatus)
DOSAGE_LIMIT = 1000


def patients(request: Resource) -> list[str]:
    """FHIR ids of the patient the prescription is for."""
    return [r.id for r in references(request.get("subject"), "Patient")]


def needs(request: Resource) -> list[Ref]:
    """The referenced Medication (when not contained) and a prescriber without a display."""
    wanted: list[Ref] = []
    medication = reference_of(request.get("medicationReference"))
    if medication is not None and medication.type == "Medication":
        wanted.append(medication)
    requester = request.get("requester")
    if isinstance(requester, dict) and not string(requester.get("display")):
        ref = reference_of(requester)
        if ref is not None and ref.type in ("Practitioner", "PractitionerRole", "Organization"):
            wanted.append(ref)
    return wanted


def _medication(request: Resource, ctx: MappingContext) -> Coding | Rejected:
    concept = request.get("medicationCodeableConcept")
    if concept is not None:
        coding = best_coding(concept, (RXNORM, SNOMED))
        return coding or Rejected("medicationCodeableConcept has no coding with a system.")
    element = request.get("medicationReference")
    if not isinstance(element, dict):
        return Rejected("The MedicationRequest names no medication.")
    medication = contained(request, element) or ctx.get(reference_of(element))
    if medication is None:
        return Rejected("medicationReference could not be resolved.")
    coding = best_coding(medication.get("code"), (RXNORM, SNOMED))
    return coding or Rejected("The referenced Medication has no coding with a system.")


def _dosage_text(request: Resource) -> str | None:
    texts = [
        d["text"]
        for d in as_list(request.get("dosageInstruction"))
        if isinstance(d, dict) and string(d.get("text"))
    ]
    return clip("; ".join(texts), DOSAGE_LIMIT) if texts else None


def _prescriber(request: Resource, ctx: MappingContext) -> str | None:
    requester = request.get("requester")
    if not isinstance(requester, dict):
        return None
    return string(requester.get("display")) or human_name(
        contained(request, requester) or ctx.get(reference_of(requester))
    )


def map_request(request: Resource, ctx: MappingContext) -> MappingResult:
    """A created or changed prescription → `MedicationChangedV1`."""
    source = source_version(request)
    if isinstance(source, Rejected):
        return source
    status = request.get("status")
    if status not in _STATUSES:
        return Rejected("MedicationRequest.status is missing or not an R4 code.")
    medication = _medication(request, ctx)
    if isinstance(medication, Rejected):
        return medication
    return build(
        MedicationChangedV1,
        {
            "patient_id": ctx.patient_id,
            "medication_request_fhir_id": source.fhir_id,
            "status": status,
            "medication": medication,
            "dosage_text": _dosage_text(request),
            "authored_on": parse_instant(request.get("authoredOn")),
            "prescriber": _prescriber(request, ctx),
            "source": source,
        },
    )
