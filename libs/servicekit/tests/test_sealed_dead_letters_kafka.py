"""Dead letters and parked messages are whole events (a patient's data): with a cipher the
kit seals them at rest, through a real broker and PostgreSQL. An operator still re-drives
them (the handler gets the plaintext, in order), a key rotation re-wraps them through
`/ops/encryption`, and their copy on `<topic>.dlq` is published in clear for consumers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import func, select

from devstack.topics import ensure_topics
from servicekit.crypto import Cipher, DecryptionError, Keyring
from servicekit.tables import DeadLetterRow, ParkedRow
from servicekit.testing import eventually, read_topic, table_file_bytes

from . import fakeservice
from .fakeservice import effects, kafka_settings, produce_links

pytestmark = [pytest.mark.integration]
OPS = {"Authorization": "Bearer test-ops"}
# What the events carry, searched for in the table files on disk.
POISON = "poison-Wombat-8e21"
BEHIND = "after-Wombat-77aa"


def _key(byte: int) -> bytes:
    return bytes([byte]) * 32


async def _counts(svc: Any) -> tuple[int, int]:
    async with svc.db.sessions() as s:
        letters = await s.scalar(
            select(func.count()).select_from(DeadLetterRow).where(DeadLetterRow.status == "open")
        )
        parked = await s.scalar(select(func.count()).select_from(ParkedRow))
    return int(letters or 0), int(parked or 0)


async def _has_counts(svc: Any, expected: tuple[int, int]) -> bool:
    return await _counts(svc) == expected


async def _plain_on_disk(database_url: str) -> list[str]:
    files = await table_file_bytes(database_url, ["dead_letters", "parked_messages", "outbox"])
    return [table for table, data in files.items() if b"Wombat" in data]


async def test_dead_letters_and_parked_messages_are_sealed_redriven_and_rewrapped(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    settings = kafka_settings(database_url, kafka_bootstrap, unique_prefix, ops_token="test-ops")
    await ensure_topics(
        kafka_bootstrap, unique_prefix, [("patient.linked", 1), ("patient.linked.dlq", 1)]
    )
    topic = settings.topic("patient.linked")
    first = fakeservice.build(settings, Cipher(Keyring({"2026-11": _key(1)}, "2026-11")))
    async with LifespanManager(first.app, startup_timeout=60, shutdown_timeout=60):
        await produce_links(
            kafka_bootstrap, topic, [("p-sealed", POISON), ("p-sealed", BEHIND)], partition=None
        )
        await eventually(lambda: _has_counts(first, (1, 1)), timeout=60)
        # Its copy on the .dlq topic is published in clear, for whoever consumes it.
        dead = await read_topic(kafka_bootstrap, topic + ".dlq", until=lambda seen: len(seen) >= 1)
        assert POISON in dead[0].value.decode()
        async with first.db.sessions() as s:
            letter = (await s.execute(select(DeadLetterRow))).scalar_one()
            parked = (await s.execute(select(ParkedRow))).scalar_one()
        assert (letter.key_id, parked.key_id) == ("2026-11", "2026-11")
    assert await _plain_on_disk(database_url) == []

    # A rotation: the new key is active, the old one still opens what is stored.
    rotated = Cipher(Keyring({"2026-11": _key(1), "2026-12": _key(2)}, "2026-12"))
    second = fakeservice.build(settings, rotated)
    async with (
        LifespanManager(second.app, startup_timeout=60, shutdown_timeout=60),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=second.app), base_url="http://fake"
        ) as client,
    ):
        status = (await client.get("/ops/encryption", headers=OPS)).json()
        assert status["active_key_id"] == "2026-12"
        assert status["not_on_active_key"]["dead_letters"] == 1
        assert status["not_on_active_key"]["parked_messages"] == 1
        run = (await client.post("/ops/encryption/reencrypt", headers=OPS)).json()
        assert run["reencrypted"]["dead_letters"] == 1
        assert run["reencrypted"]["parked_messages"] == 1
        assert set(run["not_on_active_key"].values()) == {0}

        # After the fix, the operator re-drives: the handler gets the plaintext, in order.
        fakeservice.healed.add(POISON)
        (listed,) = (await client.get("/ops/dead-letters", headers=OPS)).json()
        redriven = await client.post(f"/ops/dead-letters/{listed['id']}/redrive", headers=OPS)
        assert redriven.json()["status"] == "redriven"
        assert redriven.json()["released"] == 1
        async with second.db.sessions() as s:
            assert [e.marker for e in await effects(s)] == [POISON, BEHIND]
    assert await _plain_on_disk(database_url) == []


async def test_a_sealed_dead_letter_copied_to_another_row_does_not_open(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    """The associated data binds a payload to its message: moved, it fails to open
    (re-drive answers that it failed) instead of handling another patient's event."""
    settings = kafka_settings(database_url, kafka_bootstrap, unique_prefix, ops_token="test-ops")
    await ensure_topics(
        kafka_bootstrap, unique_prefix, [("patient.linked", 1), ("patient.linked.dlq", 1)]
    )
    topic = settings.topic("patient.linked")
    cipher = Cipher(Keyring({"k1": _key(3)}, "k1"))
    svc = fakeservice.build(settings, cipher)
    async with LifespanManager(svc.app, startup_timeout=60, shutdown_timeout=60):
        await produce_links(kafka_bootstrap, topic, [("p-a", "poison")], partition=None)
        await produce_links(kafka_bootstrap, topic, [("p-b", "poison-Wombat-b")], partition=None)
        await eventually(lambda: _has_counts(svc, (2, 0)), timeout=60)
        async with svc.db.transaction() as s:
            a, b = (await s.execute(select(DeadLetterRow).order_by(DeadLetterRow.id))).scalars()
            a.payload = b.payload
        fakeservice.healed.add("poison-Wombat-b")
        with pytest.raises(DecryptionError, match="another row"):
            await svc.runtime.redrive(a.id)
