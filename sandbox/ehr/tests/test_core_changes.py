"""The change feed: one event per committed write, in order, robust to listener failures."""

from __future__ import annotations

import asyncio

from ehr_sandbox.fhir.changes import ChangeFeed, ResourceChange
from ehr_sandbox.testing import FHIR_JSON, Sandbox, patient


def _feed(sandbox: Sandbox) -> ChangeFeed:
    feed: ChangeFeed = sandbox.app.state.change_feed
    return feed


async def test_create_update_delete_events(sandbox: Sandbox) -> None:
    seen: list[ResourceChange] = []

    async def listener(change: ResourceChange) -> None:
        seen.append(change)

    _feed(sandbox).subscribe(listener)
    created = await sandbox.create(patient(family="Feed"))
    # The write returns only after the listeners have seen it.
    assert [c.interaction for c in seen] == ["create"]
    url = f"/fhir/Patient/{created['id']}"
    await sandbox.client.put(url, json={**created, "active": True}, headers=FHIR_JSON)
    await sandbox.client.delete(url)
    assert [(c.interaction, c.version_id) for c in seen] == [
        ("create", "1"),
        ("update", "2"),
        ("delete", "3"),
    ]
    create, update, remove = seen
    assert create.previous is None
    assert create.resource == created
    assert (create.resource_type, create.id) == ("Patient", created["id"])
    assert update.previous == created
    assert update.resource["active"] is True
    assert remove.previous == update.resource
    assert remove.resource["meta"]["versionId"] == "3"
    assert create.occurred_at < update.occurred_at < remove.occurred_at
    assert create.occurred_at.tzinfo is not None


async def test_rejected_and_no_op_writes_are_not_events(sandbox: Sandbox) -> None:
    seen: list[ResourceChange] = []

    async def listener(change: ResourceChange) -> None:
        seen.append(change)

    body = patient(identifier=[{"system": "urn:x", "value": "1"}])
    condition = {**FHIR_JSON, "If-None-Exist": "identifier=urn:x|1"}
    await sandbox.client.post("/fhir/Patient", json=body, headers=condition)
    _feed(sandbox).subscribe(listener)
    assert (
        await sandbox.client.post("/fhir/Patient", json=body, headers=condition)
    ).status_code == 200
    assert (
        await sandbox.client.post(
            "/fhir/Patient", json={"resourceType": "Patient", "x": 1}, headers=FHIR_JSON
        )
    ).status_code == 422
    assert (await sandbox.client.delete("/fhir/Patient/never-existed")).status_code == 204
    assert seen == []


async def test_a_failing_listener_does_not_fail_the_write(sandbox: Sandbox) -> None:
    seen: list[str] = []

    async def broken(change: ResourceChange) -> None:
        raise RuntimeError("listener bug")

    async def healthy(change: ResourceChange) -> None:
        seen.append(change.id)

    _feed(sandbox).subscribe(broken)
    _feed(sandbox).subscribe(healthy)
    response = await sandbox.client.post("/fhir/Patient", json=patient(), headers=FHIR_JSON)
    assert response.status_code == 201
    assert seen == [response.json()["id"]]


async def test_a_listener_may_write_without_deadlock(sandbox: Sandbox) -> None:
    order: list[str] = []
    store = sandbox.app.state.store

    async def audit(change: ResourceChange) -> None:
        order.append(f"{change.resource_type}/{change.interaction}")
        if change.resource_type == "Patient":
            task = {
                "resourceType": "Task",
                "status": "requested",
                "intent": "order",
                "for": {"reference": f"Patient/{change.id}"},
            }
            await store.create("Task", task)

    _feed(sandbox).subscribe(audit)
    await asyncio.wait_for(sandbox.create(patient()), timeout=5)
    await _feed(sandbox).drain()
    assert order == ["Patient/create", "Task/create"]


async def test_concurrent_writes_are_delivered_in_commit_order(sandbox: Sandbox) -> None:
    versions: list[int] = []
    created = await sandbox.create(patient())

    async def listener(change: ResourceChange) -> None:
        versions.append(int(change.version_id))

    _feed(sandbox).subscribe(listener)
    url = f"/fhir/Patient/{created['id']}"
    await asyncio.gather(
        *(sandbox.client.put(url, json=created, headers=FHIR_JSON) for _ in range(10))
    )
    assert versions == list(range(2, 12))


async def test_unsubscribe_stops_delivery(sandbox: Sandbox) -> None:
    seen: list[str] = []

    async def listener(change: ResourceChange) -> None:
        seen.append(change.id)

    unsubscribe = _feed(sandbox).subscribe(listener)
    await sandbox.create(patient())
    unsubscribe()
    await sandbox.create(patient())
    assert len(seen) == 1
