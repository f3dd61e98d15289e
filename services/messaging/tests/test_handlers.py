"""Messaging's handlers without a broker (`servicekit.testing.deliver`: the consumer's own
path, on a real PostgreSQL); `test_inbound_kafka.py` runs the same through Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from contracts.base import SourceVersion
from contracts.message import MessageReceivedV1, MessageSyncedV1
from contracts.triage import TriageCompletedV1, Urgency
from messaging import store
from messaging.app import build
from messaging.settings import Settings
from servicekit.app import Service
from servicekit.testing import broker_less_settings, deliver, deliver_batch, serving_in_process

T = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def _version(comm: str, version: str) -> SourceVersion:
    return SourceVersion(
        resource_type="Communication",
        fhir_id=comm,
        version_id=version,
        last_updated=T + timedelta(minutes=int(version)),
    )


def _reply(
    comm: str, version: str = "1", body: str = "Your results look fine."
) -> MessageReceivedV1:
    return MessageReceivedV1(
        patient_id="pat-1",
        communication_fhir_id=comm,
        thread_fhir_id="com-1",
        in_reply_to_fhir_id="com-1",
        sender_display="Dr Adams",
        body=body,
        sent_at=T,
        source=_version(comm, version),
    )


def _imported(comm: str, version: str) -> MessageSyncedV1:
    return MessageSyncedV1(
        patient_id="pat-1",
        communication_fhir_id=comm,
        thread_fhir_id="com-1",
        in_reply_to_fhir_id="com-1",
        from_patient=False,
        sender_display="Dr Adams",
        body="Your results look fine.",
        status="completed",
        sent_at=T,
        imported=True,
        source=_version(comm, version),
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


async def test_a_live_change_waits_for_a_back_fill_batch_of_the_same_patient_in_flight(
    messaging: tuple[Service, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two consumers (`message.received`, `message.synced`) write one conversation: a
    back-fill batch that read a message (version 2) and had not flushed yet, while the live
    change (version 3) committed, wrote its older version over the live one. A
    conversation's writers take turns (`turns`)."""
    service, _ = messaging
    assert await deliver(service, _reply("com-2", "1"), subject="pat-1") == "handled"
    # The back-fill batch stops at its second event, holding version 2 of com-2 unflushed.
    paused, resume = asyncio.Event(), asyncio.Event()
    lookup = store.message_by_fhir_id

    async def pausing(session: store.AsyncSession, fhir_id: str) -> store.Message | None:
        if fhir_id == "com-9":
            paused.set()
            await resume.wait()
        return await lookup(session, fhir_id)

    monkeypatch.setattr(store, "message_by_fhir_id", pausing)
    back_fill = asyncio.ensure_future(
        deliver_batch(
            service, [("pat-1", _imported("com-2", "2")), ("pat-1", _imported("com-9", "1"))]
        )
    )
    await asyncio.wait_for(paused.wait(), timeout=10)
    live = asyncio.ensure_future(
        deliver(service, _reply("com-2", "3", "Amended: all fine."), subject="pat-1")
    )
    done, _ = await asyncio.wait({live}, timeout=1.0)
    resume.set()
    assert await back_fill == ["handled", "handled"]
    assert await live == "handled"
    async with service.db.sessions() as session:
        message = await lookup(session, "com-2")
    assert message is not None
    assert message.source_version == "3"
    assert not done, "the live change did not wait for the back-fill batch"


async def test_a_patients_reply_waits_for_a_care_team_answer_of_the_same_patient_in_flight(
    messaging: tuple[Service, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `message.received` consumer and the patient's send both set a thread's last
    activity from what they read: the consumer read the thread, the patient's reply
    committed, then the consumer wrote its older time over the reply's (the thread sorted
    below older ones). The patient's sends take turns with the consumers."""
    service, client = messaging
    assert await deliver(service, _reply("com-2"), subject="pat-1") == "handled"
    (thread,) = (await client.get("/patients/pat-1/threads")).json()
    paused, resume = asyncio.Event(), asyncio.Event()
    lookup = store.message_by_fhir_id

    async def pausing(session: store.AsyncSession, fhir_id: str) -> store.Message | None:
        if fhir_id == "com-1" and not paused.is_set():
            paused.set()  # the thread is loaded: this looks up the message it answers
            await resume.wait()
        return await lookup(session, fhir_id)

    monkeypatch.setattr(store, "message_by_fhir_id", pausing)
    answer = _reply("com-3").model_copy(update={"sent_at": T + timedelta(hours=1)})
    live = asyncio.ensure_future(deliver(service, answer, subject="pat-1"))
    await asyncio.wait_for(paused.wait(), timeout=10)
    path = f"/patients/pat-1/threads/{thread['id']}/messages"
    send = asyncio.ensure_future(client.post(path, json={"body": "Thanks, all clear then?"}))
    done, _ = await asyncio.wait({send}, timeout=1.0)
    resume.set()
    assert await live == "handled"
    sent = await send
    assert sent.status_code == 201, sent.text
    (after,) = (await client.get("/patients/pat-1/threads")).json()
    assert datetime.fromisoformat(after["updated_at"]) > T + timedelta(days=1)
    assert not done, "the reply did not wait for the care team's answer"
