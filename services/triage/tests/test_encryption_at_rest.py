"""The patient's words are encrypted in PostgreSQL's files (the text, the flags' evidence
that quotes it, the answers), and keys rotate.

The proof reads the table's files on disk (`servicekit.testing.table_file_bytes`). A row
written before encryption (plaintext in the legacy column) is found by the same search, so
the search can fail; after re-encryption it is gone.
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from devstack.topics import ensure_topics
from servicekit.crypto import new_key
from servicekit.testing import isolated_settings, serving_in_process, table_file_bytes
from triage.app import build
from triage.settings import Settings

pytestmark = [pytest.mark.integration]
OPS = {"Authorization": "Bearer dev-ops-token"}
WORDS = "Pangolin-4e1d crushing chest pain spreading to my left arm"
LEGACY = "Legacy-triage-9b7c a sore throat since Monday"


def _settings(
    database_url: str, bootstrap: str, prefix: str, keys: dict[str, str], active: str
) -> Settings:
    return Settings(
        **isolated_settings(database_url, bootstrap, prefix),
        environment="test",
        encryption_keys=keys,
        encryption_active_key=active,
    )


async def _outbox_rows(database_url: str) -> list[dict[str, object]]:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT id, topic, key_id, status, created_at, sent_at FROM outbox ORDER BY id"
        )
    finally:
        await conn.close()
    return [dict(r) for r in rows]


async def test_the_patients_words_are_not_in_the_database_files_and_keys_rotate(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    keys = {"2026-11": new_key()}
    first = build(_settings(database_url, kafka_bootstrap, unique_prefix, keys, "2026-11"))
    async with serving_in_process(first.app, "http://triage") as client:
        assessed = await client.post(
            "/patients/pat-1/assess", json={"age": 60, "sex": "male", "text": WORDS}
        )
        assert assessed.status_code == 201, assessed.text
        started = await client.post(
            "/patients/pat-1/sessions",
            json={"age": 34, "sex": "female", "text": "Okapi-77aa I have a headache and feel hot"},
        )
        session_id = started.json()["session_id"]
        answered = await client.post(
            f"/patients/pat-1/sessions/{session_id}/answers", json={"answers": {"ha-neck": False}}
        )
        assert answered.status_code == 200, answered.text
        # Read back in clear through the API: the flag's evidence quotes the patient.
        shown = await client.get(f"/patients/pat-1/sessions/{assessed.json()['session_id']}")
        evidence = [e["text"] for f in shown.json()["flags"] for e in f["evidence"]]
        assert "crushing" in evidence
        assert (await client.get(f"/patients/pat-1/sessions/{session_id}")).json()["answers"] == {
            "ha-neck": False
        }

    # The kit's outbox too: the published event carries the summary and its evidence.
    # One row, under the first key (once, CI counted none at the rotation below: this says
    # whether it was missing already here, and what the rows were).
    outbox = await _outbox_rows(database_url)
    assert [(r["topic"], r["key_id"]) for r in outbox] == [
        (f"{unique_prefix}triage.completed", "2026-11")
    ], outbox
    files = await table_file_bytes(database_url, ["triage_sessions", "outbox"])
    # (The findings' codes and names, e.g. "Chest pain", are not the patient's words.)
    for secret in ("Pangolin-4e1d", "crushing chest pain spreading", "Okapi-77aa"):
        assert secret.encode() not in b"".join(files.values()), secret

    # A row from before encryption: plaintext in the legacy column, still readable.
    legacy_id = f"tri-legacy-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(
            "INSERT INTO triage_sessions (id, patient_id, age, sex, text, urgency, findings,"
            " matched_rules, recommended_pool, rule_set_version, completed_at, status,"
            " answers, flags, questions, advice, started_at) VALUES ($1, 'pat-1', 30, 'female',"
            " $2, 'routine', '[]', '[]', 'primary', '2026.11', now(), 'completed', '{}', '[]',"
            " '[]', 'See your GP', now())",
            legacy_id,
            LEGACY,
        )
    finally:
        await conn.close()
    assert (
        LEGACY.encode()
        in (await table_file_bytes(database_url, ["triage_sessions"]))["triage_sessions"]
    )

    # Rotation: a new active key; old rows stay readable; re-encryption brings all to it.
    keys["2026-12"] = new_key()
    second = build(_settings(database_url, kafka_bootstrap, unique_prefix, keys, "2026-12"))
    async with serving_in_process(second.app, "http://triage") as client:
        legacy = (await client.get(f"/patients/pat-1/sessions/{legacy_id}")).json()
        assert legacy["urgency"] == "routine"
        before = (await client.get("/ops/encryption", headers=OPS)).json()
        # The kit's outbox holds the completed session's event (sealed too).
        rows = await _outbox_rows(database_url)
        assert before["not_on_active_key"] == {
            "triage_sessions": 3,
            "outbox": 1,
            "idempotency_keys": 0,
            "dead_letters": 0,
            "parked_messages": 0,
        }, rows
        assert (await client.post("/ops/encryption/reencrypt")).status_code == 401
        run = (await client.post("/ops/encryption/reencrypt", headers=OPS)).json()
        assert run["reencrypted"] == before["not_on_active_key"]
        assert set(run["not_on_active_key"].values()) == {0}

    # The old key retired: everything opens with the new one alone.
    retired = {"2026-12": keys["2026-12"]}
    third = build(_settings(database_url, kafka_bootstrap, unique_prefix, retired, "2026-12"))
    async with serving_in_process(third.app, "http://triage") as client:
        history = (await client.get("/patients/pat-1/sessions")).json()
        assert {h["session_id"] for h in history} >= {legacy_id, assessed.json()["session_id"]}
        still = (await client.get(f"/patients/pat-1/sessions/{session_id}")).json()
        assert still["answers"] == {"ha-neck": False}
        shown = await client.get(f"/patients/pat-1/sessions/{assessed.json()['session_id']}")
        assert shown.json()["urgency"] == "emergency"
    files = await table_file_bytes(database_url, ["triage_sessions", "outbox"])
    assert LEGACY.encode() not in files["triage_sessions"]
