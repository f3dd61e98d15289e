"""portalctl against running services: the EHR sandbox, the ehr-connector and the gateway
under uvicorn on local ports, a real broker and PostgreSQL. portalctl runs as its console
script, with the ops token and service URLs from the environment, exactly as on call.
Services not started here point at a closed port: listing across all of them must say so.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.envelope import build_headers
from contracts.lab import LabResultedV1
from contracts.registry import for_model
from devstack.topics import ensure_topics
from ehr_connector.app import build as build_connector
from ehr_connector.settings import Settings as ConnectorSettings
from ehr_sandbox.testing.http import free_port, running_sandbox, serve
from gateway import audit
from gateway.app import build as build_gateway
from gateway.settings import Settings as GatewaySettings
from servicekit.db import Database
from servicekit.testing import eventually, isolated_settings

pytestmark = [pytest.mark.e2e, pytest.mark.integration]
PORTALCTL = Path(sys.executable).with_name("portalctl")
# The gateway under test runs with the development audit key.
DEV_AUDIT_KEY = str(GatewaySettings.model_fields["audit_key"].default).encode()
OPS_TOKEN = "ops-token-for-portalctl-tests"


@dataclass
class Stack:
    env: dict[str, str]
    gateway_db: str
    gateway: httpx.AsyncClient
    sandbox_admin: httpx.AsyncClient
    bootstrap: str
    prefix: str


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
async def stack(
    tmp_path: Path,
    database_factory: Callable[[], Awaitable[str]],
    kafka_bootstrap: str,
    unique_prefix: str,
) -> AsyncIterator[Stack]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    connector_db, gateway_db = await database_factory(), await database_factory()
    async with AsyncExitStack() as stack:
        sandbox = await stack.enter_async_context(
            running_sandbox(tmp_path, port=free_port(), seed=True)
        )
        connector_port = free_port()
        connector = build_connector(
            ConnectorSettings(
                **isolated_settings(connector_db, kafka_bootstrap, unique_prefix),
                http_port=connector_port,
                ehr_base_url=sandbox.fhir,
                inbound_webhook_url=f"http://127.0.0.1:{connector_port}/fhir/notifications",
                canary_enabled=False,
                ops_token=OPS_TOKEN,
            )
        )
        connector_url = await stack.enter_async_context(serve(connector.app, connector_port))
        gateway = build_gateway(
            GatewaySettings(
                **isolated_settings(gateway_db, kafka_bootstrap, unique_prefix),
                oidc_issuer=sandbox.url,
                ops_token=OPS_TOKEN,
            )
        )
        gateway_url = await stack.enter_async_context(serve(gateway.app, free_port()))
        token = (
            await sandbox.admin.post("/dev/patient-token", json={"patient": "demo-alice"})
        ).json()["access_token"]
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
        )
        closed = "http://127.0.0.1:9"
        env = {
            **os.environ,
            "PORTAL_OPS_TOKEN": OPS_TOKEN,
            "PORTALCTL_GATEWAY_URL": gateway_url,
            "PORTALCTL_EHR_CONNECTOR_URL": connector_url,
            **{
                f"PORTALCTL_{name}_URL": closed
                for name in ("RECORDS", "SCHEDULING", "MESSAGING", "TRIAGE")
            },
        }
        yield Stack(env, gateway_db, client, sandbox.admin, kafka_bootstrap, unique_prefix)


async def portalctl(stack: Stack, *argv: str, env: dict[str, str] | None = None) -> Run:
    """Run the console script (without blocking the in-process servers)."""
    proc = await asyncio.create_subprocess_exec(
        str(PORTALCTL),
        *argv,
        env=env or stack.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def _poison_lab_results(stack: Stack, patient_id: str, count: int) -> None:
    """lab.resulted events whose payload is not a LabResultedV1: dead letters at once."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        for _ in range(count):
            headers = build_headers(
                event_type="lab.resulted",
                subject=patient_id,
                source_service="tests",
                dataschema=for_model(LabResultedV1).dataschema,
                time=datetime.now(UTC),
            )
            await producer.send_and_wait(
                f"{stack.prefix}lab.resulted",
                value=b'{"not": "a lab result"}',
                key=patient_id.encode(),
                headers=headers,
            )
    finally:
        await producer.stop()


