"""$status and $events, bad input, restarts and `end`, over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ehr_sandbox.testing.http import (
    NotificationReceiver,
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
    async with running_sandbox(tmp_path) as running:
        yield running


async def _subscribe(sandbox: RunningSandbox, resource: dict[str, Any]) -> str:
    response = await sandbox.admin.post("/fhir/Subscription", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _wait_status(sandbox: RunningSandbox, sub_id: str, status: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = (await sandbox.admin.get(f"/fhir/Subscription/{sub_id}")).json()
        if body.get("status") == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never {status}")


async def _observation(sandbox: RunningSandbox, patient: str) -> str:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": f"Patient/{patient}"},
    }
    response = await sandbox.admin.post("/fhir/Observation", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201
    return str(response.json()["id"])


def _status_params(bundle: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return {p["name"]: p for p in bundle["entry"][index]["resource"]["parameter"]}


async def test_status_at_type_and_instance_level(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    good = await _subscribe(
        sandbox, backport_subscription("observation-final", receiver.url + "/a", patient="p1")
    )
    await _wait_status(sandbox, good, "active")
    nowhere = f"http://127.0.0.1:{free_port()}/b"
    bad = await _subscribe(sandbox, backport_subscription("observation-final", nowhere))
    await _wait_status(sandbox, bad, "error")
    await _observation(sandbox, "p1")
    await _observation(sandbox, "p2")

    everything = (await sandbox.admin.get("/fhir/Subscription/$status")).json()
    assert everything["type"] == "searchset"
    assert everything["total"] == 2
    by_ref = {
        _status_params(everything, i)["subscription"]["valueReference"]["reference"]: i
        for i in range(2)
    }
    good_params = _status_params(everything, by_ref[f"{sandbox.fhir}/Subscription/{good}"])
    assert good_params["type"]["valueCode"] == "query-status"
    assert good_params["status"]["valueCode"] == "active"
    assert good_params["events-since-subscription-start"]["valueString"] == "1"
    bad_params = _status_params(everything, by_ref[f"{sandbox.fhir}/Subscription/{bad}"])
    assert bad_params["status"]["valueCode"] == "error"
    assert bad_params["events-since-subscription-start"]["valueString"] == "2"
    assert "error" in bad_params

    only_errors = (await sandbox.admin.get("/fhir/Subscription/$status?status=error")).json()
    assert only_errors["total"] == 1
    by_id = await sandbox.admin.post(
        "/fhir/Subscription/$status",
        json={"resourceType": "Parameters", "parameter": [{"name": "id", "valueId": good}]},
        headers=FHIR_JSON,
    )
    assert by_id.status_code == 200, by_id.text
    assert by_id.json()["total"] == 1
    one = (await sandbox.admin.get(f"/fhir/Subscription/{good}/$status")).json()
    assert one["total"] == 1
    assert _status_params(one)["status"]["valueCode"] == "active"


async def test_operation_errors_are_operation_outcomes(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    sub_id = await _subscribe(
        sandbox, backport_subscription("observation-final", receiver.url + "/a")
    )
    cases = [
        ("get", f"/fhir/Subscription/{sub_id}/$events?eventsSinceNumber=abc", 400),
        (
            "get",
            f"/fhir/Subscription/{sub_id}/$events?eventsSinceNumber=5&eventsUntilNumber=2",
            400,
        ),
        ("get", f"/fhir/Subscription/{sub_id}/$events?content=everything", 400),
        ("get", f"/fhir/Subscription/{sub_id}/$events?content=empty&content=id-only", 400),
        ("get", "/fhir/Subscription/does-not-exist/$events", 404),
        ("get", "/fhir/Subscription/does-not-exist/$status", 404),
    ]
    for method, path, status in cases:
        response = await sandbox.admin.request(method, path)
        assert response.status_code == status, (path, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
    not_parameters = await sandbox.admin.post(
        f"/fhir/Subscription/{sub_id}/$events",
        json={"resourceType": "Patient"},
        headers=FHIR_JSON,
    )
    assert not_parameters.status_code == 400
    broken = await sandbox.admin.post(
        f"/fhir/Subscription/{sub_id}/$events", content=b"{", headers=FHIR_JSON
    )
    assert broken.status_code == 400
    anonymous = await sandbox.admin.get(
        f"/fhir/Subscription/{sub_id}/$events", headers={"Authorization": ""}
    )
    assert anonymous.status_code == 401


async def test_events_with_post_parameters_and_empty_content(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    sub_id = await _subscribe(
        sandbox, backport_subscription("observation-final", receiver.url + "/a")
    )
    await _wait_status(sandbox, sub_id, "active")
    for _ in range(3):
        await _observation(sandbox, "p1")
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "eventsSinceNumber", "valueString": "2"},
            {"name": "content", "valueCode": "empty"},
        ],
    }
    response = await sandbox.admin.post(
        f"/fhir/Subscription/{sub_id}/$events", json=body, headers=FHIR_JSON
    )
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert len(bundle["entry"]) == 1
    events = [
        p for p in bundle["entry"][0]["resource"]["parameter"] if p["name"] == "notification-event"
    ]
    assert [e["part"][0]["valueString"] for e in events] == ["2", "3"]
    assert all(len(e["part"]) == 2 for e in events)


async def test_numbering_and_delivery_survive_a_restart(
    tmp_path: Path, receiver: NotificationReceiver
) -> None:
    port = free_port()
    async with running_sandbox(tmp_path, port=port) as sandbox:
        sub_id = await _subscribe(
            sandbox, backport_subscription("observation-final", receiver.url + "/a")
        )
        await _wait_status(sandbox, sub_id, "active")
        await _observation(sandbox, "p1")
        await _observation(sandbox, "p1")
        await receiver.wait_for(lambda rs: sum(len(r.event_numbers) for r in rs) == 2)
    async with running_sandbox(tmp_path, port=port) as sandbox:
        await _observation(sandbox, "p1")
        await receiver.wait_for(lambda rs: sum(len(r.event_numbers) for r in rs) == 3)
        numbers = [n for r in receiver.requests for n in r.event_numbers]
        assert numbers == [1, 2, 3]
        assert len(receiver.of_type("handshake")) == 1


async def test_subscription_goes_off_when_its_end_passes(
    sandbox: RunningSandbox, receiver: NotificationReceiver
) -> None:
    # Far enough ahead that the handshake ends before it on a loaded machine (one second
    # was not: the Subscription went from requested to off and was never seen active).
    end = (datetime.now(UTC) + timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    resource = backport_subscription("observation-final", receiver.url + "/a") | {"end": end}
    sub_id = await _subscribe(sandbox, resource)
    await _wait_status(sandbox, sub_id, "active")
    await _wait_status(sandbox, sub_id, "off")
