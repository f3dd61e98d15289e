"""Topic trigger rules, topic resources and Subscription parsing (no HTTP)."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.basic import Basic
from fhir.resources.R4B.subscription import Subscription

from ehr_sandbox.subscriptions.model import (
    EXT_FILTER,
    SubscriptionInvalid,
    parse_subscription,
)
from ehr_sandbox.subscriptions.topics import (
    TOPICS,
    normalise_reference,
    topic_basic_resource,
    topic_for,
)
from ehr_sandbox.testing.http import backport_subscription


def _topic(topic_id: str) -> Any:
    topic = topic_for(f"http://portal.example.org/fhir/SubscriptionTopic/{topic_id}")
    assert topic is not None
    return topic


def test_every_topic_is_a_valid_basic_resource() -> None:
    assert len(TOPICS) == 6
    for topic in TOPICS:
        resource = topic_basic_resource(topic)
        Basic.model_validate(resource)
        assert resource["id"] == topic.id


@pytest.mark.parametrize(
    ("interaction", "previous", "current", "fires"),
    [
        ("create", None, "final", True),
        ("create", None, "preliminary", False),
        ("update", "preliminary", "final", True),
        ("update", "final", "final", False),
        ("update", "final", "amended", True),
        ("update", "amended", "corrected", True),
        ("update", "final", "cancelled", False),
        ("delete", "final", "final", False),
    ],
)
def test_lab_report_trigger(
    interaction: str, previous: str | None, current: str, fires: bool
) -> None:
    topic = _topic("diagnosticreport-final")
    old = None if previous is None else {"resourceType": "DiagnosticReport", "status": previous}
    new = {"resourceType": "DiagnosticReport", "status": current}
    assert topic.fires(interaction, new, old) is fires


def test_appointment_and_communication_triggers() -> None:
    appointment = _topic("appointment-status")
    assert appointment.fires("create", {"status": "booked"}, None)
    assert appointment.fires("update", {"status": "cancelled"}, {"status": "booked"})
    assert not appointment.fires("update", {"status": "booked"}, {"status": "booked"})
    message = _topic("communication-patient")
    to_patient = {"recipient": [{"reference": "Patient/p1"}]}
    to_doctor = {"recipient": [{"reference": "Practitioner/d1"}]}
    assert message.fires("create", to_patient, None)
    assert not message.fires("create", to_doctor, None)
    assert message.fires("update", to_patient, to_doctor)
    assert not message.fires("update", to_patient, to_patient)
    assert message.patients(to_patient) == {"Patient/p1"}


def test_references_are_normalised() -> None:
    assert normalise_reference("Patient/p1") == "Patient/p1"
    assert normalise_reference("http://x/fhir/Patient/p1") == "Patient/p1"
    assert normalise_reference("Patient/p1/_history/3") == "Patient/p1"
    assert normalise_reference("#contained") is None


def _with_filters(*filters: str) -> dict[str, Any]:
    resource = backport_subscription("diagnosticreport-final", "http://127.0.0.1:1/hook")
    resource["_criteria"] = {
        "extension": [{"url": EXT_FILTER, "valueString": value} for value in filters]
    }
    return resource


def test_filters_or_within_and_across() -> None:
    config = parse_subscription(
        _with_filters("DiagnosticReport?patient=Patient/a,b", "patient=Patient/b")
    )
    assert config.matches_patients({"Patient/b"})
    assert not config.matches_patients({"Patient/a"})
    assert not config.matches_patients(set())
    open_config = parse_subscription(_with_filters())
    assert open_config.matches_patients(set())


def test_parsed_channel_settings() -> None:
    resource = backport_subscription(
        "slot-change",
        "https://example.org/hook",
        content="full-resource",
        heartbeat_s=30,
        timeout_s=5,
        max_count=3,
        headers=["Authorization: Bearer x"],
    )
    Subscription.model_validate(resource)
    config = parse_subscription(resource | {"id": "s1"})
    assert config.content == "full-resource"
    assert (config.heartbeat_period_s, config.timeout_s, config.max_count) == (30, 5, 3)
    assert config.headers == (("Authorization", "Bearer x"),)
    assert config.topic.id == "slot-change"


@pytest.mark.parametrize(
    "filters",
    [("Observation?patient=p1",), ("DiagnosticReport?patient=Group/g1",), ("?",)],
)
def test_bad_filters(filters: tuple[str, ...]) -> None:
    with pytest.raises(SubscriptionInvalid):
        parse_subscription(_with_filters(*filters))
