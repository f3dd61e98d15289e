"""Triage's outbox without a broker: a completed session writes exactly one
`triage.completed` in the transaction that completes it; a refused change writes none.
(`test_api.py` reads the same event back from Kafka.)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select

from servicekit import sealing
from servicekit.app import Service
from servicekit.tables import OutboxRow
from servicekit.testing import broker_less_settings, serving_in_process
from triage.app import build
from triage.settings import Settings


@pytest.fixture
async def triage(database_url: str) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    service = build(Settings(**broker_less_settings(database_url)))
    async with serving_in_process(service.app, "http://triage") as client:
        yield service, client


async def _outbox(service: Service) -> list[OutboxRow]:
    async with service.db.sessions() as session:
        return list((await session.execute(select(OutboxRow).order_by(OutboxRow.id))).scalars())


async def test_a_completed_session_is_published_once_through_the_outbox(
    triage: tuple[Service, httpx.AsyncClient],
) -> None:
    service, client = triage
    started = await client.post(
        "/patients/pat-7/sessions",
        json={"age": 34, "sex": "female", "text": "I have a headache and feel hot"},
    )
    sid = started.json()["session_id"]
    assert await _outbox(service) == []  # an open session is not news yet
    answered = await client.post(
        f"/patients/pat-7/sessions/{sid}/answers", json={"answers": {"ha-neck": True}}
    )
    assert answered.json()["status"] == "completed"
    again = await client.post(
        f"/patients/pat-7/sessions/{sid}/answers", json={"answers": {"ha-fever": True}}
    )
    assert again.status_code == 409

    (row,) = await _outbox(service)
    assert row.topic == "triage.completed"
    assert row.key == "pat-7"
    # Sealed at rest (the symptoms are the patient's words); the relay opens it.
    assert row.payload.startswith(sealing.PREFIX)
    event = json.loads(
        sealing.unseal(service.outbox.cipher, row.payload, sealing.outbox_aad(row.event_id))
    )
    assert (event["session_id"], event["urgency"]) == (sid, "emergency")
