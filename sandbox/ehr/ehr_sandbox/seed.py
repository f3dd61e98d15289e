"""The demo clinic loaded on first start: staff, schedules, demo patients and their history.

Ids are stable (listed in the package README) so tools and tests can rely on them. The
first start loads everything once (marked in `sandbox_meta`); every start tops up the free
slots so the next `SLOT_HORIZON_DAYS` days always have some. Official FHIR R4 examples
(from `SANDBOX_EXAMPLES_DIR`, by default `shared/fhir-examples` beside the repository;
skipped with a warning when absent) are loaded verbatim where their references resolve:
Patient/pat1 with its MedicationRequests (prescribed by Practitioner/f007), Patient/pat2
with its Observations, and Organization/1. Every seed resource is validated like a client
write; the seed writes no change events.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ehr_sandbox.catalog import (
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
from ehr_sandbox.search import format_instant
from ehr_sandbox.store import Store
from ehr_sandbox.validation import validate_resource
from servicekit.logging import get_logger

log = get_logger(__name__)

SEEDED_KEY = "seeded_at"
SLOT_HORIZON_DAYS = 30
SLOT_MINUTES = 20
CLINIC_OPEN = time(9, 0)
CLINIC_CLOSE = time(17, 0)
DEFAULT_TIMEZONE = "America/New_York"

CLINIC_ORG = "clinic"
LAB_ORG = "clinic-lab"
MAIN_LOCATION = "clinic-main"
LAB_LOCATION = "clinic-lab-draw"
CARE_TEAM = "care-team-primary"
INTAKE_QUESTIONNAIRE = "intake"
INTAKE_URL = "http://example.org/fhir/ehr-sandbox/Questionnaire/intake"
NPI = "http://hl7.org/fhir/sid/us-npi"
MRN = "urn:oid:2.16.840.1.113883.3.9999.1"  # the sandbox's medical record numbers


@dataclass(frozen=True)
class StaffMember:
    """A practitioner of the clinic."""

    id: str
    family: str
    given: str
    prefix: str
    suffix: str
    gender: str
    npi: str
    role: tuple[str, str]  # practitioner-role code, display
    specialty: tuple[str, str]  # SNOMED code, display
    has_schedule: bool


STAFF: tuple[StaffMember, ...] = (
    StaffMember(
        "dr-adams",
        "Adams",
        "Grace",
        "Dr.",
        "MD",
        "female",
        "1538264910",
        ("doctor", "Doctor"),
        ("419772000", "Family practice"),
        True,
    ),
    StaffMember(
        "dr-baker",
        "Baker",
        "Samuel",
        "Dr.",
        "MD",
        "male",
        "1427051839",
        ("doctor", "Doctor"),
        ("419192003", "Internal medicine"),
        True,
    ),
    StaffMember(
        "np-chen",
        "Chen",
        "Lin",
        "",
        "NP",
        "female",
        "1902847365",
        ("nurse", "Nurse"),
        ("419772000", "Family practice"),
        True,
    ),
    StaffMember(
        "dr-okafor",
        "Okafor",
        "Ngozi",
        "Dr.",
        "MD",
        "female",
        "1649382716",
        ("doctor", "Doctor"),
        ("394537008", "Pediatric specialty"),
        False,
    ),
)
PRIMARY_PRACTITIONER = "dr-adams"


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
    candidate = configured or Path(__file__).resolve().parents[4] / "shared" / "fhir-examples"
    return candidate if candidate.is_dir() else None


def clinic_zone(name: str = DEFAULT_TIMEZONE) -> ZoneInfo | Any:
    """The clinic's time zone (UTC when the system has no time-zone data)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("clinic_timezone_unavailable", timezone=name)
        return UTC


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def slot_id(practitioner_id: str, start: datetime) -> str:
    """The stable id of a practitioner's slot starting at `start` (clinic local time)."""
    return f"slot-{practitioner_id}-{start:%Y%m%d-%H%M}"


