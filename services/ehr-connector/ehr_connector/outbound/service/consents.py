"""A patient's consent to a caregiver's access → a FHIR R4 `Consent` in the EHR.

`consent.granted` is filed as an active privacy consent (`scope` patient-privacy, category
LOINC 59284-0 "Patient Consent", `policyRule` OPTIN): a `permit` provision for its period,
whose actor is the RelatedPerson in the role of primary information recipient (PRCP), with
the action `access`, and whose `class` lists the FHIR resource types of the parts granted
plus the portal's own part codes (the exact grant, which the resource types alone would
blur: vital signs and lab results are both Observations). Created on the condition of the
grant's identifier, so a replay finds it. `consent.revoked` sets it `inactive` and ends
the provision's period at the revocation (`If-Match`, re-applied on conflict).

The gateway's copy of the grant stays the one it enforces (a request must not wait on the
EHR); this is the EHR's record of what the patient consented to.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from contracts.consent import CaregiverPart, ConsentGrantedV1, ConsentRevokedV1
from ehr_connector.context import Connector
from ehr_connector.outbound.domain.identifiers import IDENTIFIER_BASE, identifier, if_none_exist
from ehr_connector.outbound.domain.r4 import validate
from ehr_connector.outbound.domain.tags import tagged
from ehr_connector.outbound.service.booking import apply_change
from ehr_connector.outbound.service.journal import Journal
from ehr_connector.outbound.service.lookups import NotInEhrYet, find_by_identifier
from ehr_connector.store import Interaction
from servicekit.consumer import Event, Record

FhirJson = dict[str, Any]

CONSENT_ID: Final = f"{IDENTIFIER_BASE}/caregiver-grant-id"
PART_SYSTEM: Final = "http://portal.example.org/fhir/CodeSystem/caregiver-part"
RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"
# The FHIR resource types behind each part of the portal.
PART_TYPES: Final[dict[CaregiverPart, tuple[str, ...]]] = {
    CaregiverPart.RESULTS: ("DiagnosticReport", "Observation"),
    CaregiverPart.RECORDS: (
        "MedicationRequest",
        "AllergyIntolerance",
        "Condition",
        "Immunization",
        "DocumentReference",
        "Observation",
    ),
    CaregiverPart.APPOINTMENTS: ("Appointment", "Slot", "QuestionnaireResponse"),
    CaregiverPart.MESSAGES: ("Communication",),
    CaregiverPart.TRIAGE: ("QuestionnaireResponse",),
}


def _concept(system: str, code: str, display: str) -> FhirJson:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def consent_resource(data: ConsentGrantedV1) -> FhirJson:
    """The active Consent of a grant."""
    patient = {"reference": f"Patient/{data.patient_fhir_id}"}
    types = sorted({t for part in data.parts for t in PART_TYPES[CaregiverPart(part)]})
    classes = [{"system": RESOURCE_TYPES, "code": t} for t in types] + [
        {"system": PART_SYSTEM, "code": CaregiverPart(p).value} for p in data.parts
    ]
    return tagged(
        {
            "resourceType": "Consent",
            "identifier": [identifier(CONSENT_ID, data.consent_id)],
            "status": "active",
            "scope": _concept(
                "http://terminology.hl7.org/CodeSystem/consentscope",
                "patient-privacy",
                "Privacy Consent",
            ),
            "category": [_concept("http://loinc.org", "59284-0", "Patient Consent")],
            "patient": patient,
            "dateTime": data.granted_at.isoformat(),
            "performer": [patient],
            "policyRule": _concept(
                "http://terminology.hl7.org/CodeSystem/v3-ActCode", "OPTIN", "opt-in"
            ),
            "provision": {
                "type": "permit",
                "period": {"start": data.start.isoformat(), "end": data.end.isoformat()},
                "actor": [
                    {
                        "role": _concept(
                            "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "PRCP",
                            "primary information recipient",
                        ),
                        "reference": {"reference": f"RelatedPerson/{data.related_person_fhir_id}"},
                    }
                ],
                "action": [
                    _concept(
                        "http://terminology.hl7.org/CodeSystem/consentaction", "access", "Access"
                    )
                ],
                "class": classes,
            },
        }
    )


def revoked(current: FhirJson, data: ConsentRevokedV1) -> FhirJson | None:
    """The Consent made inactive, its period ended at the revocation; None when it already
    is (a replayed revocation)."""
    if current.get("status") == "inactive":
        return None
    changed = copy.deepcopy(current)
    changed["status"] = "inactive"
    period = changed.setdefault("provision", {}).setdefault("period", {})
    period["end"] = data.revoked_at.isoformat()
    if period.get("start", "") > period["end"]:
        period["start"] = period["end"]  # revoked before it began
    return tagged(changed)


async def grant(connector: Connector, event: Event[ConsentGrantedV1]) -> Record:
    """File the grant as an active Consent (once, whatever the replays)."""
    data = event.data
    result = await connector.ehr.create(
        validate(consent_resource(data)), if_none_exist=if_none_exist(CONSENT_ID, data.consent_id)
    )
    journal = Journal.of(event)
    interaction = Interaction.CREATE if result.created else Interaction.MATCH
    journal.record(data.consent_id, "Consent", interaction, result)
    journal.link("consent", data.consent_id, result, patient_id=data.patient_id)
    return journal.commit


async def revoke(connector: Connector, event: Event[ConsentRevokedV1]) -> Record:
    """Make the grant's Consent inactive; retried while its grant is not filed yet (the
    two events travel on different topics)."""
    data, ehr = event.data, connector.ehr
    current = await find_by_identifier(ehr, "Consent", CONSENT_ID, data.consent_id)
    if current is None:
        raise NotInEhrYet(f"the Consent of grant {data.consent_id} is not in the EHR yet")
    written, changed = await apply_change(ehr, current, lambda r: revoked(r, data))
    journal = Journal.of(event)
    interaction = Interaction.UPDATE if changed else Interaction.NOOP
    journal.record(data.consent_id, "Consent", interaction, written)
    return journal.commit
