"""What the connector publishes about a patient (a clinician's message, a lab value) is
sealed in its outbox at rest (servicekit.sealing), opened only to publish, and re-wrapped
by a key rotation through `/ops/encryption`."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.topics import ensure_topics
from ehr_connector.settings import Settings
from servicekit.crypto import new_key
from servicekit.testing import table_file_bytes

from .inbound_support import (
    OPS,
    connector_settings,
    ehr_sandbox,
    link,
    ops_client,
    read_events,
    running_connector,
    simulate,
    wait_linked,
    wait_subscriptions_active,
)

pytestmark = [pytest.mark.integration]
REPLY = "Wombat-reply-8e21: your results look fine"


async def test_the_outbox_is_sealed_and_rotation_rewraps_it(
    tmp_path: Path,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    keys = {"2026-11": new_key()}
    async with ehr_sandbox(tmp_path / "ehr") as box:

        def settings_with(active: str) -> Settings:
            return connector_settings(
                box,
                database_url=database_url,
                bootstrap=kafka_bootstrap,
                prefix=unique_prefix,
                idempotence=kafka_enable_idempotence,
                encryption_keys=dict(keys),
                encryption_active_key=active,
            )

        first = settings_with("2026-11")
        async with running_connector(first):
            await wait_subscriptions_active(first)
            await link(kafka_bootstrap, unique_prefix, "pt-alice", "demo-alice", backfill=False)
            await wait_linked(first, "pt-alice")
            await simulate(box, "message-reply", patient="demo-alice", text=REPLY)
            events = await read_events(
                kafka_bootstrap,
                unique_prefix + "message.received",
                lambda es: any(e.data["body"] == REPLY for e in es),
            )
            # Published in clear for the services that consume it...
            assert any(e.data["body"] == REPLY for e in events)
        # ... and sealed in the outbox's file on disk.
        files = await table_file_bytes(database_url, ["outbox"])
        assert REPLY.encode() not in files["outbox"]
        assert b"Wombat" not in files["outbox"]

        keys["2026-12"] = new_key()
        second = settings_with("2026-12")
        async with running_connector(second), ops_client(second) as client:
            wrong = {"Authorization": "Bearer not-the-ops-token"}
            assert (await client.get("/ops/encryption", headers=wrong)).status_code == 401
            status = (await client.get("/ops/encryption", headers=OPS)).json()
            assert status["active_key_id"] == "2026-12"
            assert status["not_on_active_key"]["outbox"] >= 1
            run = (await client.post("/ops/encryption/reencrypt", headers=OPS)).json()
            assert run["reencrypted"]["outbox"] == status["not_on_active_key"]["outbox"]
            assert set(run["not_on_active_key"].values()) == {0}
