"""Messaging's handlers without a broker (`servicekit.testing.deliver`: the consumer's own
path, on a real PostgreSQL); `test_inbound_kafka.py` runs the same through Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from contracts.base import SourceVersion
from contracts.message import MessageReceivedV1
from contracts.triage import TriageCompletedV1, Urgency
from messaging.app import build
from messaging.settings import Settings
from servicekit.app import Service
from servicekit.testing import broker_less_settings, deliver, serving_in_process

T = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def _reply(comm: str) -> MessageReceivedV1:
    return MessageReceivedV1(
        patient_id="pat-1",
        communication_fhir_id=comm,
        thread_fhir_id="com-1",
        in_reply_to_fhir_id="com-1",
        sender_display="Dr Adams",
        body="Your results look fine.",
        sent_at=T,
        source=SourceVersion(
            resource_type="Communication", fhir_id=comm, version_id="1", last_updated=T
        ),
    )


@pytest.fixture
async def messaging(database_url: str) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    service = build(Settings(**broker_less_settings(database_url)))
    async with serving_in_process(service.app, "http://messaging") as client:
        yield service, client


async def test_a_clinician_reply_arriving_twice_is_filed_once(
    messaging: tuple[Service, httpx.AsyncClient],
) -> None:
    service, client = messaging
    # Two events for one Communication (a re-publish: new event ids), then another reply.
    for comm in ("com-2", "com-2", "com-3"):
        assert await deliver(service, _reply(comm), subject="pat-1") == "handled"
    (thread,) = (await client.get("/patients/pat-1/threads")).json()
    messages = (await client.get(f"/patients/pat-1/threads/{thread['id']}/messages")).json()
    assert len(messages) == 2


async def test_an_emergency_triage_summary_goes_to_the_urgent_pool(
    messaging: tuple[Service, httpx.AsyncClient],
) -> None:
    service, client = messaging
    outcome = TriageCompletedV1(
        session_id="tri-1",
        patient_id="pat-1",
        urgency=Urgency.EMERGENCY,
        summary="emergency: Chest pain",
        rule_set_version="2026.11.1",
        recommended_pool="emergency",
        completed_at=T,
    )
    assert await deliver(service, outcome, subject="pat-1") == "handled"
    (item,) = (await client.get("/pools/urgent-nurses/items")).json()
    assert (item["kind"], item["urgency"]) == ("triage-summary", "emergency")
