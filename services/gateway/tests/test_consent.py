"""The rules of caregiver access (gateway.consent), with the clock given."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from contracts.consent import CaregiverPart
from gateway.app import build
from gateway.consent import (
    Access,
    Grant,
    GrantStatus,
    grant_end,
    majority,
    related_person_of,
    route_access,
)
from gateway.domain import NotificationKind
from gateway.settings import Settings

# The app is only built to list its routes: nothing connects.
UNUSED_DATABASE = "postgresql+asyncpg://nobody@127.0.0.1:9/none"
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
# The reviewed set of routes only the patient may use (never a caregiver).
PATIENT_ONLY = {"/v1/me/access-log", "/v1/me/caregivers", "/v1/me/caregivers/{grant_id}"}


def _grant(**changes: object) -> Grant:
    values: dict[str, object] = {
        "id": "cg-1",
        "related_person": "rp-1",
        "parts": frozenset({CaregiverPart.APPOINTMENTS, CaregiverPart.MESSAGES}),
        "start": NOW - timedelta(days=1),
        "end": NOW + timedelta(days=1),
    }
    values.update(changes)
    return Grant(**values)  # type: ignore[arg-type]


def test_every_patient_route_is_classified_and_the_caregiver_routes_are_the_patients() -> None:
    document = build(Settings(database_url=UNUSED_DATABASE)).app.openapi()
    routes = [p for p in document["paths"] if p.startswith("/v1/") and p != "/v1/session"]
    assert routes
    classified = {path: route_access(path) for path in routes}
    assert classified["/v1/me/lab-results/{report_id}"] == (Access.PART, CaregiverPart.RESULTS)
    assert classified["/v1/me/lab-results/trends"] == (Access.PART, CaregiverPart.RESULTS)
    assert classified["/v1/slots"] == (Access.PART, CaregiverPart.APPOINTMENTS)
    assert classified["/v1/me/triage/assess"] == (Access.PART, CaregiverPart.TRIAGE)
    assert classified["/v1/me/events"] == (Access.ANY_GRANT, None)
    patient_only = {p for p, (access, _) in classified.items() if access is Access.PATIENT_ONLY}
    # A new route is refused to caregivers until it is given a part (or reviewed as the
    # patient's own here).
    assert patient_only == PATIENT_ONLY


def test_a_grant_opens_its_parts_during_its_period_until_revoked() -> None:
    grant = _grant()
    assert grant.status(NOW) is GrantStatus.ACTIVE
    assert grant.covers(CaregiverPart.MESSAGES, NOW)
    assert not grant.covers(CaregiverPart.RESULTS, NOW)
    assert grant.status(NOW - timedelta(days=2)) is GrantStatus.SCHEDULED
    assert not grant.covers(CaregiverPart.MESSAGES, NOW - timedelta(days=2))
    assert grant.status(grant.end) is GrantStatus.EXPIRED  # the end is exclusive
    revoked = _grant(revoked_at=NOW - timedelta(seconds=1))
    assert revoked.status(NOW) is GrantStatus.REVOKED
    assert not revoked.covers(CaregiverPart.MESSAGES, NOW)


def test_notifications_follow_the_parts() -> None:
    grant = _grant()
    assert grant.covers_notification(NotificationKind.MESSAGE.value, NOW)
    assert grant.covers_notification(NotificationKind.INTAKE_REMINDER.value, NOW)
    assert not grant.covers_notification(NotificationKind.LAB_RESULT.value, NOW)
    assert not grant.covers_notification(NotificationKind.MEDICATION.value, NOW)
    assert not grant.covers_notification("something-new", NOW)


def test_the_caregiver_is_named_by_fhir_user() -> None:
    assert related_person_of("http://ehr/fhir/RelatedPerson/rp-1") == "rp-1"
    assert related_person_of("RelatedPerson/rp-1") == "rp-1"
    assert related_person_of("http://ehr/fhir/Patient/p-1") is None
    assert related_person_of("") is None


def test_a_minors_grant_ends_when_they_come_of_age() -> None:
    child = date(2010, 6, 15)
    assert majority(child) == datetime(2028, 6, 15, tzinfo=UTC)
    assert majority(date(2008, 2, 29)) == datetime(2026, 3, 1, tzinfo=UTC)
    asked = datetime(2030, 1, 1, tzinfo=UTC)
    assert grant_end(asked, child, NOW) == datetime(2028, 6, 15, tzinfo=UTC)
    assert grant_end(asked, date(1960, 1, 1), NOW) == asked  # an adult's is as asked
    assert grant_end(asked, None, NOW) == asked