def _slot_starts(day: date, zone: Any) -> list[datetime]:
    starts = []
    moment = datetime.combine(day, CLINIC_OPEN, tzinfo=zone)
    close = datetime.combine(day, CLINIC_CLOSE, tzinfo=zone)
    while moment + timedelta(minutes=SLOT_MINUTES) <= close:
        starts.append(moment)
        moment += timedelta(minutes=SLOT_MINUTES)
    return starts


def _workdays(start: date, days: int) -> list[date]:
    return [
        start + timedelta(days=n) for n in range(days) if (start + timedelta(days=n)).weekday() < 5
    ]


def _slot(practitioner_id: str, start: datetime, status: str = "free") -> dict[str, Any]:
    return {
        "resourceType": "Slot",
        "id": slot_id(practitioner_id, start),
        "serviceType": [
            concept("http://terminology.hl7.org/CodeSystem/service-type", "124", "General Practice")
        ],
        "appointmentType": concept(
            "http://terminology.hl7.org/CodeSystem/v2-0276",
            "ROUTINE",
            "Routine appointment - default if not valued",
        ),
        "schedule": reference("Schedule", f"sched-{practitioner_id}"),
        "status": status,
        "start": _iso(start),
        "end": _iso(start + timedelta(minutes=SLOT_MINUTES)),
    }


