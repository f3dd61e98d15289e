"""Truthful health of the inbound side: when the connector cannot process notifications
(its database refuses connections for a while), `/readyz` says the inbound side is failing
and `inbound_notifications_failed_total` counts why; once the database is back, the EHR's
re-deliveries (or gap recovery) close the gap: every change published, exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from devstack.topics import ensure_topics
from servicekit.testing import eventually

from .inbound_support import (
    Published,
    by_source,
    connector_settings,
    ehr_sandbox,
    last_of,
    link,
    ops_client,
    read_events,
    running_connector,
    settle,
    simulate,
    wait_linked,
    wait_subscriptions_active,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


async def _admin(database_url: str) -> tuple[asyncpg.Connection, str]:
    """A connection to the server's `postgres` database, and the test database's name."""
    url = make_url(database_url)
    name = url.database
    assert name
    dsn = url.set(drivername="postgresql", database="postgres")
    conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    return conn, name


async def _refuse_connections(conn: asyncpg.Connection, name: str, refuse: bool) -> None:
    await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(not refuse).lower()}')
    if refuse:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )


async def _failed_total(client: Any, reason: str) -> float:
    text = (await client.get("/metrics")).text
    prefix = f'inbound_notifications_failed_total{{reason="{reason}"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


async def test_failed_notifications_show_in_readiness_and_metrics_and_the_gap_closes(
    tmp_path: Path,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    topic = unique_prefix + "lab.resulted"
    async with ehr_sandbox(tmp_path / "ehr") as box:
        settings = connector_settings(
            box,
            database_url=database_url,
            bootstrap=kafka_bootstrap,
            prefix=unique_prefix,
            idempotence=kafka_enable_idempotence,
        )
        async with running_connector(settings), ops_client(settings) as client:
            await wait_subscriptions_active(settings)
            await link(kafka_bootstrap, unique_prefix, "pt-alice", "demo-alice", backfill=False)
            await wait_linked(settings, "pt-alice")
            first = last_of(
                await simulate(box, "lab-result", patient="demo-alice", panel="a1c"),
                "DiagnosticReport",
            )
            await read_events(kafka_bootstrap, topic, lambda e: first in by_source(e))
            assert (await client.get("/readyz")).json()["checks"]["inbound"] == "ok"
            before = await _failed_total(client, "database_unavailable")

            admin, name = await _admin(database_url)
            try:
                await _refuse_connections(admin, name, refuse=True)
                second = last_of(
                    await simulate(box, "lab-result", patient="demo-alice", panel="cbc"),
                    "DiagnosticReport",
                )
                seen: list[dict[str, Any]] = []

                async def failing() -> bool:
                    body = (await client.get("/readyz")).json()
                    seen.append(body)
                    return str(body["checks"]["inbound"]).startswith("failing")

                await eventually(failing, timeout=60, interval=0.2)
                assert "database_unavailable" in seen[-1]["checks"]["inbound"]
                assert await _failed_total(client, "database_unavailable") > before
            finally:
                await _refuse_connections(admin, name, refuse=False)
                await admin.close()

            def both(events: list[Published]) -> bool:
                return {first, second} <= set(by_source(events))

            await read_events(kafka_bootstrap, topic, both, timeout=120)

            async def in_order_again() -> bool:
                response = await client.get("/readyz")
                return response.status_code == 200 and response.json()["checks"]["inbound"] == "ok"

            await eventually(in_order_again, timeout=60, interval=0.3)
            await settle(2)
            events = await read_events(kafka_bootstrap, topic, both)
            counts = by_source(events)
            assert counts[first] == 1 and counts[second] == 1
