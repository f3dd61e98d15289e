"""The demo patients of the seed and their clinical history, and the official examples.

Alice (`demo-alice`) and Bob (`demo-bob`) have histories written the way the clinic's
systems would have written them; Carol (`demo-carol`) and the monitoring `canary` have
none; `pat1`/`pat2` are official FHIR R4 examples loaded verbatim.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

from ehr_sandbox.dev.vocabulary import (
    FORMULARY,
    LOINC,
    PANELS,
    SNOMED,
    concept,
    conclusion_for,
    lab_observation,
    lab_report,
    medication_request,
    reference,
    sample_value,
)
from ehr_sandbox.seed.clinic import (
    CARE_TEAM,
    CLINIC_ORG,
    LAB_ORG,
    MAIN_LOCATION,
    MRN,
    PRIMARY_PRACTITIONER,
    SLOT_MINUTES,
    iso,
    slot_id,
)
from servicekit.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class DemoPatient:
    """A patient offered by `GET /dev/patients`."""

    id: str
    has_history: bool


DEMO_PATIENTS: tuple[DemoPatient, ...] = (
    DemoPatient("demo-alice", True),
    DemoPatient("demo-bob", True),
    DemoPatient("demo-carol", False),
    DemoPatient("pat1", True),
    DemoPatient("canary", False),
)
DEFAULT_PATIENT = "demo-alice"

# Official examples loaded verbatim (their references all resolve within this set).
OFFICIAL_EXAMPLES: tuple[str, ...] = (
    "Organization-1.json",
    "Organization-1832473e-2fe0-452d-abe9-3cdb9879522f.json",
    "Practitioner-f007.json",
    "Patient-pat1.json",
    "Patient-pat2.json",
    "Observation-bmd.json",
    "Observation-date-lastmp.json",
    *(
        f"MedicationRequest-medrx{n}.json"
        for n in (
            "0304",
            "0306",
            "0317",
            "0320",
            "0321",
            "0322",
            "0324",
            "0326",
            "0328",
            "0329",
            "0334",
            "0335",
        )
    ),
)


def examples_dir(configured: Path | None = None) -> Path | None:
    """Where the official FHIR R4 examples are: `configured`, else `shared/` beside the repo."""
    repository = Path(__file__).resolve().parents[4]
    candidate = configured or repository.parent / "shared" / "fhir-examples"
    return candidate if candidate.is_dir() else None


def _patient(
    pid: str, family: str, given: list[str], gender: str, birth: str, mrn: str, phone: str
) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [
            {
                "use": "usual",
                "type": concept(
                    "http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical record number"
                ),
                "system": MRN,
                "value": mrn,
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": family, "given": given}],
        "telecom": [{"system": "phone", "value": phone, "use": "mobile"}],
        "gender": gender,
        "birthDate": birth,
        "address": [
            {
                "use": "home",
                "city": "Springfield",
                "state": "IL",
                "postalCode": "62704",
                "country": "US",
            }
        ],
        "generalPractitioner": [reference("Practitioner", PRIMARY_PRACTITIONER, "Dr. Grace Adams")],
        "managingOrganization": reference("Organization", CLINIC_ORG, "Riverside Family Health"),
    }


def _labs(
    pid: str, prefix: str, panel_key: str, when: datetime, rng: random.Random, abnormal: set[str]
) -> list[dict[str, Any]]:
    panel = PANELS[panel_key]
    performer = [reference("Organization", LAB_ORG, "Riverside Clinical Laboratory")]
    effective, issued = iso(when), iso(when + timedelta(hours=6))
    observations = []
    for n, analyte in enumerate(panel.analytes, start=1):
        value = sample_value(analyte, abnormal=analyte.code in abnormal, rng=rng)
        observations.append(
            lab_observation(
                pid,
                analyte,
                value,
                effective=effective,
                issued=issued,
                status="final",
                performer=performer,
                resource_id=f"{prefix}-obs-{n}",
            )
        )
    report = lab_report(
        pid,
        panel,
        [reference("Observation", o["id"]) for o in observations],
        effective=effective,
        issued=issued,
        status="final",
        performer=performer,
        interpreter=[reference("Practitioner", PRIMARY_PRACTITIONER, "Dr. Grace Adams")],
        conclusion=conclusion_for(observations),
        resource_id=f"{prefix}-dr",
    )
    return [*observations, report]


def _condition(rid: str, pid: str, code: str, display: str, onset: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": rid,
        "clinicalStatus": concept(
            "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"
        ),
        "verificationStatus": concept(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"
        ),
        "category": [
            concept(
                "http://terminology.hl7.org/CodeSystem/condition-category",
                "problem-list-item",
                "Problem List Item",
            )
        ],
        "code": concept(SNOMED, code, display),
        "subject": reference("Patient", pid),
        "onsetDateTime": onset,
        "recordedDate": onset,
        "recorder": reference("Practitioner", PRIMARY_PRACTITIONER),
    }


def _allergy(
    rid: str,
    pid: str,
    category: str,
    code: str,
    display: str,
    reaction: tuple[str, str],
    criticality: str,
    recorded: str,
) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "id": rid,
        "clinicalStatus": concept(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", "Active"
        ),
        "verificationStatus": concept(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            "confirmed",
            "Confirmed",
        ),
        "type": "allergy",
        "category": [category],
        "criticality": criticality,
        "code": concept(SNOMED, code, display),
        "patient": reference("Patient", pid),
        "recordedDate": recorded,
        "recorder": reference("Practitioner", PRIMARY_PRACTITIONER),
        "reaction": [{"manifestation": [concept(SNOMED, *reaction)], "severity": "moderate"}],
    }


def _immunization(
    rid: str, pid: str, cvx: str, display: str, when: str, lot: str
) -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "id": rid,
        "status": "completed",
        "vaccineCode": concept("http://hl7.org/fhir/sid/cvx", cvx, display),
        "patient": reference("Patient", pid),
        "occurrenceDateTime": when,
        "primarySource": True,
        "location": reference("Location", MAIN_LOCATION),
        "lotNumber": lot,
        "route": concept(
            "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration",
            "IM",
            "Injection, intramuscular",
        ),
        "performer": [{"actor": reference("Practitioner", "np-chen", "Lin Chen, NP")}],
    }


def _visit(
    pid: str, prefix: str, start: datetime, practitioner: str, reason: str
) -> list[dict[str, Any]]:
    end = start + timedelta(minutes=SLOT_MINUTES)
    appointment = {
        "resourceType": "Appointment",
        "id": f"{prefix}-appt-past",
        "status": "fulfilled",
        "serviceType": [
            concept("http://terminology.hl7.org/CodeSystem/service-type", "124", "General Practice")
        ],
        "appointmentType": concept(
            "http://terminology.hl7.org/CodeSystem/v2-0276",
            "FOLLOWUP",
            "A follow up visit from a previous appointment",
        ),
        "description": reason,
        "start": iso(start),
        "end": iso(end),
        "minutesDuration": SLOT_MINUTES,
        "participant": [
            {"actor": reference("Patient", pid), "required": "required", "status": "accepted"},
            {
                "actor": reference("Practitioner", practitioner),
                "required": "required",
                "status": "accepted",
            },
            {
                "actor": reference("Location", MAIN_LOCATION),
                "required": "required",
                "status": "accepted",
            },
        ],
    }
    encounter = {
        "resourceType": "Encounter",
        "id": f"{prefix}-enc-1",
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB",
            "display": "ambulatory",
        },
        "type": [concept(SNOMED, "185349003", "Encounter for check up")],
        "subject": reference("Patient", pid),
        "participant": [{"individual": reference("Practitioner", practitioner)}],
        "appointment": [reference("Appointment", f"{prefix}-appt-past")],
        "period": {"start": iso(start), "end": iso(end)},
        "reasonCode": [{"text": reason}],
        "location": [{"location": reference("Location", MAIN_LOCATION)}],
        "serviceProvider": reference("Organization", CLINIC_ORG),
    }
    return [appointment, encounter]


def _alice(
    now: datetime, zone: Any, rng: random.Random, busy_slot: datetime
) -> list[dict[str, Any]]:
    pid = "demo-alice"
    dr = reference("Practitioner", PRIMARY_PRACTITIONER, "Dr. Grace Adams")
    resources = [
        _patient(
            pid,
            "Nakamura",
            ["Alice", "May"],
            "female",
            "1968-04-12",
            "MRN-100001",
            "+1 217 555 0142",
        )
    ]
    resources += [
        _condition(
            "alice-cond-diabetes", pid, "44054006", "Diabetes mellitus type 2", "2015-06-02"
        ),
        _condition(
            "alice-cond-htn",
            pid,
            "38341003",
            "Hypertensive disorder, systemic arterial",
            "2017-09-18",
        ),
        _allergy(
            "alice-allergy-penicillin",
            pid,
            "medication",
            "764146007",
            "Penicillin",
            ("247472004", "Wheal"),
            "high",
            "2010-03-04",
        ),
        _immunization(
            "alice-imm-flu",
            pid,
            "150",
            "Influenza, injectable, quadrivalent, preservative free",
            iso(now - timedelta(days=60)),
            "FLU2931A",
        ),
        _immunization(
            "alice-imm-covid",
            pid,
            "213",
            "SARS-COV-2 (COVID-19) vaccine, UNSPECIFIED FORMULATION",
            iso(now - timedelta(days=200)),
            "CV7710B",
        ),
    ]
    authored = iso(now - timedelta(days=400))
    for key in ("metformin", "lisinopril", "atorvastatin"):
        resources.append(
            medication_request(
                pid,
                FORMULARY[key],
                authored_on=authored,
                requester=dr,
                resource_id=f"alice-med-{key}",
            )
        )
    a1c = PANELS["a1c"].analytes[0].code
    for n, days in enumerate((270, 180, 90), start=1):
        resources += _labs(pid, f"alice-a1c-{n}", "a1c", now - timedelta(days=days), rng, {a1c})
    resources += _labs(pid, "alice-lipid-1", "lipid", now - timedelta(days=90), rng, {"18262-6"})
    resources += _labs(pid, "alice-bmp-1", "bmp", now - timedelta(days=90), rng, {"2345-7"})
    visit_start = datetime.combine(
        (now - timedelta(days=91)).astimezone(zone).date(), time(10, 0), tzinfo=zone
    )
    resources += _visit(pid, "alice", visit_start, PRIMARY_PRACTITIONER, "Diabetes follow-up")
    summary = (
        "Visit summary. Type 2 diabetes follow-up: HbA1c improving on metformin. Blood pressure "
        "controlled on lisinopril. Continue current medicines; repeat labs in 3 months."
    )
    resources.append(
        {
            "resourceType": "DocumentReference",
            "id": "alice-doc-visit-summary",
            "masterIdentifier": {
                "system": "urn:ietf:rfc:3986",
                "value": "urn:uuid:3b1c5b8e-2f5a-4c9e-9d3e-6f1f0c2a7a11",
            },
            "status": "current",
            "docStatus": "final",
            "type": concept(LOINC, "34133-9", "Summary of episode note"),
            "category": [
                concept(
                    "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                    "clinical-note",
                    "Clinical Note",
                )
            ],
            "subject": reference("Patient", pid),
            "date": iso(visit_start + timedelta(hours=2)),
            "author": [dr],
            "custodian": reference("Organization", CLINIC_ORG),
            "description": "After-visit summary",
            "content": [
                {
                    "attachment": {
                        "contentType": "text/plain",
                        "language": "en-US",
                        "data": base64.b64encode(summary.encode()).decode(),
                        "title": "After-visit summary",
                        "creation": iso(visit_start + timedelta(hours=2)),
                    }
                }
            ],
            "context": {
                "encounter": [reference("Encounter", "alice-enc-1")],
                "period": {
                    "start": iso(visit_start),
                    "end": iso(visit_start + timedelta(minutes=SLOT_MINUTES)),
                },
            },
        }
    )
    resources.append(
        {
            "resourceType": "Appointment",
            "id": "alice-appt-next",
            "status": "booked",
            "serviceType": [
                concept(
                    "http://terminology.hl7.org/CodeSystem/service-type", "124", "General Practice"
                )
            ],
            "appointmentType": concept(
                "http://terminology.hl7.org/CodeSystem/v2-0276",
                "FOLLOWUP",
                "A follow up visit from a previous appointment",
            ),
            "description": "Diabetes follow-up",
            "slot": [reference("Slot", slot_id(PRIMARY_PRACTITIONER, busy_slot))],
            "start": iso(busy_slot),
            "end": iso(busy_slot + timedelta(minutes=SLOT_MINUTES)),
            "minutesDuration": SLOT_MINUTES,
            "created": iso(now - timedelta(days=2)),
            "participant": [
                {"actor": reference("Patient", pid), "required": "required", "status": "accepted"},
                {"actor": dr, "required": "required", "status": "accepted"},
                {
                    "actor": reference("Location", MAIN_LOCATION),
                    "required": "required",
                    "status": "accepted",
                },
            ],
        }
    )
    question_sent = now - timedelta(days=3)
    resources += [
        {
            "resourceType": "Communication",
            "id": "alice-msg-1",
            "status": "completed",
            "subject": reference("Patient", pid),
            "topic": {"text": "Question about metformin"},
            "sent": iso(question_sent),
            "recipient": [reference("CareTeam", CARE_TEAM, "Primary care team")],
            "sender": reference("Patient", pid),
            "payload": [{"contentString": "Should I take metformin before or after breakfast?"}],
        },
        {
            "resourceType": "Communication",
            "id": "alice-msg-2",
            "partOf": [reference("Communication", "alice-msg-1")],
            "inResponseTo": [reference("Communication", "alice-msg-1")],
            "status": "completed",
            "subject": reference("Patient", pid),
            "topic": {"text": "Question about metformin"},
            "sent": iso(question_sent + timedelta(hours=5)),
            "recipient": [reference("Patient", pid)],
            "sender": dr,
            "payload": [
                {
                    "contentString": "Take it with breakfast and with dinner: food helps"
                    " your stomach tolerate it."
                }
            ],
        },
    ]
    return resources


def _bob(now: datetime, zone: Any, rng: random.Random) -> list[dict[str, Any]]:
    pid = "demo-bob"
    resources = [
        _patient(
            pid, "Lindqvist", ["Robert"], "male", "1990-09-30", "MRN-100002", "+1 217 555 0177"
        )
    ]
    resources += [
        _condition("bob-cond-asthma", pid, "195967001", "Asthma", "2004-05-11"),
        _allergy(
            "bob-allergy-peanut",
            pid,
            "food",
            "762952008",
            "Peanut",
            ("39579001", "Anaphylaxis"),
            "high",
            "1996-07-20",
        ),
        _immunization(
            "bob-imm-tdap", pid, "115", "Tdap", iso(now - timedelta(days=700)), "TD5521C"
        ),
        medication_request(
            pid,
            FORMULARY["albuterol"],
            authored_on=iso(now - timedelta(days=150)),
            requester=reference("Practitioner", "dr-baker", "Dr. Samuel Baker"),
            resource_id="bob-med-albuterol",
        ),
    ]
    resources += _labs(pid, "bob-cbc-1", "cbc", now - timedelta(days=150), rng, set())
    visit_start = datetime.combine(
        (now - timedelta(days=151)).astimezone(zone).date(), time(14, 0), tzinfo=zone
    )
    resources += _visit(pid, "bob", visit_start, "dr-baker", "Asthma review")
    return resources


def _new_patients() -> list[dict[str, Any]]:
    carol = _patient(
        "demo-carol", "Jimenez", ["Carol"], "female", "2001-01-15", "MRN-100003", "+1 217 555 0190"
    )
    canary = _patient(
        "canary", "Canary", ["Synthetic"], "unknown", "2000-01-01", "MRN-CANARY", "+1 217 555 0199"
    )
    canary["meta"] = {"tag": [{"system": "urn:ehr-sandbox:tags", "code": "synthetic-monitoring"}]}
    return [carol, canary]


def _caregivers() -> list[dict[str, Any]]:
    """Someone a demo patient may let act for them (the portal's caregiver access): Alice's
    son, who signs in as himself for Alice once she has granted it."""
    return [
        {
            "resourceType": "RelatedPerson",
            "id": "demo-alice-son",
            "active": True,
            "patient": reference("Patient", "demo-alice", "Alice Nakamura"),
            "relationship": [
                concept("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "SONC", "son", "Son")
            ],
            "name": [{"use": "official", "family": "Nakamura", "given": ["Kenji"]}],
            "telecom": [{"system": "phone", "value": "+1 217 555 0181", "use": "mobile"}],
        }
    ]


def _official_examples(configured: Path | None) -> list[dict[str, Any]]:
    directory = examples_dir(configured)
    if directory is None:
        log.warning("official_examples_unavailable")
        return []
    loaded = []
    for name in OFFICIAL_EXAMPLES:
        path = directory / name
        if path.is_file():
            loaded.append(json.loads(path.read_text(encoding="utf-8")))
    return loaded


def patient_resources(
    now: datetime, zone: Any, busy_slot: datetime, examples: Path | None
) -> list[dict[str, Any]]:
    """Every patient-side resource of the seed; `busy_slot` is Alice's booked slot."""
    rng = random.Random(20240501)
    resources = _official_examples(examples)
    resources += _alice(now, zone, rng, busy_slot)
    resources += _bob(now, zone, rng)
    resources += _new_patients()
    resources += _caregivers()
    return resources
