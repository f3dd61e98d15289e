"""Care-team routing rules."""

from __future__ import annotations

from contracts.triage import Urgency
from messaging.domain import (
    DEFAULT_POOL,
    PRESCRIPTIONS_POOL,
    reply_subject,
    route_patient_message,
    route_triage,
)


def test_urgent_outcomes_go_to_the_urgent_pool_whatever_was_recommended() -> None:
    assert route_triage(Urgency.EMERGENCY, "care-team") == "urgent-nurses"
    assert route_triage(Urgency.URGENT, None) == "urgent-nurses"


def test_routine_outcomes_follow_the_recommendation() -> None:
    assert route_triage(Urgency.ROUTINE, "obstetrics") == "obstetrics"
    assert route_triage(Urgency.SELF_CARE, None) == DEFAULT_POOL


def test_a_patients_new_thread_goes_to_the_care_team_unless_about_a_prescription() -> None:
    assert route_patient_message("Question about my results") == DEFAULT_POOL
    assert route_patient_message("Prescription refill, please!") == PRESCRIPTIONS_POOL
    assert route_patient_message("Refills") == PRESCRIPTIONS_POOL
    assert route_patient_message("Unprescribed") == DEFAULT_POOL


def test_a_reply_carries_its_threads_subject() -> None:
    assert reply_subject("Knee pain") == "Knee pain"
    assert reply_subject(None) == "Message from the patient"
