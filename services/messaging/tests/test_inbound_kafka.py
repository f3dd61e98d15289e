"""Clinicians' replies and triage summaries, through a real broker, read back over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from contracts.base import SourceVersion
from contracts.message import MessageReceivedV1
from contracts.triage import TriageCompletedV1, Urgency
from devstack.topics import ensure_topics
from messaging.app import build
from messaging.settings import Settings
from servicekit.testing import eventually, isolated_settings, produce_events, serving_in_process

pytestmark = [pytest.mark.integration]
T = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


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
async def client(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    service = build(Settings(**isolated_settings(database_url, kafka_bootstrap, unique_prefix)))
    async with serving_in_process(service.app, "http://messaging") as http:
        yield http


async def test_clinician_reply_is_filed_once_in_its_thread(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    # The same Communication arriving twice (e.g. a re-published event) is filed once.
    await produce_events(
        kafka_bootstrap,
        [("pat-1", _reply("com-2")), ("pat-1", _reply("com-2")), ("pat-1", _reply("com-3"))],
        topic_prefix=unique_prefix,
    )

    async def filed() -> bool:
        threads = (await client.get("/patients/pat-1/threads")).json()
        if not threads:
            return False
        return (
            len((await client.get(f"/patients/pat-1/threads/{threads[0]['id']}/messages")).json())
            == 2
        )

    await eventually(filed, timeout=60)
    thread = (await client.get("/patients/pat-1/threads")).json()[0]
    assert (await client.get(f"/patients/pat-2/threads/{thread['id']}/messages")).status_code == 404


async def test_triage_summary_is_routed_to_the_pool_for_its_urgency(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    outcome = TriageCompletedV1(
        session_id="tri-1",
        patient_id="pat-1",
        urgency=Urgency.EMERGENCY,
        summary="emergency: Chest pain",
        rule_set_version="2026.11.1",
        recommended_pool="emergency",
        completed_at=T,
    )
    await produce_events(kafka_bootstrap, [("pat-1", outcome)], topic_prefix=unique_prefix)

    async def routed() -> bool:
        return bool((await client.get("/pools/urgent-nurses/items")).json())

    await eventually(routed, timeout=60)
    item = (await client.get("/pools/urgent-nurses/items")).json()[0]
    assert item["kind"] == "triage-summary"
    assert item["urgency"] == "emergency"
