"""Event notifications over real HTTP: matching, numbering, payload shapes, R4B format."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.subscriptionstatus import SubscriptionStatus

from ehr_sandbox.subscriptions.settings import SubscriptionSettings
from ehr_sandbox.testing.http import (
    NotificationReceiver,
    ReceivedRequest,
    RunningSandbox,
    backport_subscription,
    free_port,
    running_sandbox,
)

FHIR_JSON = {"Content-Type": "application/fhir+json"}
DR_TOPIC = "http://portal.example.org/fhir/SubscriptionTopic/diagnosticreport-final"


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(tmp_path) as running:
        yield running


@pytest.fixture
async def receiver() -> AsyncIterator[NotificationReceiver]:
    async with NotificationReceiver(free_port()) as rx:
        yield rx


async def _post(sandbox: RunningSandbox, resource: dict[str, Any]) -> dict[str, Any]:
    response = await sandbox.admin.post(
        f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR_JSON
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _put(sandbox: RunningSandbox, resource: dict[str, Any]) -> dict[str, Any]:
    response = await sandbox.admin.put(
        f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers=FHIR_JSON
    )
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


async def _subscribe(
    sandbox: RunningSandbox, receiver: NotificationReceiver, topic: str, **kwargs: Any
) -> str:
    before = len(receiver.of_type("handshake"))
    created = await _post(sandbox, backport_subscription(topic, receiver.url + "/hook", **kwargs))
    await receiver.wait_for(lambda _rs: len(receiver.of_type("handshake")) > before)
    for _ in range(100):
        current = (await sandbox.admin.get(f"/fhir/Subscription/{created['id']}")).json()
        if current["status"] == "active":
            return str(created["id"])
        await asyncio.sleep(0.05)
    raise AssertionError("subscription did not become active")


def _observation(patient: str, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": 13.2, "unit": "g/dL"},
    }


def _report(patient: str, results: list[str], status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "result": [{"reference": f"Observation/{oid}"} for oid in results],
    }


async def _events(receiver: NotificationReceiver, count: int) -> list[ReceivedRequest]:
    await receiver.wait_for(
        lambda _rs: (
            sum(len(r.event_numbers) for r in receiver.of_type("event-notification")) >= count
        )
    )
    return receiver.of_type("event-notification")


def _params(status: dict[str, Any]) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = status["parameter"]
    return parameters


def _named(status: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for p in _params(status) if p["name"] == name]


async def test_writes_become_gap_free_numbered_events(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    await _subscribe(sandbox, receiver, "diagnosticreport-final", patient="p1")
    obs = await _post(sandbox, _observation("p1"))
    report = await _post(sandbox, _report("p1", [obs["id"]], status="preliminary"))
    assert receiver.of_type("event-notification") == []  # preliminary: not an event
    report = await _put(sandbox, report | {"status": "final"})  # event 1
    await _put(sandbox, report | {"conclusion": "still final"})  # status unchanged: none
    report = await _put(sandbox, report | {"status": "amended"})  # event 2
    await _post(sandbox, _report("p2", [obs["id"]]))  # another patient: filtered out
    await _post(sandbox, _report("p1", []))  # event 3
    await _post(sandbox, _report("p1", []))  # event 4
    notifications = await _events(receiver, 4)
    numbers = [n for r in notifications for n in r.event_numbers]
    assert numbers == [1, 2, 3, 4]
    for notification in notifications:
        status = notification.json()["entry"][0]["resource"]
        since_start = int(_named(status, "events-since-subscription-start")[0]["valueString"])
        assert since_start >= max(notification.event_numbers)
    await asyncio.sleep(0.3)
    assert [n for r in receiver.of_type("event-notification") for n in r.event_numbers] == [
        1,
        2,
        3,
        4,
    ]


async def test_an_event_commits_with_its_write_or_not_at_all(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    # Events are numbered and stored in the write's own transaction: a write that fails
    # after its event was numbered (here: other work of its transaction fails, as a full
    # disk would at the commit) leaves neither the resource nor the event, and no gap.
    sub_id = await _subscribe(sandbox, receiver, "diagnosticreport-final", patient="p1")
    first = await _post(sandbox, _report("p1", []))  # event 1

    async def fail_after_the_events(conn: Any, change: Any) -> None:
        raise RuntimeError("the transaction cannot commit")

    unstage = sandbox.app.state.store.stage(fail_after_the_events)
    try:
        failed = await sandbox.admin.post(
            "/fhir/DiagnosticReport", json=_report("p1", []), headers=FHIR_JSON
        )
    finally:
        unstage()
    assert failed.status_code == 500
    second = await _post(sandbox, _report("p1", []))  # event 2, not 3
    notifications = await _events(receiver, 2)
    assert [n for r in notifications for n in r.event_numbers] == [1, 2]
    focuses = [
        entry["fullUrl"].rsplit("/", 1)[-1]
        for r in notifications
        for entry in r.json()["entry"][1:]
        if "/DiagnosticReport/" in entry.get("fullUrl", "")
    ]
    assert focuses == [first["id"], second["id"]]
    events = (await sandbox.admin.get(f"/fhir/Subscription/{sub_id}/$events")).json()
    since_start = _named(events["entry"][0]["resource"], "events-since-subscription-start")
    assert since_start[0]["valueString"] == "2"
    reports = (await sandbox.admin.get("/fhir/DiagnosticReport?subject=Patient/p1")).json()
    assert reports["total"] == 2


async def test_empty_payload_shape(sandbox: RunningSandbox, receiver: NotificationReceiver) -> None:
    await _subscribe(sandbox, receiver, "observation-final", content="empty")
    await _post(sandbox, _observation("p1"))
    (notification,) = await _events(receiver, 1)
    bundle = notification.json()
    assert len(bundle["entry"]) == 1
    status = bundle["entry"][0]["resource"]
    assert not _named(status, "topic")
    (event,) = _named(status, "notification-event")
    assert [p["name"] for p in event["part"]] == ["event-number", "timestamp"]
    Bundle.model_validate(bundle)


async def test_id_only_payload_shape(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    await _subscribe(sandbox, receiver, "diagnosticreport-final", content="id-only")
    obs = await _post(sandbox, _observation("p1"))
    report = await _post(sandbox, _report("p1", [obs["id"]]))
    (notification,) = await _events(receiver, 1)
    bundle = notification.json()
    status = bundle["entry"][0]["resource"]
    assert _named(status, "topic")[0]["valueCanonical"] == DR_TOPIC
    (event,) = _named(status, "notification-event")
    parts = {p["name"]: p for p in event["part"]}
    report_url = f"{sandbox.fhir}/DiagnosticReport/{report['id']}"
    obs_url = f"{sandbox.fhir}/Observation/{obs['id']}"
    assert parts["event-number"]["valueString"] == "1"
    assert parts["focus"]["valueReference"]["reference"] == report_url
    assert parts["additional-context"]["valueReference"]["reference"] == obs_url
    focus, context = bundle["entry"][1:]
    assert focus == {
        "fullUrl": report_url,
        "request": {"method": "POST", "url": "DiagnosticReport"},
        "response": {"status": "201", "etag": 'W/"1"'},
    }
    assert context == {
        "fullUrl": obs_url,
        "request": {"method": "GET", "url": f"Observation/{obs['id']}"},
        "response": {"status": "200"},
    }
    Bundle.model_validate(bundle)


async def test_full_resource_payload_shape(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    await _subscribe(sandbox, receiver, "diagnosticreport-final", content="full-resource")
    obs = await _post(sandbox, _observation("p1"))
    report = await _post(sandbox, _report("p1", [obs["id"]], status="partial"))
    final = await _put(sandbox, report | {"status": "final"})
    (notification,) = await _events(receiver, 1)
    bundle = notification.json()
    focus, context = bundle["entry"][1:]
    assert focus["resource"] == final
    assert focus["request"] == {"method": "PUT", "url": f"DiagnosticReport/{report['id']}"}
    assert focus["response"]["status"] == "200"
    assert context["resource"]["id"] == obs["id"]
    assert context["resource"]["resourceType"] == "Observation"
    Bundle.model_validate(bundle)


async def test_other_topics_fire_on_their_rules(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    await _subscribe(sandbox, receiver, "communication-patient", patient="p1")
    to_practitioner = {
        "resourceType": "Communication",
        "status": "completed",
        "recipient": [{"reference": "Practitioner/d1"}],
        "sender": {"reference": "Patient/p1"},
    }
    await _post(sandbox, to_practitioner)
    to_patient = {
        "resourceType": "Communication",
        "status": "completed",
        "recipient": [{"reference": "Patient/p1"}],
        "sender": {"reference": "Practitioner/d1"},
    }
    message = await _post(sandbox, to_patient)
    (notification,) = await _events(receiver, 1)
    status = notification.json()["entry"][0]["resource"]
    (event,) = _named(status, "notification-event")
    focus = next(p for p in event["part"] if p["name"] == "focus")
    assert focus["valueReference"]["reference"].endswith(f"/Communication/{message['id']}")


async def test_slot_patient_filter_follows_booked_appointments(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    await _subscribe(sandbox, receiver, "slot-change", patient="p1")
    slot = await _post(
        sandbox,
        {
            "resourceType": "Slot",
            "schedule": {"reference": "Schedule/s1"},
            "status": "free",
            "start": "2026-12-01T09:00:00Z",
            "end": "2026-12-01T09:15:00Z",
        },
    )
    await _post(
        sandbox,
        {
            "resourceType": "Appointment",
            "status": "booked",
            "slot": [{"reference": f"Slot/{slot['id']}"}],
            "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}],
        },
    )
    await _put(sandbox, slot | {"status": "busy"})
    (notification,) = await _events(receiver, 1)
    assert notification.event_numbers == [1]


async def test_r4b_notification_format(tmp_path: Path, receiver: NotificationReceiver) -> None:
    settings = SubscriptionSettings(notification_format="r4b")
    async with running_sandbox(tmp_path, subscriptions=settings) as sandbox:
        await _subscribe(sandbox, receiver, "observation-final", content="id-only")
        obs = await _post(sandbox, _observation("p1"))
        (notification,) = await _events(receiver, 1)
        bundle = notification.json()
        status = bundle["entry"][0]["resource"]
        assert status["resourceType"] == "SubscriptionStatus"
        assert status["type"] == "event-notification"
        assert status["status"] == "active"
        assert status["eventsSinceSubscriptionStart"] == "1"
        (event,) = status["notificationEvent"]
        assert event["eventNumber"] == "1"
        assert event["focus"]["reference"] == f"{sandbox.fhir}/Observation/{obs['id']}"
        assert status["topic"].endswith("/observation-final")
        SubscriptionStatus.model_validate(status)
        Bundle.model_validate(bundle)
        handshake = receiver.of_type("handshake")[0].json()["entry"][0]["resource"]
        assert handshake["resourceType"] == "SubscriptionStatus"
        assert handshake["type"] == "handshake"
