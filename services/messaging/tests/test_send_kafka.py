"""A patient sends messages: stored, published as `message.sent` through the outbox on a
real broker (read back from the topic), threaded after the care team's latest reply."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from contracts.base import SourceVersion
from contracts.message import MessageReceivedV1
from devstack.topics import ensure_topics
from messaging.app import build
from messaging.settings import Settings
from servicekit.testing import (
    Seen,
    eventually,
    isolated_settings,
    produce_events,
    read_topic,
    serving_in_process,
)

pytestmark = [pytest.mark.integration]
T = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


@pytest.fixture
async def client(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    service = build(Settings(**isolated_settings(database_url, kafka_bootstrap, unique_prefix)))
    async with serving_in_process(service.app, "http://messaging") as http:
        yield http


async def _sent(bootstrap: str, prefix: str, count: int) -> list[Seen]:
    return await read_topic(
        bootstrap, f"{prefix}message.sent", until=lambda seen: len(seen) >= count, timeout=60
    )


def _payload(record: Seen) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(record.value)
    return data


async def test_new_thread_and_reply_publish_message_sent_threaded_after_the_clinician(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    started = await client.post(
        "/patients/pat-1/threads",
        json={"subject": "Prescription refill", "body": "I need more metformin."},
    )
    assert started.status_code == 201, started.text
    thread = started.json()["thread"]
    assert thread["pool"] == "prescriptions"
    assert started.json()["message"]["direction"] == "outbound"

    # The clinician answers in the EHR; the connector publishes it with the thread's id.
    await produce_events(
        kafka_bootstrap,
        [
            (
                "pat-1",
                MessageReceivedV1(
                    patient_id="pat-1",
                    communication_fhir_id="com-reply-1",
                    thread_id=thread["id"],
                    thread_fhir_id="com-first",
                    in_reply_to_fhir_id="com-first",
                    sender_display="Dr Adams",
                    body="Sent to your pharmacy.",
                    sent_at=T,
                    source=SourceVersion(
                        resource_type="Communication",
                        fhir_id="com-reply-1",
                        version_id="1",
                        last_updated=T,
                    ),
                ),
            )
        ],
        topic_prefix=unique_prefix,
    )

    async def filed() -> bool:
        messages = (await client.get(f"/patients/pat-1/threads/{thread['id']}/messages")).json()
        return len(messages) == 2

    await eventually(filed, timeout=60)
    replied = await client.post(
        f"/patients/pat-1/threads/{thread['id']}/messages", json={"body": "Thank you!"}
    )
    assert replied.status_code == 201, replied.text

    records = await _sent(kafka_bootstrap, unique_prefix, 2)
    assert len(records) == 2
    first, second = (_payload(r) for r in records)
    assert all(r.key == "pat-1" for r in records)
    assert all(r.headers["ce_type"] == "message.sent" for r in records)
    assert records[0].headers["ce_subject"] == "pat-1"
    assert first["thread_id"] == second["thread_id"] == thread["id"]
    assert first["message_id"] == started.json()["message"]["id"]
    assert first["recipient_pool"] == "prescriptions"
    assert first["subject"] == "Prescription refill"
    assert first["body"] == "I need more metformin."
    assert first["in_reply_to_fhir_id"] is None
    assert first["thread_fhir_id"] is None  # the connector files it as the thread's first
    assert second["message_id"] == replied.json()["message"]["id"]
    assert second["in_reply_to_fhir_id"] == "com-reply-1"
    assert second["subject"] == "Prescription refill"
    assert second["body"] == "Thank you!"

    # Reading the thread marks the clinician's message read, once.
    read = await client.post(f"/patients/pat-1/threads/{thread['id']}/read")
    assert read.json() == {"thread_id": thread["id"], "marked": 1}
    again = await client.post(f"/patients/pat-1/threads/{thread['id']}/read")
    assert again.json()["marked"] == 0
    messages = (await client.get(f"/patients/pat-1/threads/{thread['id']}/messages")).json()
    assert all(m["read"] for m in messages)


async def test_a_retried_send_with_the_same_idempotency_key_sends_once(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    new = {"subject": "Question", "body": "Can I take ibuprofen?"}
    headers = {"Idempotency-Key": "b1f4c0de-0001"}
    first = await client.post("/patients/pat-1/threads", json=new, headers=headers)
    retry = await client.post("/patients/pat-1/threads", json=new, headers=headers)
    # The retry gets the first answer again, status included, marked as a replay.
    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry.json() == first.json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    thread_id = first.json()["thread"]["id"]
    assert first.json()["thread"]["pool"] == "care-team"

    reply_headers = {"Idempotency-Key": "b1f4c0de-0002"}
    path = f"/patients/pat-1/threads/{thread_id}/messages"
    one = await client.post(path, json={"body": "With food?"}, headers=reply_headers)
    two = await client.post(path, json={"body": "With food?"}, headers=reply_headers)
    assert (one.status_code, two.status_code) == (201, 201)
    assert one.json()["message"]["id"] == two.json()["message"]["id"]
    # The same key for a different message is a client's mistake, not a silent replay;
    # so is a key of a new thread reused for a reply.
    other = await client.post(path, json={"body": "Something else"}, headers=reply_headers)
    assert other.status_code == 422
    assert other.headers["content-type"].startswith("application/problem+json")
    reused = await client.post(path, json={"body": "With food?"}, headers=headers)
    assert reused.status_code == 422

    assert len((await client.get("/patients/pat-1/threads")).json()) == 1
    assert len((await client.get(path)).json()) == 2
    # A third, unrelated send marks the end of what the relay published.
    await client.post("/patients/pat-1/threads", json={"subject": "End", "body": "."})
    records = await _sent(kafka_bootstrap, unique_prefix, 3)
    assert [_payload(r)["subject"] for r in records] == ["Question", "Question", "End"]


async def test_another_patients_thread_is_not_found_and_bad_input_is_a_problem(
    client: httpx.AsyncClient,
) -> None:
    started = await client.post("/patients/pat-1/threads", json={"subject": "Hi", "body": "Hello"})
    thread_id = started.json()["thread"]["id"]
    for path in (f"/threads/{thread_id}/messages", f"/threads/{thread_id}/read"):
        response = await client.post(f"/patients/pat-2{path}", json={"body": "Not mine"})
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
    assert (await client.post("/patients/pat-1/threads/th-nope/read")).status_code == 404

    invalid: list[tuple[str, Any]] = [
        ("/patients/pat-1/threads", {"subject": "", "body": "x"}),
        ("/patients/pat-1/threads", {"subject": "s" * 201, "body": "x"}),
        ("/patients/pat-1/threads", {"subject": "ok", "body": "   "}),
        ("/patients/pat-1/threads", {"subject": "ok"}),
        (f"/patients/pat-1/threads/{thread_id}/messages", {"body": "b" * 10_001}),
        (f"/patients/pat-1/threads/{thread_id}/messages", {"body": 42}),
    ]
    for path, body in invalid:
        response = await client.post(path, json=body)
        assert response.status_code == 422, (path, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    bad_key = await client.post(
        "/patients/pat-1/threads",
        json={"subject": "ok", "body": "ok"},
        headers={"Idempotency-Key": "k" * 201},
    )
    assert bad_key.status_code == 422
