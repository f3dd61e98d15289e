"""The clinic of the seed: organisations, places, staff, care team, schedules and slots.

Slots are 20-minute visits on weekdays 9:00-17:00 in the clinic's time zone, for the next
`SLOT_HORIZON_DAYS` days, with ids derived from practitioner and start time so that topping
them up on every start is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ehr_sandbox.dev.vocabulary import LOINC, SNOMED, concept, reference
from servicekit.logging import get_logger

log = get_logger(__name__)

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


def clinic_zone(name: str = DEFAULT_TIMEZONE) -> ZoneInfo | Any:
    """The clinic's time zone (UTC when the system has no time-zone data)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        log.warning("clinic_timezone_unavailable", timezone=name)
        return UTC


def iso(moment: datetime) -> str:
    """`moment` as a FHIR dateTime in UTC, to the second."""
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


def workdays(start: date, days: int) -> list[date]:
    """The weekdays (Monday to Friday) among the `days` days from `start`."""
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
        "start": iso(start),
        "end": iso(start + timedelta(minutes=SLOT_MINUTES)),
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
        for day in workdays(today + timedelta(days=1), SLOT_HORIZON_DAYS):
            for start in _slot_starts(day, zone):
                sid = slot_id(member.id, start)
                slots.append(_slot(member.id, start, "busy" if sid in busy else "free"))
    return slots


def clinic_places_and_staff(now: datetime) -> list[dict[str, Any]]:
    """Organisations, locations, staff and roles, schedules, care team, intake form."""
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
                        "start": iso(now),
                        "end": iso(now + timedelta(days=SLOT_HORIZON_DAYS)),
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
                # Asked only after a "yes" above, and then required (forms use enableWhen).
                "linkId": "medications-which",
                "text": "Which medicines changed, and how?",
                "type": "text",
                "required": True,
                "enableWhen": [
                    {"question": "medications-changed", "operator": "=", "answerBoolean": True}
                ],
            },
            {
                "linkId": "allergies-changed",
                "text": "Do you have any new allergies?",
                "type": "boolean",
            },
            {"linkId": "other", "text": "Anything else you want us to know?", "type": "text"},
        ],
    }