def slots_for_horizon(
    now: datetime, zone: Any, busy: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Slots of every scheduled practitioner for the coming workdays (from tomorrow)."""
    today = now.astimezone(zone).date()
    slots = []
    for member in STAFF:
        if not member.has_schedule:
            continue
        for day in _workdays(today + timedelta(days=1), SLOT_HORIZON_DAYS):
            for start in _slot_starts(day, zone):
                sid = slot_id(member.id, start)
                slots.append(_slot(member.id, start, "busy" if sid in busy else "free"))
    return slots


# -- the clinic ------------------------------------------------------------------------------


def _clinic(now: datetime) -> list[dict[str, Any]]:
    address = {
        "use": "work",
        "line": ["100 Riverside Drive"],
        "city": "Springfield",
        "state": "IL",
        "postalCode": "62701",
        "country": "US",
    }
    org_type = "http://terminology.hl7.org/CodeSystem/organization-type"
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Organization",
            "id": CLINIC_ORG,
            "identifier": [{"system": NPI, "value": "1093847562"}],
            "active": True,
            "type": [concept(org_type, "prov", "Healthcare Provider")],
            "name": "Riverside Family Health",
            "telecom": [{"system": "phone", "value": "+1 217 555 0100", "use": "work"}],
            "address": [address],
        },
        {
            "resourceType": "Organization",
            "id": LAB_ORG,
            "identifier": [{"system": NPI, "value": "1285736490"}],
            "active": True,
            "type": [concept(org_type, "prov", "Healthcare Provider")],
            "name": "Riverside Clinical Laboratory",
            "partOf": reference("Organization", CLINIC_ORG, "Riverside Family Health"),
        },
        {
            "resourceType": "Location",
            "id": MAIN_LOCATION,
            "status": "active",
            "name": "Riverside Family Health - Main Clinic",
            "mode": "instance",
            "type": [
                concept(
                    "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "OF", "Outpatient facility"
                )
            ],
            "telecom": [{"system": "phone", "value": "+1 217 555 0100", "use": "work"}],
            "address": address,
            "managingOrganization": reference("Organization", CLINIC_ORG),
        },
        {
            "resourceType": "Location",
            "id": LAB_LOCATION,
            "status": "active",
            "name": "Riverside Clinical Laboratory - Draw Station",
            "mode": "instance",
            "type": [
                concept(
                    "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                    "HLAB",
                    "hospital laboratories",
                )
            ],
            "address": address,
            "managingOrganization": reference("Organization", LAB_ORG),
            "partOf": reference("Location", MAIN_LOCATION),
        },
    ]
    for member in STAFF:
        name: dict[str, Any] = {"use": "official", "family": member.family, "given": [member.given]}
        if member.prefix:
            name["prefix"] = [member.prefix]
        name["suffix"] = [member.suffix]
        resources.append(
            {
                "resourceType": "Practitioner",
                "id": member.id,
                "identifier": [{"system": NPI, "value": member.npi}],
                "active": True,
                "name": [name],
                "telecom": [{"system": "phone", "value": "+1 217 555 0100", "use": "work"}],
                "gender": member.gender,
            }
        )
        resources.append(
            {
                "resourceType": "PractitionerRole",
                "id": f"role-{member.id}",
                "active": True,
                "practitioner": reference("Practitioner", member.id, _display(member)),
                "organization": reference("Organization", CLINIC_ORG, "Riverside Family Health"),
                "code": [
                    concept("http://terminology.hl7.org/CodeSystem/practitioner-role", *member.role)
                ],
                "specialty": [concept(SNOMED, *member.specialty)],
                "location": [reference("Location", MAIN_LOCATION)],
                "availableTime": [
                    {
                        "daysOfWeek": ["mon", "tue", "wed", "thu", "fri"],
                        "availableStartTime": "09:00:00",
                        "availableEndTime": "17:00:00",
                    }
                ],
            }
        )
        if member.has_schedule:
            resources.append(
                {
                    "resourceType": "Schedule",
                    "id": f"sched-{member.id}",
                    "active": True,
                    "serviceType": [
                        concept(
                            "http://terminology.hl7.org/CodeSystem/service-type",
                            "124",
                            "General Practice",
                        )
                    ],
                    "specialty": [concept(SNOMED, *member.specialty)],
                    "actor": [
                        reference("Practitioner", member.id, _display(member)),
                        reference("Location", MAIN_LOCATION),
                    ],
                    "planningHorizon": {
                        "start": _iso(now),
                        "end": _iso(now + timedelta(days=SLOT_HORIZON_DAYS)),
                    },
                    "comment": f"{SLOT_MINUTES}-minute visits, weekdays 9:00-17:00",
                }
            )
    resources.append(
        {
            "resourceType": "CareTeam",
            "id": CARE_TEAM,
            "status": "active",
            "category": [
                concept(LOINC, "LA28865-6", "Longitudinal care-coordination focused care team")
            ],
            "name": "Primary care team",
            "participant": [
                {
                    "role": [concept(SNOMED, "446050000", "Primary care physician")],
                    "member": reference("Practitioner", "dr-adams", "Dr. Grace Adams"),
                },
                {
                    "role": [concept(SNOMED, "224535009", "Registered nurse")],
                    "member": reference("Practitioner", "np-chen", "Lin Chen, NP"),
                },
                {
                    "role": [concept(SNOMED, "309343006", "Physician")],
                    "member": reference("Practitioner", "dr-baker", "Dr. Samuel Baker"),
                },
            ],
            "managingOrganization": [reference("Organization", CLINIC_ORG)],
            "telecom": [{"system": "phone", "value": "+1 217 555 0101", "use": "work"}],
        }
    )
    resources.append(_intake_questionnaire(now))
    return resources


def _display(member: StaffMember) -> str:
    prefix = f"{member.prefix} " if member.prefix else ""
    return f"{prefix}{member.given} {member.family}"


def _intake_questionnaire(now: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Questionnaire",
        "id": INTAKE_QUESTIONNAIRE,
        "url": INTAKE_URL,
        "version": "1",
        "name": "PreVisitIntake",
        "title": "Pre-visit intake",
        "status": "active",
        "subjectType": ["Patient"],
        "date": now.date().isoformat(),
        "publisher": "Riverside Family Health",
        "item": [
            {
                "linkId": "reason",
                "text": "What is the main reason for your visit?",
                "type": "text",
                "required": True,
            },
            {
                "linkId": "duration",
                "text": "How long have you had this problem?",
                "type": "choice",
                "answerOption": [
                    {"valueCoding": {"code": "days", "display": "A few days"}},
                    {"valueCoding": {"code": "weeks", "display": "A few weeks"}},
                    {"valueCoding": {"code": "months", "display": "Months or longer"}},
                ],
            },
            {
                "linkId": "pain",
                "text": "Pain right now, from 0 (none) to 10 (worst)",
                "type": "integer",
            },
            {
                "linkId": "medications-changed",
                "text": "Have your medicines changed since your last visit?",
                "type": "boolean",
            },
            {
                "linkId": "allergies-changed",
                "text": "Do you have any new allergies?",
                "type": "boolean",
            },
            {"linkId": "other", "text": "Anything else you want us to know?", "type": "text"},
        ],
    }


# -- patients --------------------------------------------------------------------------------


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
    effective, issued = _iso(when), _iso(when + timedelta(hours=6))
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
        "start": _iso(start),
        "end": _iso(end),
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
        "period": {"start": _iso(start), "end": _iso(end)},
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
            _iso(now - timedelta(days=60)),
            "FLU2931A",
        ),
        _immunization(
            "alice-imm-covid",
            pid,
            "213",
            "SARS-COV-2 (COVID-19) vaccine, UNSPECIFIED FORMULATION",
            _iso(now - timedelta(days=200)),
            "CV7710B",
        ),
    ]
    authored = _iso(now - timedelta(days=400))
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
            "date": _iso(visit_start + timedelta(hours=2)),
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
                        "creation": _iso(visit_start + timedelta(hours=2)),
                    }
                }
            ],
            "context": {
                "encounter": [reference("Encounter", "alice-enc-1")],
                "period": {
                    "start": _iso(visit_start),
                    "end": _iso(visit_start + timedelta(minutes=SLOT_MINUTES)),
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
            "start": _iso(busy_slot),
            "end": _iso(busy_slot + timedelta(minutes=SLOT_MINUTES)),
            "minutesDuration": SLOT_MINUTES,
            "created": _iso(now - timedelta(days=2)),
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
            "sent": _iso(question_sent),
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
            "sent": _iso(question_sent + timedelta(hours=5)),
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
            "bob-imm-tdap", pid, "115", "Tdap", _iso(now - timedelta(days=700)), "TD5521C"
        ),
        medication_request(
            pid,
            FORMULARY["albuterol"],
            authored_on=_iso(now - timedelta(days=150)),
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


def _next_workday_slot(now: datetime, zone: Any) -> datetime:
    day = _workdays(now.astimezone(zone).date() + timedelta(days=3), 7)[0]
    return datetime.combine(day, time(10, 0), tzinfo=zone)


def clinic_resources(
    now: datetime, zone: Any, examples: Path | None = None
) -> list[dict[str, Any]]:
    """Every resource of the first-start seed (slots included)."""
    rng = random.Random(20240501)
    busy = _next_workday_slot(now, zone)
    resources = _clinic(now)
    resources += _official_examples(examples)
    resources += _alice(now, zone, rng, busy)
    resources += _bob(now, zone, rng)
    resources += _new_patients()
    resources += slots_for_horizon(now, zone, frozenset({slot_id(PRIMARY_PRACTITIONER, busy)}))
    return resources


def _validated(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for resource in resources:
        validate_resource(
            resource, expected_type=resource["resourceType"], expected_id=resource["id"]
        )
    return resources


async def seed_clinic(
    store: Store,
    *,
    now: datetime | None = None,
    timezone: str = DEFAULT_TIMEZONE,
    examples: Path | None = None,
) -> int:
    """Load the demo clinic on first start, and top up free slots on every start.

    Returns how many resources were written.
    """
    now = now or datetime.now(UTC)
    zone = clinic_zone(timezone)
    if await store.get_meta(SEEDED_KEY) is None:
        written = await store.load(_validated(clinic_resources(now, zone, examples)))
        await store.set_meta(SEEDED_KEY, format_instant(now))
        log.info("seed_loaded", resources=written)
        return written
    written = await store.load(_validated(slots_for_horizon(now, zone)))
    if written:
        log.info("seed_slots_topped_up", slots=written)
    return written
