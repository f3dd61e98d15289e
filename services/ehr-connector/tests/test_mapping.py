"""Outbound mapping: every resource is valid R4 (R4B models), tagged, and carries our ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.appointment import AppointmentBookedV1, AppointmentStatus
from contracts.base import Coding
from contracts.intake import IntakeAnswer, IntakeSubmittedV1
from contracts.message import MessageSentV1
from contracts.triage import TriageCompletedV1, TriageFlag, Urgency
from ehr_connector.ehr.errors import EhrStateForbids
from ehr_connector.outbound.domain import appointments, intake, messages, triage
from ehr_connector.outbound.domain.identifiers import (
    APPOINTMENT_ID,
    INTAKE_ID,
    MESSAGE_ID,
    TRIAGE_SESSION_ID,
    has_identifier,
    if_none_exist,
)
from ehr_connector.outbound.domain.r4 import InvalidResource, validate
from ehr_connector.outbound.domain.tags import (
    ORIGIN_TAG_CODE,
    ORIGIN_TAG_SYSTEM,
    has_origin_tag,
    tagged,
)

START = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)


def _booking(**extra: Any) -> AppointmentBookedV1:
    values: dict[str, Any] = {
        "appointment_id": "appt-1",
        "patient_id": "pat-1",
        "patient_fhir_id": "demo-alice",
        "slot_fhir_id": "slot-dr-adams-20261201-0900",
        "practitioner_fhir_id": "dr-adams",
        "start": START,
        "end": START + timedelta(minutes=20),
        "reason": "Knee pain",
        "booked_at": START - timedelta(days=3),
    }
    return AppointmentBookedV1(**(values | extra))


def _valid_and_ours(resource: dict[str, Any]) -> None:
    assert validate(resource) is resource
    assert has_origin_tag(resource)


def test_booking_is_a_valid_booked_appointment_in_its_slot_with_our_identifier() -> None:
    appointment = appointments.booking(_booking())
    _valid_and_ours(appointment)
    assert appointment["status"] == "booked"
    assert appointment["slot"] == [{"reference": "Slot/slot-dr-adams-20261201-0900"}]
    assert has_identifier(appointment, APPOINTMENT_ID, "appt-1")
    assert appointments.patient_of(appointment) == "demo-alice"
    assert appointments.practitioner_of(appointment) == "dr-adams"
    assert appointment["reasonCode"] == [{"text": "Knee pain"}]
    assert appointment["minutesDuration"] == 20


def test_booking_without_practitioner_or_reason_is_still_valid() -> None:
    appointment = appointments.booking(_booking(practitioner_fhir_id=None, reason=None))
    _valid_and_ours(appointment)
    assert len(appointment["participant"]) == 1
    assert "reasonCode" not in appointment


def test_condition_is_url_encoded_identifier_token() -> None:
    assert if_none_exist(APPOINTMENT_ID, "appt-1") == (
        "identifier=http%3A%2F%2Fportal.example.org%2Ffhir%2Fsid%2Fappointment-id%7Cappt-1"
    )


def test_tagging_keeps_other_tags_and_adds_ours_once() -> None:
    resource = {"resourceType": "Slot", "meta": {"tag": [{"system": "urn:x", "code": "y"}]}}
    twice = tagged(tagged(resource))
    assert twice["meta"]["tag"] == [
        {"system": "urn:x", "code": "y"},
        {
            "system": ORIGIN_TAG_SYSTEM,
            "code": ORIGIN_TAG_CODE,
            "display": "Written by the patient portal",
        },
    ]
    assert "meta" not in resource or len(resource["meta"]["tag"]) == 1  # input untouched


@pytest.mark.parametrize(
    "status", ["fulfilled", "arrived", "checked-in", "noshow", "entered-in-error"]
)
def test_an_appointment_past_booking_cannot_be_cancelled(status: str) -> None:
    current = {**appointments.booking(_booking()), "id": "a1", "status": status}
    with pytest.raises(EhrStateForbids) as caught:
        appointments.cancelled(current, reason_code="pat")
    assert f"is {status} in the EHR" in caught.value.outcome_text
    assert caught.value.outcome is not None
    assert caught.value.outcome["issue"][0]["code"] == "business-rule"


def test_cancel_sets_status_and_portal_reason_and_skips_when_already_cancelled() -> None:
    current = {**appointments.booking(_booking()), "id": "a1"}
    cancelled = appointments.cancelled(current, reason_code=None)
    assert cancelled is not None
    _valid_and_ours(cancelled)
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelationReason"]["coding"][0]["code"] == "pat-cpp"
    assert appointments.cancelled(cancelled, reason_code="pat") is None
    assert current["status"] == "booked"  # the EHR's copy is not modified in place


def test_cancel_keeps_a_known_reason_code_and_replaces_an_unknown_one() -> None:
    current = {**appointments.booking(_booking()), "id": "a1"}
    prov = appointments.cancelled(current, reason_code="prov")
    odd = appointments.cancelled(current, reason_code="bogus")
    assert prov is not None and odd is not None
    assert prov["cancelationReason"]["coding"][0]["code"] == "prov"
    assert odd["cancelationReason"]["coding"][0]["code"] == "pat-cpp"


def test_reschedule_moves_slot_and_times_and_is_a_noop_once_there() -> None:
    current = {**appointments.booking(_booking()), "id": "a1"}
    later = START + timedelta(days=1)
    moved = appointments.rescheduled(
        current, slot_id="slot-2", start=later, end=later + timedelta(minutes=20)
    )
    assert moved is not None
    _valid_and_ours(moved)
    assert appointments.slot_ids(moved) == ["slot-2"]
    # The EHR answers times in its own format ("Z"): still recognised as the same instant.
    moved["start"] = later.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (
        appointments.rescheduled(
            moved, slot_id="slot-2", start=later, end=later + timedelta(minutes=20)
        )
        is None
    )


def test_slot_status_change_is_tagged_and_skipped_when_already_there() -> None:
    slot = {
        "resourceType": "Slot",
        "id": "s1",
        "schedule": {"reference": "Schedule/sched-dr-adams"},
        "status": "free",
        "start": "2026-12-01T14:00:00Z",
        "end": "2026-12-01T14:20:00Z",
    }
    busy = appointments.slot_with_status(slot, "busy")
    assert busy is not None
    _valid_and_ours(busy)
    assert appointments.slot_with_status(busy, "busy") is None


def test_updated_event_carries_the_ehr_version_and_our_id() -> None:
    resource = {
        **appointments.booking(_booking()),
        "id": "a1",
        "meta": {"versionId": "3", "lastUpdated": "2026-11-20T08:00:00.123Z"},
    }
    event = appointments.updated_event(resource, appointment_id="appt-1", patient_id="pat-1")
    assert event.status is AppointmentStatus.BOOKED
    assert event.appointment_fhir_id == "a1"
    assert event.source is not None and event.source.version_id == "3"
    assert event.slot_fhir_ids == ["slot-dr-adams-20261201-0900"]
    assert event.start == START


def test_intake_response_links_the_appointment_and_groups_repeated_answers() -> None:
    data = IntakeSubmittedV1(
        intake_id="intake-1",
        appointment_id="appt-1",
        patient_id="pat-1",
        questionnaire_canonical="http://example.org/fhir/ehr-sandbox/Questionnaire/intake|1",
        answers=[
            IntakeAnswer(link_id="symptoms", value_string="Knee pain"),
            IntakeAnswer(link_id="smoker", value_boolean=False),
            IntakeAnswer(
                link_id="allergy",
                value_coding=Coding(system="http://snomed.info/sct", code="91936005"),
            ),
            IntakeAnswer(
                link_id="allergy",
                value_coding=Coding(system="http://snomed.info/sct", code="300913006"),
            ),
            IntakeAnswer(link_id="pain", value_integer=4),
            IntakeAnswer(link_id="unanswered"),
        ],
        submitted_at=START,
    )
    response = intake.intake_response(data, patient_fhir_id="demo-alice", appointment_fhir_id="a1")
    _valid_and_ours(response)
    assert has_identifier(response, INTAKE_ID, "intake-1")
    assert response["questionnaire"].endswith("Questionnaire/intake|1")
    assert response["extension"] == [
        {"url": intake.INTAKE_APPOINTMENT, "valueReference": {"reference": "Appointment/a1"}}
    ]
    by_link = {item["linkId"]: item["answer"] for item in response["item"]}
    assert list(by_link) == ["symptoms", "smoker", "allergy", "pain"]
    assert len(by_link["allergy"]) == 2
    assert by_link["pain"] == [{"valueInteger": 4}]


def test_message_is_a_threaded_communication_from_the_patient_to_the_care_team() -> None:
    data = MessageSentV1(
        message_id="msg-2",
        thread_id="thread-1",
        patient_id="pat-1",
        recipient_pool="nurses",
        subject="Refill",
        body="Could I get a refill?",
        sent_at=START,
    )
    resource = messages.communication(
        data,
        patient_fhir_id="demo-alice",
        recipient="CareTeam/care-team-primary",
        thread_fhir_id="c-root",
        in_reply_to_fhir_id="c-reply",
    )
    _valid_and_ours(resource)
    assert has_identifier(resource, MESSAGE_ID, "msg-2")
    assert resource["sender"] == resource["subject"] == {"reference": "Patient/demo-alice"}
    assert resource["recipient"] == [{"reference": "CareTeam/care-team-primary"}]
    assert resource["partOf"] == [{"reference": "Communication/c-root"}]
    assert resource["inResponseTo"] == [{"reference": "Communication/c-reply"}]
    assert resource["payload"] == [{"contentString": "Could I get a refill?"}]


@pytest.mark.parametrize(
    ("urgency", "priority"),
    [
        (Urgency.EMERGENCY, "stat"),
        (Urgency.URGENT, "asap"),
        (Urgency.ROUTINE, "routine"),
        (Urgency.SELF_CARE, "routine"),
    ],
)
def test_triage_task_priority_follows_urgency(urgency: Urgency, priority: str) -> None:
    data = TriageCompletedV1(
        session_id="tri-1",
        patient_id="pat-1",
        urgency=urgency,
        summary="Chest pain on exertion",
        findings=[Coding(system="http://snomed.info/sct", code="29857009", display="Chest pain")],
        rule_set_version="2026.11",
        recommended_pool="nurses",
        completed_at=START,
    )
    response = triage.triage_response(data, patient_fhir_id="demo-alice", questionnaire="http://q")
    task = triage.review_task(
        data, patient_fhir_id="demo-alice", response_fhir_id="qr-1", owner="CareTeam/ct"
    )
    _valid_and_ours(response)
    _valid_and_ours(task)
    assert has_identifier(response, TRIAGE_SESSION_ID, "tri-1")
    assert has_identifier(task, TRIAGE_SESSION_ID, "tri-1")
    assert task["priority"] == priority
    assert task["focus"] == {"reference": "QuestionnaireResponse/qr-1"}
    assert task["owner"] == {"reference": "CareTeam/ct"}
    assert task["for"] == {"reference": "Patient/demo-alice"}


def test_triage_task_description_quotes_the_patient_and_the_flags() -> None:
    data = TriageCompletedV1(
        session_id="tri-2",
        patient_id="pat-1",
        urgency=Urgency.EMERGENCY,
        summary="emergency: chest pain",
        rule_set_version="2026.12.1",
        recommended_pool="emergency",
        completed_at=START,
        flags=[
            TriageFlag(
                id="chest-pain-acs-features",
                level="red",
                text="Chest pain spreading to the arm",
                evidence=["chest pain", "down my left arm"],
            ),
            TriageFlag(id="note", level="routine", text="not for the task"),
        ],
        patient_text="Chest pain going down my left arm",
    )
    task = triage.review_task(
        data, patient_fhir_id="demo-alice", response_fhir_id="qr-2", owner="CareTeam/ct"
    )
    _valid_and_ours(task)
    description = task["description"]
    assert description.startswith("Review the patient's portal triage (urgency: emergency)")
    assert 'RED flag: Chest pain spreading to the arm ("chest pain"; "down my left arm")' in (
        description
    )
    assert "not for the task" not in description
    assert description.endswith('Patient\'s words: "Chest pain going down my left arm"')


def test_an_invalid_resource_is_refused_before_it_is_sent() -> None:
    with pytest.raises(InvalidResource, match=r"Appointment.*start"):
        validate({"resourceType": "Appointment", "start": "tomorrow", "participant": []})
    with pytest.raises(InvalidResource, match="comments"):
        validate({"resourceType": "Slot", "status": "free", "comments": "R5 spelling"})
    with pytest.raises(InvalidResource, match="unknown resource type"):
        validate({"resourceType": "NoSuchThing"})