async def test_dead_letters_across_services_show_discard_and_redrive(stack: Stack) -> None:
    patient_id = (await stack.gateway.get("/v1/me")).json()["patient_id"]
    await _poison_lab_results(stack, patient_id, 2)

    async def open_letters() -> list[dict[str, Any]]:
        run = await portalctl(
            stack, "--json", "dead-letters", "list", "--service", "gateway", "--status", "open"
        )
        assert run.code == 0, run.err
        letters: list[dict[str, Any]] = run.json()["dead_letters"]
        return letters

    async def first_held_back() -> bool:
        # The second event of the same patient is parked behind the first's dead letter.
        letters = await open_letters()
        return len(letters) == 1 and letters[0]["parked_behind"] == 1

    await eventually(first_held_back, timeout=90, interval=0.5)
    (first,) = await open_letters()

    everywhere = await portalctl(stack, "dead-letters", "list")
    assert everywhere.code == 1, "unreachable services make the listing incomplete"
    assert "gateway" in everywhere.out and "unparseable" in everywhere.out
    for name in ("records", "scheduling", "messaging", "triage"):
        assert f"warning: {name}: unreachable" in everywhere.out
    assert "warning: ehr-connector" not in everywhere.out

    shown = await portalctl(stack, "dead-letters", "show", "gateway", str(first["id"]))
    assert shown.code == 0
    assert f"{stack.prefix}lab.resulted" in shown.out and "parked_behind" in shown.out
    assert "not a lab result" not in shown.out, "payloads are never shown"

    redriven = await portalctl(
        stack, "--json", "dead-letters", "redrive", "gateway", str(first["id"])
    )
    assert redriven.code == 0, redriven.err
    assert redriven.json()["status"] == "open", "still unparseable: stays open"

    discarded = await portalctl(stack, "dead-letters", "discard", "gateway", str(first["id"]))
    assert discarded.code == 0, discarded.err

    async def released_one_dead_lettered() -> bool:
        # Discarding released the parked event, which is just as unparseable.
        letters = await open_letters()
        return [(d["id"] != first["id"], d["parked_behind"]) for d in letters] == [(True, 0)]

    await eventually(released_one_dead_lettered, timeout=60, interval=0.5)
    again = await portalctl(stack, "dead-letters", "discard", "gateway", str(first["id"]))
    assert again.code == 2 and "already" in again.err

    missing = await portalctl(stack, "dead-letters", "show", "gateway", "999999")
    assert missing.code == 2 and "no dead letter 999999" in missing.err


async def test_outbox_status_replay_and_the_audit_chain(stack: Stack) -> None:
    assert (await stack.gateway.get("/v1/me")).status_code == 200  # publishes patient.linked

    async def published() -> bool:
        run = await portalctl(stack, "--json", "outbox", "status", "gateway")
        return run.code == 0 and run.json()[0]["sent"] >= 1

    await eventually(published, timeout=60, interval=0.5)
    table = await portalctl(stack, "outbox", "status")
    assert table.code == 1
    assert table.out.splitlines()[0].split()[:3] == ["SERVICE", "PENDING", "SENT"]
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    replayed = await portalctl(stack, "--json", "outbox", "replay", "gateway", "--since", since)
    assert replayed.code == 0 and replayed.json()["replayed"] >= 1
    naive = await portalctl(stack, "outbox", "replay", "gateway", "--since", "2026-12-03T08:00")
    assert naive.code == 2 and "time zone" in naive.err

    # Two PHI reads in the access log, chained by the gateway's own code (the services the
    # reads would go through are not part of this stack).
    db = Database(stack.gateway_db)
    try:
        for resource in ("AllergyIntolerance", "Condition"):
            await audit.record_access(
                db, DEV_AUDIT_KEY, "pat-portalctl", "patient", "read", resource
            )
    finally:
        await db.dispose()
    intact = await portalctl(stack, "audit", "verify")
    assert intact.code == 0 and "intact" in intact.out

    engine = create_async_engine(stack.gateway_db)
    try:
        async with engine.begin() as conn:
            first = await conn.scalar(text("SELECT min(id) FROM access_log"))
            await conn.execute(
                text("UPDATE access_log SET resource = resource || '-edited' WHERE id = :id"),
                {"id": first},
            )
    finally:
        await engine.dispose()
    tampered = await portalctl(stack, "--json", "audit", "verify")
    assert tampered.code == 1
    assert tampered.json()["intact"] is False
    assert tampered.json()["first_broken_id"] == first
    assert "TAMPERED" in (await portalctl(stack, "audit", "verify")).out


async def test_subscriptions_backfill_and_canary(stack: Stack) -> None:
    async def all_active() -> bool:
        return (await portalctl(stack, "subscriptions", "status")).code == 0

    await eventually(all_active, timeout=90, interval=1.0)
    rows = (await portalctl(stack, "--json", "subscriptions", "status")).json()
    assert rows and {r["status"] for r in rows} == {"active"}
    recovered = await portalctl(
        stack, "--json", "subscriptions", "recover", rows[0]["subscription_id"]
    )
    assert recovered.code == 0 and recovered.json()["recovery"] == "scheduled"
    unknown = await portalctl(stack, "subscriptions", "recover", "no-such-subscription")
    assert unknown.code == 2

    started = await portalctl(
        stack, "--json", "backfill", "start", "pat-portalctl", "--fhir-id", "demo-bob"
    )
    assert started.code == 0, started.err
    assert started.json()["patient_id"] == "pat-portalctl"

    async def finished() -> bool:
        run = await portalctl(stack, "--json", "backfill", "status", "pat-portalctl")
        return run.json()["state"] == "done"

    await eventually(finished, timeout=120, interval=1.0)
    progress = await portalctl(stack, "backfill", "status", "pat-portalctl")
    assert "state" in progress.out and "done" in progress.out

    canary = await portalctl(stack, "canary", "run")
    assert canary.code == 0, canary.err
    assert "canary published in" in canary.out


async def test_no_token_no_call(stack: Stack) -> None:
    env = {k: v for k, v in stack.env.items() if k not in ("PORTAL_OPS_TOKEN", "OPS_TOKEN")}
    missing = await portalctl(stack, "audit", "verify", env=env)
    assert missing.code == 1 and "PORTAL_OPS_TOKEN" in missing.err
    wrong = await portalctl(stack, "audit", "verify", env={**env, "PORTAL_OPS_TOKEN": "nope"})
    assert wrong.code == 2 and "401" in wrong.err
