"""Gateway rules: notification wording, scopes, the access-log chain."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from gateway.auth import PatientToken
from gateway.domain import (
    GENESIS,
    AccessRecord,
    Notification,
    NotificationKind,
    access_hash,
    appointment_news,
    first_broken_link,
    profile_of,
)


def _chain(n: int) -> list[AccessRecord]:
    out: list[AccessRecord] = []
    prev = GENESIS
    for i in range(n):
        at = datetime(2026, 11, 25, tzinfo=UTC) + timedelta(minutes=i)
        h = access_hash(prev, "p1", "self", "read", f"R{i}", at)
        out.append(AccessRecord("p1", "self", "read", f"R{i}", at, prev, h))
        prev = h
    return out


def test_intact_chain_verifies() -> None:
    assert first_broken_link(_chain(5)) is None


def test_edited_row_is_found() -> None:
    chain = _chain(5)
    chain[2] = replace(chain[2], actor="someone-else")
    assert first_broken_link(chain) == 2


def test_deleted_row_is_found() -> None:
    chain = _chain(5)
    del chain[1]
    assert first_broken_link(chain) == 1


def test_an_intake_reminder_asks_for_the_form_in_plain_words() -> None:
    note = Notification(NotificationKind.INTAKE_REMINDER, "apt-1")
    assert note.text() == "Your visit is coming up: please fill in the questions before you come."


def test_notifications_carry_no_clinical_detail() -> None:
    note = Notification(NotificationKind.APPOINTMENT, "apt-1", "cancelled")
    assert note.text() == "An appointment was cancelled."
    assert (
        Notification(NotificationKind.LAB_RESULT, "dr-1").text() == "A new lab result is available."
    )


def test_smart_scopes_v1_and_v2() -> None:
    def token(*scopes: str) -> PatientToken:
        return PatientToken(subject="x", patient_fhir_id="x", scopes=frozenset(scopes))

    assert token("patient/*.rs").allows_read("Observation")
    assert token("patient/Observation.rs").allows_read("Observation")
    assert token("patient/Observation.read").allows_read("Observation")
    assert not token("patient/Observation.rs").allows_read("MedicationRequest")
    assert not token("patient/*.c").allows_read("Observation")
    assert not token("user/*.rs", "openid").allows_read("Observation")
    # Exact permissions: v1 `write` is `cud`, so it grants no read; no substring matches.
    assert not token("patient/*.write").allows_read("Observation")
    assert token("patient/*.write").allows("patient/Appointment.c")
    assert not token("patient/Appointment.rs").allows("patient/Appointment.c")
    assert not token("patient/AppointmentX.c").allows("patient/Appointment.c")
    assert token("patient/*.cruds").allows("patient/Appointment.cu")
    assert not token("patient/Observation.s").allows("patient/Observation.r")
    assert token("patient/Observation.s").allows_read("Observation")
    # Malformed v2 letters (out of order, repeated) and narrowed scopes grant nothing.
    assert not token("patient/Observation.sr").allows_read("Observation")
    assert not token("patient/Observation.rrs").allows_read("Observation")
    assert not token("patient/Observation.rs?category=laboratory").allows_read("Observation")


def test_a_change_to_a_visit_that_is_over_is_not_news() -> None:
    now = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    assert not appointment_news(now - timedelta(days=30), now)
    assert appointment_news(now + timedelta(days=2), now)
    assert appointment_news(None, now)


def test_profile_of_a_patient_prefers_the_official_name_and_counts_whole_years() -> None:
    patient = {
        "resourceType": "Patient",
        "name": [
            {"use": "nickname", "given": ["Al"]},
            {"use": "official", "family": "Nakamura", "given": ["Alice", "May"]},
        ],
        "gender": "female",
        "birthDate": "1968-04-12",
    }
    before_birthday = profile_of(patient, date(2026, 4, 11))
    assert (before_birthday.name, before_birthday.given_name) == ("Alice May Nakamura", "Alice")
    assert (before_birthday.age, before_birthday.sex) == (57, "female")
    assert profile_of(patient, date(2026, 4, 12)).age == 58


def test_profile_of_a_sparse_patient_says_what_it_does_not_know() -> None:
    found = profile_of(
        {"resourceType": "Patient", "gender": "x", "birthDate": "1968"}, date(2026, 1, 1)
    )
    assert (found.name, found.birth_date, found.age, found.sex) == ("", None, None, "unknown")
