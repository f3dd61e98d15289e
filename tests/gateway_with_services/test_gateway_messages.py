"""The patient sends a message through the gateway: a real messaging service behind it,
tokens from the sandbox's dev issuer; the message is stored and published for the token's
patient, whatever the client claims."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from devstack.topics import ensure_topics
from ehr_sandbox.testing.http import free_port, running_sandbox
from gateway import audit
from gateway.api.access import Caller
from gateway.api.messages import may_send
from gateway.auth import PatientToken
from messaging.app import build as build_messaging
from messaging.settings import Settings as MessagingSettings
from servicekit.app import Service
from servicekit.testing import (
    isolated_settings,
    read_topic,
    service_auth_for,
    serving_in_process,
)

from .services import gateway_service

pytestmark = [pytest.mark.integration]


@dataclass
class Stack:
    gateway: Service
    client: httpx.AsyncClient
    messaging: httpx.AsyncClient
    sandbox_admin: httpx.AsyncClient
    prefix: str


@pytest.fixture
async def stack(
    tmp_path: Path,
    database_factory: Callable[[], Awaitable[str]],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> AsyncIterator[Stack]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    dbs = {name: await database_factory() for name in ("gateway", "messaging")}
    async with running_sandbox(tmp_path, port=free_port()) as sandbox:
        messaging = build_messaging(
            MessagingSettings(
                **isolated_settings(dbs["messaging"], kafka_bootstrap, unique_prefix),
                triage_url="http://127.0.0.1:9",  # nothing listens: flagged for review
                emergency_check_timeout_s=0.5,
                rate_limit_messages=4,
            )
        )
        gateway = gateway_service(
            dbs["gateway"],
            kafka_bootstrap,
            unique_prefix,
            issuer=sandbox.url,
            messaging_url="http://messaging",
            mounts={"http://messaging": httpx.ASGITransport(app=messaging.app)},
        )
        async with (
            LifespanManager(messaging.app, startup_timeout=60, shutdown_timeout=60),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=messaging.app),
                base_url="http://messaging",
                auth=service_auth_for(messaging.app),
            ) as messaging_client,
            serving_in_process(gateway.app, "http://gateway") as client,
        ):
            yield Stack(gateway, client, messaging_client, sandbox.admin, unique_prefix)


async def _token(stack: Stack, patient: str) -> dict[str, str]:
    put = await stack.sandbox_admin.put(
        f"/fhir/Patient/{patient}",
        json={"resourceType": "Patient", "id": patient, "name": [{"family": "Example"}]},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert put.status_code in (200, 201), put.text
    response = await stack.sandbox_admin.post("/dev/patient-token", json={"patient": patient})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def test_a_message_sent_through_the_gateway_is_the_tokens_patients(
    stack: Stack, kafka_bootstrap: str
) -> None:
    client = stack.client
    ann, bob = await _token(stack, "p-ann"), await _token(stack, "p-bob")
    ann_id = (await client.get("/v1/me", headers=ann)).json()["patient_id"]
    bob_id = (await client.get("/v1/me", headers=bob)).json()["patient_id"]

    assert (
        await client.post("/v1/me/threads", json={"subject": "a", "body": "b"})
    ).status_code == 401

    # A patient id in the body is not the gateway's to take: the token decides.
    new = {"subject": "Knee pain", "body": "It hurts on stairs.", "patient_id": bob_id}
    headers = {**ann, "Idempotency-Key": "7d0c-first-send"}
    sent = await client.post("/v1/me/threads", json=new, headers=headers)
    assert sent.status_code == 201, sent.text
    retried = await client.post("/v1/me/threads", json=new, headers=headers)
    assert retried.status_code == 201
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json()["message"]["id"] == sent.json()["message"]["id"]
    # The same key for another message is refused (422), and nothing is sent.
    other = {"subject": "Knee pain", "body": "Something else."}
    assert (await client.post("/v1/me/threads", json=other, headers=headers)).status_code == 422
    thread_id = sent.json()["thread"]["id"]

    assert [t["id"] for t in (await stack.messaging.get(f"/patients/{ann_id}/threads")).json()] == [
        thread_id
    ]
    assert (await stack.messaging.get(f"/patients/{bob_id}/threads")).json() == []
    listed = (await client.get("/v1/me/threads", headers=ann)).json()
    assert [t["id"] for t in listed] == [thread_id]

    reply = await client.post(
        f"/v1/me/threads/{thread_id}/messages", json={"body": "Also swelling."}, headers=ann
    )
    assert reply.status_code == 201, reply.text
    read = await client.post(f"/v1/me/threads/{thread_id}/read", headers=ann)
    assert read.json() == {"thread_id": thread_id, "marked": 0}

    # Another patient can neither reply in nor mark Ann's thread.
    for path in (f"/v1/me/threads/{thread_id}/messages", f"/v1/me/threads/{thread_id}/read"):
        response = await client.post(path, json={"body": "Not mine"}, headers=bob)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
    invalid = await client.post("/v1/me/threads", json={"subject": "x", "body": ""}, headers=ann)
    assert invalid.status_code == 422
    assert invalid.headers["content-type"].startswith("application/problem+json")

    records = await read_topic(
        kafka_bootstrap, f"{stack.prefix}message.sent", until=lambda seen: len(seen) >= 2
    )
    assert len(records) == 2
    assert {r.key for r in records} == {ann_id}
    payloads = [json.loads(r.value) for r in records]
    assert {p["patient_id"] for p in payloads} == {ann_id}
    assert [p["body"] for p in payloads] == ["It hurts on stairs.", "Also swelling."]

    log = (await client.get("/v1/me/access-log", headers=ann)).json()
    writes = [e for e in log if e["action"] == "write"]
    assert len(writes) == 4  # start, its retry, reply, mark read
    assert {e["resource"] for e in writes} == {"Communication"}
    assert (await audit.verify(stack.gateway)).intact


async def test_topics_attachments_limits_and_unread_through_the_gateway(stack: Stack) -> None:
    client = stack.client
    ann = await _token(stack, "p-ann")
    # The topics route declares its scope like every /v1 route: a token is needed.
    assert (await client.get("/v1/message-topics")).status_code == 401
    topics = (await client.get("/v1/message-topics", headers=ann)).json()
    assert {"code": "billing", "label": "Billing and insurance", "sent_to": "billing office"} in (
        topics
    )
    png = b"\x89PNG\r\n\x1a\n" + b"\x07" * 32
    new = {
        "subject": "Invoice",
        "body": "Is this right?",
        "topic": "billing",
        "attachments": [
            {
                "content_type": "image/png",
                "title": "bill.png",
                "data_base64": base64.b64encode(png).decode(),
            }
        ],
    }
    sent = await client.post("/v1/me/threads", json=new, headers=ann)
    assert sent.status_code == 201, sent.text
    body = sent.json()
    assert body["thread"]["sent_to"] == "billing office"
    assert body["emergency_check"]["checked"] is False  # triage unreachable: still sent
    assert "911" in body["emergency_check"]["advice"]
    attachment_id = body["message"]["attachments"][0]["id"]
    got = await client.get(f"/v1/me/attachments/{attachment_id}", headers=ann)
    assert (got.status_code, got.content) == (200, png)
    bob = await _token(stack, "p-bob")
    assert (await client.get(f"/v1/me/attachments/{attachment_id}", headers=bob)).status_code == (
        404
    )
    html = {**new, "attachments": [{**new["attachments"][0], "content_type": "text/html"}]}  # type: ignore[dict-item]
    assert (await client.post("/v1/me/threads", json=html, headers=ann)).status_code == 415
    path = f"/v1/me/threads/{body['thread']['id']}/messages"
    for _ in range(3):
        assert (await client.post(path, json={"body": "more"}, headers=ann)).status_code == 201
    limited = await client.post(path, json={"body": "too many"}, headers=ann)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) > 0
    summary = (await client.get("/v1/me/summary", headers=ann)).json()
    assert summary["unread_messages"] == 0
    assert summary["threads"][0]["unread"] == 0


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        ("patient/*.rs", False),  # read/search grant no create (exact permissions)
        ("patient/*.rs patient/Communication.cu", True),  # the dev issuer's sign-in token
        ("patient/Communication.c", True),
        ("patient/*.cruds", True),
        ("patient/Communication.write", True),
        ("patient/Observation.rs", False),
        ("patient/Communication.rs", False),
        ("user/*.cruds", False),
        ("", False),
    ],
)
def test_who_may_send(scopes: str, allowed: bool) -> None:
    token = PatientToken("p-ann", "p-ann", frozenset(scopes.split()))
    assert may_send(Caller("pat-1", token)) is allowed
