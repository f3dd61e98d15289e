"""Caregiver (proxy) access: which part of the portal a request or a notification belongs
to, and whether a patient's grant covers it. Pure rules, no I/O.

A caregiver is a RelatedPerson of the EHR signed in for the patient in context (SMART
`fhirUser` = `RelatedPerson/<id>`, `patient` = the patient). Their token's scopes are the
sign-in's; what they may see is narrowed to the parts the patient granted them, during the
grant's period, until the patient revokes it. A route this module does not name is refused
to caregivers (deny by default): a new route is the patient's own until it is added here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum

from contracts.consent import CaregiverPart
from gateway.domain import NotificationKind

# Route templates by prefix -> the part that must be granted (longest prefix first).
ROUTE_PARTS: tuple[tuple[str, CaregiverPart], ...] = (
    ("/v1/me/lab-results", CaregiverPart.RESULTS),
    ("/v1/me/vital-signs", CaregiverPart.RECORDS),
    ("/v1/me/documents", CaregiverPart.RECORDS),
    ("/v1/me/medications", CaregiverPart.RECORDS),
    ("/v1/me/allergies", CaregiverPart.RECORDS),
    ("/v1/me/conditions", CaregiverPart.RECORDS),
    ("/v1/me/immunizations", CaregiverPart.RECORDS),
    ("/v1/slots", CaregiverPart.APPOINTMENTS),
    ("/v1/me/appointments", CaregiverPart.APPOINTMENTS),
    ("/v1/me/threads", CaregiverPart.MESSAGES),
    ("/v1/me/attachments", CaregiverPart.MESSAGES),
    ("/v1/message-topics", CaregiverPart.MESSAGES),
    ("/v1/me/triage", CaregiverPart.TRIAGE),
)
# Routes any active grant opens: who the patient is (the caregiver must see whose account
# they are in), and the views that filter their parts by the grant themselves.
ANY_GRANT_ROUTES = frozenset({"/v1/me", "/v1/me/profile", "/v1/me/summary", "/v1/me/events"})

NOTIFICATION_PARTS: dict[NotificationKind, CaregiverPart] = {
    NotificationKind.LAB_RESULT: CaregiverPart.RESULTS,
    NotificationKind.MEDICATION: CaregiverPart.RECORDS,
    NotificationKind.MESSAGE: CaregiverPart.MESSAGES,
    NotificationKind.APPOINTMENT: CaregiverPart.APPOINTMENTS,
    NotificationKind.INTAKE_REMINDER: CaregiverPart.APPOINTMENTS,
    NotificationKind.TRIAGE: CaregiverPart.TRIAGE,
}
# The summary's parts (gateway.api.me.summary) -> the part that must be granted.
SUMMARY_PARTS: dict[str, CaregiverPart] = {
    "lab_results": CaregiverPart.RESULTS,
    "medications": CaregiverPart.RECORDS,
    "allergies": CaregiverPart.RECORDS,
    "appointments": CaregiverPart.APPOINTMENTS,
    "threads": CaregiverPart.MESSAGES,
}
AGE_OF_MAJORITY = 18


class Access(StrEnum):
    """What a route is to a caregiver."""

    PART = "part"  # needs its part granted
    ANY_GRANT = "any-grant"  # needs an active grant
    PATIENT_ONLY = "patient-only"  # never a caregiver's (granting, the access log...)


def route_access(template: str) -> tuple[Access, CaregiverPart | None]:
    """How a route (its path template, e.g. `/v1/me/lab-results/{report_id}`) is opened
    to a caregiver."""
    if template in ANY_GRANT_ROUTES:
        return Access.ANY_GRANT, None
    for prefix, part in ROUTE_PARTS:
        if template == prefix or template.startswith(prefix + "/"):
            return Access.PART, part
    return Access.PATIENT_ONLY, None


class GrantStatus(StrEnum):
    """Where a grant is in its life."""

    SCHEDULED = "scheduled"  # its period has not begun
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Grant:
    """A patient's consent to one caregiver's access (the gateway's own copy)."""

    id: str
    related_person: str
    parts: frozenset[CaregiverPart]
    start: datetime
    end: datetime
    revoked_at: datetime | None = None

    def status(self, now: datetime) -> GrantStatus:
        """Revoked wins; otherwise by the period (start inclusive, end exclusive)."""
        if self.revoked_at is not None:
            return GrantStatus.REVOKED
        if now < self.start:
            return GrantStatus.SCHEDULED
        if now >= self.end:
            return GrantStatus.EXPIRED
        return GrantStatus.ACTIVE

    def covers_any(self, now: datetime) -> bool:
        """Whether the grant is in force at `now`."""
        return self.status(now) is GrantStatus.ACTIVE

    def covers(self, part: CaregiverPart, now: datetime) -> bool:
        """Whether the grant opens `part` at `now`."""
        return self.status(now) is GrantStatus.ACTIVE and part in self.parts

    def covers_notification(self, kind: str, now: datetime) -> bool:
        """Whether a notification of this kind may be pushed to the caregiver now."""
        try:
            part = NOTIFICATION_PARTS[NotificationKind(kind)]
        except (ValueError, KeyError):
            return False  # a kind this module does not know is not a caregiver's
        return self.covers(part, now)


def related_person_of(fhir_user: str) -> str | None:
    """The RelatedPerson id a SMART `fhirUser` names (absolute or relative URL), else None."""
    parts = fhir_user.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "RelatedPerson" and parts[-1]:
        return parts[-1]
    return None


def majority(birth_date: date) -> datetime:
    """When a minor comes of age (their 18th birthday, 29 February -> 1 March), UTC."""
    year = birth_date.year + AGE_OF_MAJORITY
    try:
        day = birth_date.replace(year=year)
    except ValueError:
        day = date(year, 3, 1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def grant_end(requested: datetime, birth_date: date | None, now: datetime) -> datetime:
    """The end of a new grant: a minor's proxy access ends when they come of age at the
    latest (from then on the patient decides for themself)."""
    if birth_date is None:
        return requested
    of_age = majority(birth_date)
    return min(requested, of_age) if now < of_age else requested
