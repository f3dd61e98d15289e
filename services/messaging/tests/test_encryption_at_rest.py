"""Message text and attachments are encrypted in PostgreSQL's files, and keys rotate.

The proof reads the tables' files on disk: `VACUUM FULL` rewrites each table into a new
file written straight to disk (not left in shared buffers), then the bytes of that file are
searched. A row written before encryption existed (plaintext in the legacy column) is
found by the same search, so the search can fail; after re-encryption it is gone.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys

import asyncpg
import pytest

from devstack.topics import ensure_topics
from messaging.app import build
from messaging.settings import Settings
from servicekit.crypto import new_key
from servicekit.testing import (
    isolated_settings,
    read_topic,
    serving_in_process,
    table_file_bytes,
)

pytestmark = [pytest.mark.integration]
OPS = {"Authorization": "Bearer dev-ops-token"}
SUBJECT = "Zebra-subject-7f3a about my rash"
BODY = "Quokka-body-91c2: the rash on my arm is spreading"
PNG = b"\x89PNG\r\n\x1a\n" + b"Narwhal-image-5d0e" * 4
LEGACY = "Legacy-plaintext-c4b8 written before encryption"
# The kit's tables too: the outbox keeps the published event (with the body) for replay,
# the idempotency table the answer to the send (which echoes it).
TABLES = ("threads", "messages", "attachments", "pool_items", "outbox", "idempotency_keys")


def _settings(
    database_url: str, kafka_bootstrap: str, prefix: str, keys: dict[str, str], active: str
) -> Settings:
    return Settings(
        **isolated_settings(database_url, kafka_bootstrap, prefix),
        environment="test",
        encryption_keys=keys,
        encryption_active_key=active,
        triage_url="http://127.0.0.1:9",  # nothing listens: messages are flagged for review
        emergency_check_timeout_s=0.5,
    )


async def test_text_is_not_in_the_database_files_and_rotation_reencrypts_every_row(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    keys = {"2026-11": new_key()}
    first = build(_settings(database_url, kafka_bootstrap, unique_prefix, keys, "2026-11"))
    first_send = {
        "subject": SUBJECT,
        "body": BODY,
        "topic": "clinical-question",
        "attachments": [
            {
                "content_type": "image/png",
                "title": "Okapi-title-22aa.png",
                "data_base64": base64.b64encode(PNG).decode(),
            }
        ],
    }
    async with serving_in_process(first.app, "http://messaging") as client:
        sent = await client.post(
            "/patients/pat-1/threads", headers={"Idempotency-Key": "send-1"}, json=first_send
        )
        assert sent.status_code == 201, sent.text
        thread_id = sent.json()["thread"]["id"]
        # The relay opens the sealed payload: the care team's systems get the text.
        (published,) = await read_topic(
            kafka_bootstrap, f"{unique_prefix}message.sent", until=lambda seen: len(seen) >= 1
        )
        assert json.loads(published.value)["body"] == BODY
    # A row from before encryption existed: plaintext in the legacy column, no key id.
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        await conn.execute(
            "INSERT INTO messages (id, thread_id, patient_id, direction, body, sent_at) "
            "VALUES ('msg-legacy', $1, 'pat-1', 'inbound', $2, now())",
            thread_id,
            LEGACY,
        )
    finally:
        await conn.close()

    files = await table_file_bytes(database_url, TABLES)
    everything = b"".join(files.values())
    for secret in (SUBJECT, BODY, "Okapi-title-22aa", "Narwhal-image-5d0e", "Quokka", "Zebra"):
        assert secret.encode() not in everything, secret
    assert LEGACY.encode() in files["messages"]  # the search does find plaintext

    # Rotation: a new key becomes active, the old one stays in the ring for reading.
    keys["2026-12"] = new_key()
    second = build(_settings(database_url, kafka_bootstrap, unique_prefix, keys, "2026-12"))
    async with serving_in_process(second.app, "http://messaging") as client:
        path = f"/patients/pat-1/threads/{thread_id}/messages"
        bodies = {m["body"] for m in (await client.get(path)).json()}
        assert bodies == {BODY, LEGACY}
        before = (await client.get("/ops/encryption", headers=OPS)).json()
        assert before["active_key_id"] == "2026-12"
        assert before["not_on_active_key"] == {
            "threads": 1,
            "messages": 2,
            "attachments": 1,
            "pool_items": 1,
            "outbox": 1,
            "idempotency_keys": 1,
            "dead_letters": 0,
            "parked_messages": 0,
        }
        assert (await client.post("/ops/encryption/reencrypt")).status_code == 401
        run = (await client.post("/ops/encryption/reencrypt", headers=OPS)).json()
        assert run["reencrypted"] == before["not_on_active_key"]
        assert set(run["not_on_active_key"].values()) == {0}
        again = (await client.post("/ops/encryption/reencrypt", headers=OPS)).json()
        assert set(again["reencrypted"].values()) == {0}
        # A retry of the first send is still answered (its stored answer re-wrapped).
        retry = await client.post(
            "/patients/pat-1/threads", headers={"Idempotency-Key": "send-1"}, json=first_send
        )
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.json()["message"]["body"] == BODY
        # New rows use the new key.
        await client.post(path, json={"body": "after rotation"})

    # The old key is retired: everything still opens with the new one alone.
    retired = {"2026-12": keys["2026-12"]}
    third = build(_settings(database_url, kafka_bootstrap, unique_prefix, retired, "2026-12"))
    async with serving_in_process(third.app, "http://messaging") as client:
        messages = (await client.get(f"/patients/pat-1/threads/{thread_id}/messages")).json()
        assert {m["body"] for m in messages} == {BODY, LEGACY, "after rotation"}
        threads = (await client.get("/patients/pat-1/threads")).json()
        assert threads[0]["subject"] == SUBJECT
        attachment = next(m for m in messages if m["attachments"])["attachments"][0]
        assert attachment["title"] == "Okapi-title-22aa.png"
        content = await client.get(f"/patients/pat-1/attachments/{attachment['id']}")
        assert content.content == PNG
        assert content.headers["content-type"] == "image/png"
    files = await table_file_bytes(database_url, TABLES)
    assert LEGACY.encode() not in b"".join(files.values())

    # The same report from the operator command, with the keys from the environment.
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "ENCRYPTION_KEYS": json.dumps(retired),
        "ENCRYPTION_ACTIVE_KEY": "2026-12",
        "ENVIRONMENT": "prod",
        # Production refuses development secrets (servicekit.secrets).
        "OPS_TOKEN": "an-ops-token-for-this-test-only",
        "SERVICE_TOKEN_KEY": "a-service-token-key-for-this-test-only",
        "LOG_LEVEL": "WARNING",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "messaging", "reencrypt"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["active_key_id"] == "2026-12"
    assert set(report["reencrypted"].values()) == {0}
    assert set(report["not_on_active_key"].values()) == {0}
