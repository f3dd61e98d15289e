"""The ops endpoints every service has, through HTTP: token, dead letters (list, re-drive,
discard), outbox status and replay; and the `python -m servicekit replay` command."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from servicekit.app import Service
from servicekit.settings import ServiceSettings
from servicekit.tables import OutboxRow

from . import fakeservice
from .fakeservice import effects
from .test_consumer_runtime import consume, message

OPS = {"Authorization": "Bearer test-ops"}


@pytest.fixture
async def ops(database_url: str) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    settings = ServiceSettings(
        service_name="fake",
        database_url=database_url,
        ops_token="test-ops",
        consumer_retry_base_s=0.001,
        consumer_retry_max_s=0.002,
        consumer_max_attempts=2,
    )
    svc = fakeservice.build(settings)
    await svc.prepare_database()
    # The routes need no broker: no lifespan, so nothing tries to reach Kafka.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=svc.app), base_url="http://fake"
    ) as client:
        yield svc, client
    await svc.db.dispose()


async def test_ops_endpoints_need_the_ops_token(ops: tuple[Service, httpx.AsyncClient]) -> None:
    _, client = ops
    for token in (None, "Bearer wrong"):
        headers = {"Authorization": token} if token else {}
        response = await client.get("/ops/dead-letters", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"


async def test_dead_letters_are_listed_redriven_and_discarded_over_http(
    ops: tuple[Service, httpx.AsyncClient],
) -> None:
    svc, client = ops
    await consume(svc, message("p1", "flaky-2"))  # 2 attempts: dead-lettered; the 3rd succeeds
    await consume(svc, message("p1", "after-1"))  # parked behind it
    await consume(svc, message("p2", "poison"))
    listed = (await client.get("/ops/dead-letters", params={"status": "open"}, headers=OPS)).json()
    by_key = {d["key"]: d for d in listed}
    assert by_key["p1"]["parked_behind"] == 1
    assert by_key["p1"]["error_kind"] == "exhausted"
    assert "payload" not in by_key["p1"]  # payloads may carry PHI: not shown

    redriven = await client.post(f"/ops/dead-letters/{by_key['p1']['id']}/redrive", headers=OPS)
    assert redriven.json() == {
        "id": by_key["p1"]["id"],
        "status": "redriven",
        "released": 1,
        "new_dead_letter": None,
    }
    failed_again = await client.post(f"/ops/dead-letters/{by_key['p2']['id']}/redrive", headers=OPS)
    assert failed_again.json()["status"] == "open"
    discarded = await client.post(f"/ops/dead-letters/{by_key['p2']['id']}/discard", headers=OPS)
    assert discarded.json()["status"] == "discarded"
    again = await client.post(f"/ops/dead-letters/{by_key['p2']['id']}/discard", headers=OPS)
    assert again.status_code == 409
    missing = await client.post("/ops/dead-letters/99999/redrive", headers=OPS)
    assert missing.status_code == 404
    async with svc.db.sessions() as s:
        assert [e.marker for e in await effects(s)] == ["flaky-2", "after-1"]
    assert (
        await client.get("/ops/dead-letters", params={"status": "open"}, headers=OPS)
    ).json() == []


async def _mark_all_sent(svc: Service, at: datetime) -> None:
    async with svc.db.transaction() as session:
        await session.execute(update(OutboxRow).values(status="sent", sent_at=at))


async def test_outbox_status_and_replay_over_http(ops: tuple[Service, httpx.AsyncClient]) -> None:
    svc, client = ops
    await consume(svc, message("p1", "poison"))  # writes one .dlq row to the outbox
    await consume(svc, message("p2", "poison"))
    now = datetime.now(UTC)
    await _mark_all_sent(svc, now - timedelta(hours=2))
    async with svc.db.transaction() as session:
        row = (await session.execute(select(OutboxRow).order_by(OutboxRow.id))).scalars().first()
        assert row is not None
        row.sent_at = now - timedelta(minutes=5)
    assert (await client.get("/ops/outbox", headers=OPS)).json() == {"pending": 0, "sent": 2}
    since = (now - timedelta(hours=1)).isoformat()
    replayed = await client.post("/ops/outbox/replay", json={"since": since}, headers=OPS)
    assert replayed.json() == {"replayed": 1}
    assert (await client.get("/ops/outbox", headers=OPS)).json() == {"pending": 1, "sent": 1}
    for bad in ("2026-11-25T10:00:00", 0):
        refused = await client.post("/ops/outbox/replay", json={"since": bad}, headers=OPS)
        assert refused.status_code == 422


async def test_replay_command_marks_sent_events_for_republishing(
    ops: tuple[Service, httpx.AsyncClient], database_url: str
) -> None:
    svc, client = ops
    await consume(svc, message("p1", "poison"))
    await _mark_all_sent(svc, datetime.now(UTC) - timedelta(minutes=1))
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SERVICE_NAME": "fake",
        "LOG_LEVEL": "WARNING",
    }
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "servicekit", "replay", "--since", since],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "1 events marked for re-publishing" in done.stdout
    assert (await client.get("/ops/outbox", headers=OPS)).json() == {"pending": 1, "sent": 0}
    naive = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "servicekit", "replay", "--since", "2026-11-25T10:00:00"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert naive.returncode != 0
    assert "time zone" in naive.stderr


async def test_sent_events_are_kept_for_the_retention_period_then_purged(
    ops: tuple[Service, httpx.AsyncClient],
) -> None:
    svc, client = ops
    await consume(svc, message("p1", "poison"))
    await consume(svc, message("p2", "poison"))
    await consume(svc, message("p3", "poison"))
    now = datetime.now(UTC)
    async with svc.db.transaction() as session:
        rows = (await session.execute(select(OutboxRow).order_by(OutboxRow.id))).scalars().all()
        rows[0].status, rows[0].sent_at = (
            "sent",
            now - timedelta(hours=svc.settings.outbox_retention_hours + 1),
        )
        rows[1].status, rows[1].sent_at = "sent", now - timedelta(hours=1)
    assert await svc.relay.purge(now) == 1
    assert (await client.get("/ops/outbox", headers=OPS)).json() == {"pending": 1, "sent": 1}
