"""Subscription lifecycle over real HTTP: validation, handshake, activation, error, off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ehr_sandbox.subscriptions.settings import SubscriptionSettings
from ehr_sandbox.testing.http import (
    NotificationReceiver,
    RunningSandbox,
    backport_subscription,
    free_port,
    running_sandbox,
)

FHIR_JSON = {"Content-Type": "application/fhir+json"}
STATUS_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
    "backport-subscription-status-r4"
)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[RunningSandbox]:
    settings = SubscriptionSettings(delivery_retry_base_s=0.05, delivery_max_failures=2)
    async with running_sandbox(tmp_path, subscriptions=settings) as running:
        yield running


@pytest.fixture
async def receiver() -> AsyncIterator[NotificationReceiver]:
    async with NotificationReceiver(free_port()) as rx:
        yield rx


async def _create(sandbox: RunningSandbox, resource: dict[str, Any]) -> dict[str, Any]:
    response = await sandbox.admin.post("/fhir/Subscription", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _wait_status(sandbox: RunningSandbox, sub_id: str, status: str) -> dict[str, Any]:
    for _ in range(200):
        body: dict[str, Any] = (await sandbox.admin.get(f"/fhir/Subscription/{sub_id}")).json()
        if body.get("status") == status:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"Subscription {sub_id} never became {status}: {body.get('status')}")


def _params(status: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: p for p in status["parameter"]}


async def test_handshake_makes_the_subscription_active(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    created = await _create(
        sandbox,
        backport_subscription(
            "diagnosticreport-final", receiver.url + "/hook", headers=["X-Api-Key: secret-1"]
        ),
    )
    assert created["status"] == "requested"
    sub_id = created["id"]
    (handshake,) = await receiver.wait_for(lambda rs: len(rs) >= 1)
    assert handshake.method == "POST"
    assert handshake.path == "/hook"
    assert handshake.headers["content-type"] == "application/fhir+json"
    assert handshake.headers["x-api-key"] == "secret-1"
    assert handshake.headers["x-signature"].count(".") == 2
    bundle = handshake.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    (entry,) = bundle["entry"]
    assert entry["request"] == {
        "method": "GET",
        "url": f"{sandbox.fhir}/Subscription/{sub_id}/$status",
    }
    assert entry["response"]["status"] == "200"
    status = entry["resource"]
    assert status["resourceType"] == "Parameters"
    assert status["meta"]["profile"] == [STATUS_PROFILE]
    params = _params(status)
    assert params["subscription"]["valueReference"]["reference"] == (
        f"{sandbox.fhir}/Subscription/{sub_id}"
    )
    assert params["topic"]["valueCanonical"] == (
        "http://portal.example.org/fhir/SubscriptionTopic/diagnosticreport-final"
    )
    assert params["status"]["valueCode"] == "requested"
    assert params["type"]["valueCode"] == "handshake"
    assert params["events-since-subscription-start"]["valueString"] == "0"
    assert "notification-event" not in params
    active = await _wait_status(sandbox, sub_id, "active")
    assert active["meta"]["versionId"] == "2"
    history = (await sandbox.admin.get(f"/fhir/Subscription/{sub_id}/_history")).json()
    assert [e["resource"]["status"] for e in history["entry"]] == ["active", "requested"]


async def test_receiver_answering_500_puts_the_subscription_in_error(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    receiver.status = 500
    created = await _create(
        sandbox, backport_subscription("observation-final", receiver.url + "/hook")
    )
    errored = await _wait_status(sandbox, created["id"], "error")
    assert "500" in errored["error"]
    assert len(receiver.of_type("handshake")) == 1


async def test_unreachable_endpoint_puts_the_subscription_in_error(
    sandbox: RunningSandbox,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/hook"
    created = await _create(sandbox, backport_subscription("observation-final", nobody))
    errored = await _wait_status(sandbox, created["id"], "error")
    assert "connection failed" in errored["error"]


async def test_a_new_subscription_always_starts_requested(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    created = await _create(
        sandbox,
        backport_subscription("observation-final", receiver.url + "/h", status="active"),
    )
    await receiver.wait_for(lambda rs: len(rs) >= 1)
    assert receiver.requests[0].notification_type == "handshake"
    await _wait_status(sandbox, created["id"], "active")
    history = (await sandbox.admin.get(f"/fhir/Subscription/{created['id']}/_history")).json()
    assert [e["resource"]["status"] for e in history["entry"]] == ["active", "requested", "active"]


async def test_reactivating_an_errored_subscription_handshakes_again(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    receiver.status = 503
    created = await _create(sandbox, backport_subscription("slot-change", receiver.url + "/h"))
    errored = await _wait_status(sandbox, created["id"], "error")
    receiver.status = 200
    errored["status"] = "requested"
    errored.pop("error", None)
    response = await sandbox.admin.put(
        f"/fhir/Subscription/{created['id']}", json=errored, headers=FHIR_JSON
    )
    assert response.status_code == 200, response.text
    await _wait_status(sandbox, created["id"], "active")
    assert len(receiver.of_type("handshake")) == 2


async def test_off_subscription_gets_no_notifications(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    created = await _create(sandbox, backport_subscription("slot-change", receiver.url + "/h"))
    active = await _wait_status(sandbox, created["id"], "active")
    active["status"] = "off"
    response = await sandbox.admin.put(
        f"/fhir/Subscription/{created['id']}", json=active, headers=FHIR_JSON
    )
    assert response.status_code == 200
    slot = {
        "resourceType": "Slot",
        "schedule": {"reference": "Schedule/s1"},
        "status": "free",
        "start": "2026-12-01T09:00:00Z",
        "end": "2026-12-01T09:15:00Z",
    }
    assert (await sandbox.admin.post("/fhir/Slot", json=slot, headers=FHIR_JSON)).is_success
    await asyncio.sleep(0.5)
    assert receiver.of_type("event-notification") == []


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"criteria": "http://example.org/SubscriptionTopic/unknown"}, "Unknown SubscriptionTopic"),
        ({"channel": {"type": "websocket"}}, "only rest-hook"),
        ({"channel": {"type": "email", "endpoint": "mailto:a@b.c"}}, "only rest-hook"),
        ({"channel": {"type": "rest-hook", "endpoint": "ftp://x/y"}}, "http(s) URL"),
        (
            {
                "_criteria": {
                    "extension": [
                        {
                            "url": "http://hl7.org/fhir/uv/subscriptions-backport/"
                            "StructureDefinition/backport-filter-criteria",
                            "valueString": "DiagnosticReport?code=1234-5",
                        }
                    ]
                }
            },
            "not supported",
        ),
        ({"channel": {"type": "rest-hook", "endpoint": "http://x/y", "header": ["bad"]}}, "Name"),
    ],
)
async def test_unservable_subscriptions_are_rejected_with_422(
    sandbox: RunningSandbox, change: dict[str, Any], needle: str
) -> None:
    resource = backport_subscription("diagnosticreport-final", "http://127.0.0.1:1/h") | change
    response = await sandbox.admin.post("/fhir/Subscription", json=resource, headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert needle in " ".join(i["diagnostics"] for i in outcome["issue"])


async def test_topics_are_readable_as_basic_and_listed_in_metadata(
    sandbox: RunningSandbox,
) -> None:
    basic = (await sandbox.admin.get("/fhir/Basic/diagnosticreport-final")).json()
    assert basic["code"]["coding"][0]["code"] == "SubscriptionTopic"
    urls = {e["url"]: e for e in basic["extension"]}
    url_ext = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.url"
    assert urls[url_ext]["valueUri"] == (
        "http://portal.example.org/fhir/SubscriptionTopic/diagnosticreport-final"
    )
    can_filter = urls[
        "http://hl7.org/fhir/4.3/StructureDefinition/extension-SubscriptionTopic.canFilterBy"
    ]
    assert {"url": "filterParameter", "valueString": "patient"} in can_filter["extension"]
    metadata = (await sandbox.admin.get("/fhir/metadata")).json()
    rest = metadata["rest"][0]
    canonicals = {
        e["valueCanonical"]
        for e in rest.get("extension", [])
        if e["url"].endswith("capabilitystatement-subscriptiontopic-canonical")
    }
    assert len(canonicals) == 6
    subscription = next(r for r in rest["resource"] if r["type"] == "Subscription")
    assert {op["name"] for op in subscription["operation"]} >= {"status", "events"}
    on_resource = {
        e["valueCanonical"]
        for e in subscription["extension"]
        if e["url"].endswith("capabilitystatement-subscriptiontopic-canonical")
    }
    assert on_resource == canonicals
    assert subscription["supportedProfile"] == [
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"
    ]
