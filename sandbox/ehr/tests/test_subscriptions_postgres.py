"""Subscriptions on PostgreSQL: event numbering, delivery and restart, over real HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
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
async def pg_url(postgres_url: str) -> AsyncIterator[str]:
    from devstack.postgres import create_database, drop_database

    name = f"sbxs_{uuid.uuid4().hex[:12]}"
    url = await create_database(name, postgres_url)
    try:
        yield url
    finally:
        await drop_database(name, postgres_url)


async def _observation(sandbox: RunningSandbox) -> None:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "pulse"},
        "subject": {"reference": "Patient/p1"},
    }
    response = await sandbox.admin.post("/fhir/Observation", json=resource, headers=FHIR_JSON)
    assert response.status_code == 201, response.text


async def test_numbering_survives_a_restart_on_postgres(tmp_path: Path, pg_url: str) -> None:
    port = free_port()
    async with NotificationReceiver(free_port()) as receiver:
        async with running_sandbox(tmp_path, port=port, database_url=pg_url) as sandbox:
            resource = backport_subscription("observation-final", receiver.url + "/hook")
            created = await sandbox.admin.post(
                "/fhir/Subscription", json=resource, headers=FHIR_JSON
            )
            assert created.status_code == 201, created.text
            sub_id = created.json()["id"]
            await receiver.wait_for(lambda rs: len(rs) == 1)
            for _ in range(100):
                status = (await sandbox.admin.get(f"/fhir/Subscription/{sub_id}")).json()
                if status["status"] == "active":
                    break
                await asyncio.sleep(0.05)
            await _observation(sandbox)
            await _observation(sandbox)
            await receiver.wait_for(lambda rs: sum(len(r.event_numbers) for r in rs) == 2)
        async with running_sandbox(tmp_path, port=port, database_url=pg_url) as sandbox:
            await _observation(sandbox)
            await receiver.wait_for(lambda rs: sum(len(r.event_numbers) for r in rs) == 3)
            events = (await sandbox.admin.get(f"/fhir/Subscription/{sub_id}/$events")).json()
            assert len(events["entry"]) == 4
        assert [n for r in receiver.requests for n in r.event_numbers] == [1, 2, 3]
