"""Delivery over real HTTP: heartbeats, retries with back-off, faults, $events, signatures."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ehr_sandbox.subscriptions.settings import SubscriptionSettings
from ehr_sandbox.subscriptions.signing import SignatureInvalid, verify_detached
from ehr_sandbox.testing.http import (
    NotificationReceiver,
    ReceivedRequest,
    RunningSandbox,
    backport_subscription,
    free_port,
    running_sandbox,
)

FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
async def receiver() -> AsyncIterator[NotificationReceiver]:
    async with NotificationReceiver(free_port()) as rx:
        yield rx


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[RunningSandbox]:
    settings = SubscriptionSettings(
        delivery_retry_base_s=0.2, delivery_max_failures=3, reorder_flush_s=1.5
    )
    async with running_sandbox(tmp_path, subscriptions=settings) as running:
        yield running


async def _subscribe(
    sandbox: RunningSandbox, receiver: NotificationReceiver, topic: str, **kwargs: Any
) -> str:
    resource = backport_subscription(topic, receiver.url + "/hook", **kwargs)
    response = await sandbox.admin.post("/fhir/Subscription", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    sub_id = str(response.json()["id"])
    await _wait_status(sandbox, sub_id, "active")
    return sub_id


async def _wait_status(sandbox: RunningSandbox, sub_id: str, status: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(300):
        body = (await sandbox.admin.get(f"/fhir/Subscription/{sub_id}")).json()
        if body.get("status") == status:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"status stayed {body.get('status')}, expected {status}")


async def _observation(sandbox: RunningSandbox, patient: str = "p1") -> str:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "glucose"},
        "subject": {"reference": f"Patient/{patient}"},
    }
    response = await sandbox.admin.post("/fhir/Observation", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _numbers(requests: list[ReceivedRequest]) -> list[int]:
    return [
        n for r in requests if r.notification_type == "event-notification" for n in r.event_numbers
    ]


async def _set_faults(sandbox: RunningSandbox, **faults: Any) -> None:
    response = await sandbox.admin.post("/sandbox/faults", json=faults)
    assert response.status_code == 200, response.text


async def test_heartbeat_arrives_at_the_configured_period(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    sub_id = await _subscribe(sandbox, receiver, "observation-final", heartbeat_s=1)
    handshake_at = receiver.of_type("handshake")[0].received_at
    await receiver.wait_for(lambda _rs: len(receiver.of_type("heartbeat")) >= 2, within=5)
    first, second = receiver.of_type("heartbeat")[:2]
    assert 0.8 <= first.received_at - handshake_at <= 2.5
    assert 0.8 <= second.received_at - first.received_at <= 2.5
    status = first.json()["entry"][0]["resource"]
    params = {p["name"]: p for p in status["parameter"]}
    assert params["status"]["valueCode"] == "active"
    assert params["events-since-subscription-start"]["valueString"] == "0"
    assert len(first.json()["entry"]) == 1
    # An event notification resets the heartbeat clock.
    await _observation(sandbox)
    await receiver.wait_for(lambda _rs: len(receiver.of_type("event-notification")) == 1)
    event_at = receiver.of_type("event-notification")[0].received_at
    count = len(receiver.of_type("heartbeat"))
    await receiver.wait_for(lambda _rs: len(receiver.of_type("heartbeat")) > count, within=5)
    assert receiver.of_type("heartbeat")[-1].received_at - event_at >= 0.8
    beat = receiver.of_type("heartbeat")[-1].json()["entry"][0]["resource"]
    since = next(p for p in beat["parameter"] if p["name"] == "events-since-subscription-start")
    assert since["valueString"] == "1"
    assert sub_id


async def test_failed_deliveries_back_off_then_error(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    sub_id = await _subscribe(sandbox, receiver, "observation-final")
    receiver.status = 500
    await _observation(sandbox)
    errored = await _wait_status(sandbox, sub_id, "error")
    assert "3 times" in errored["error"]
    attempts = receiver.of_type("event-notification")
    assert len(attempts) == 3
    assert all(a.event_numbers == [1] for a in attempts)
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(attempts)]
    # Base 0.2 s doubling, jittered to 50-100 %: ~0.1-0.2 s, then ~0.2-0.4 s.
    assert 0.08 <= gaps[0] <= 1.0
    assert 0.18 <= gaps[1] <= 1.5
    assert len({a.headers["x-signature"] for a in attempts}) == 3
    status = await sandbox.admin.get(f"/fhir/Subscription/{sub_id}/$status")
    params = {p["name"]: p for p in status.json()["entry"][0]["resource"]["parameter"]}
    assert params["status"]["valueCode"] == "error"
    assert params["error"]["valueCodeableConcept"]["coding"][0]["code"] == "no-response"
    # The event is still there for recovery.
    events = (await sandbox.admin.get(f"/fhir/Subscription/{sub_id}/$events")).json()
    assert _event_numbers_of(events) == [1]


async def test_timeout_bounds_each_attempt(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    port = free_port()

    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await release.wait()  # never answers while the test runs
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", port)
    try:
        resource = backport_subscription(
            "observation-final", f"http://127.0.0.1:{port}/hook", timeout_s=1
        )
        response = await sandbox.admin.post("/fhir/Subscription", json=resource, headers=FHIR_JSON)
        started = asyncio.get_running_loop().time()
        errored = await _wait_status(sandbox, response.json()["id"], "error")
        assert asyncio.get_running_loop().time() - started < 4
        assert "no response within 1 s" in errored["error"]
    finally:
        release.set()
        server.close()
        await server.wait_closed()


def _event_numbers_of(bundle: dict[str, Any]) -> list[int]:
    status = bundle["entry"][0]["resource"]
    return [
        int(part["valueString"])
        for p in status["parameter"]
        if p["name"] == "notification-event"
        for part in p["part"]
        if part["name"] == "event-number"
    ]


async def test_events_recovers_what_drop_faults_lost(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    sub_id = await _subscribe(sandbox, receiver, "observation-final", content="id-only")
    ids = [await _observation(sandbox)]
    await receiver.wait_for(lambda rs: _numbers(rs) == [1])
    await _set_faults(sandbox, notification_drop_rate=1.0)
    ids += [await _observation(sandbox), await _observation(sandbox)]
    await asyncio.sleep(0.5)
    await _set_faults(sandbox)
    ids.append(await _observation(sandbox))
    await receiver.wait_for(lambda rs: 4 in _numbers(rs))
    assert _numbers(receiver.requests) == [1, 4]
    # The receiver sees the gap (2, 3) and asks for what it missed.
    response = await sandbox.admin.get(
        f"/fhir/Subscription/{sub_id}/$events",
        params={"eventsSinceNumber": "2", "eventsUntilNumber": "3"},
    )
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["type"] == "history"
    status = bundle["entry"][0]["resource"]
    params = {p["name"]: p for p in status["parameter"]}
    assert params["type"]["valueCode"] == "query-event"
    assert params["events-since-subscription-start"]["valueString"] == "4"
    assert _event_numbers_of(bundle) == [2, 3]
    assert [e["fullUrl"] for e in bundle["entry"][1:]] == [
        f"{sandbox.fhir}/Observation/{ids[1]}",
        f"{sandbox.fhir}/Observation/{ids[2]}",
    ]
    assert all("resource" not in e for e in bundle["entry"][1:])
    full = (
        await sandbox.admin.get(
            f"/fhir/Subscription/{sub_id}/$events",
            params={"eventsSinceNumber": "3", "content": "full-resource"},
        )
    ).json()
    assert _event_numbers_of(full) == [3, 4]
    assert full["entry"][1]["resource"]["id"] == ids[2]


async def test_duplicate_faults_send_each_notification_twice(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    await _subscribe(sandbox, receiver, "observation-final")
    await _set_faults(sandbox, notification_duplicate_rate=1.0)
    await _observation(sandbox)
    await receiver.wait_for(lambda rs: _numbers(rs) == [1, 1])
    first, second = receiver.of_type("event-notification")
    assert first.body == second.body
    assert first.headers["x-signature"] != second.headers["x-signature"]


async def test_reorder_fault_holds_one_back(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    await _subscribe(sandbox, receiver, "observation-final")
    await _set_faults(sandbox, notification_reorder=True)
    await _observation(sandbox)
    await asyncio.sleep(0.1)
    assert _numbers(receiver.requests) == []
    await _observation(sandbox)
    await receiver.wait_for(lambda rs: len(_numbers(rs)) == 2)
    assert _numbers(receiver.requests) == [2, 1]
    # With nothing following, a held notification still goes out after the flush delay.
    await _observation(sandbox)
    await receiver.wait_for(lambda rs: len(_numbers(rs)) == 3, within=6)
    assert _numbers(receiver.requests) == [2, 1, 3]


async def test_signature_verifies_against_the_published_jwks(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    await _subscribe(sandbox, receiver, "observation-final", content="full-resource")
    await _observation(sandbox)
    await receiver.wait_for(lambda _rs: len(receiver.of_type("event-notification")) == 1)
    async with httpx.AsyncClient() as http:
        jwks = (await http.get(sandbox.url + "/auth/jwks.json")).json()
    seen: set[str] = set()
    for request in receiver.requests:
        header = verify_detached(request.headers["x-signature"], request.body, jwks, seen_jti=seen)
        assert header["alg"] == "ES256"
        assert header["kid"] == jwks["keys"][0]["kid"]
        assert header["htu"] == receiver.url + "/hook"
    notification = receiver.of_type("event-notification")[0]
    tampered = notification.body.replace(b'"final"', b'"amended"')
    assert tampered != notification.body
    with pytest.raises(SignatureInvalid):
        verify_detached(notification.headers["x-signature"], tampered, jwks)
    with pytest.raises(SignatureInvalid, match="replay"):
        verify_detached(notification.headers["x-signature"], notification.body, jwks, seen_jti=seen)
    with pytest.raises(SignatureInvalid, match="window"):
        verify_detached(
            notification.headers["x-signature"],
            notification.body,
            jwks,
            now=time.time() + 3600,
        )


async def test_max_count_bounds_events_per_notification(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    sub_id = await _subscribe(sandbox, receiver, "observation-final", max_count=2)
    receiver.status = 500
    for _ in range(5):
        await _observation(sandbox)
    # The first attempt carries event 1 only (it was alone); while it backs off, more
    # events queue up; the receiver then recovers.
    await receiver.wait_for(lambda _rs: len(receiver.of_type("event-notification")) >= 1)
    receiver.status = 200
    await receiver.wait_for(lambda rs: 5 in _numbers(rs), within=10)
    delivered = receiver.of_type("event-notification")
    assert all(len(r.event_numbers) <= 2 for r in delivered)
    assert sorted(set(_numbers(delivered))) == [1, 2, 3, 4, 5]
    assert (await _wait_status(sandbox, sub_id, "active"))["status"] == "active"
