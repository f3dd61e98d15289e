"""Helpers of the inbound integration tests: a sandbox, a connector serving real HTTP (in
this process or as a child process that can be SIGKILLed), linking patients, reading topics.

Everything crosses real boundaries: the sandbox runs under uvicorn and POSTs its
notifications over TCP to the connector's webhook; the connector reaches the sandbox only
over HTTP; events go through the session's Kafka broker and a fresh PostgreSQL database.
HTTP servers listen on ports the kernel chooses (`free_port`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from contracts.patient import PatientLinkedV1
from ehr_connector.app import build
from ehr_connector.ehr.fhir_client import FhirClient
from ehr_connector.ehr.port import EhrPort
from ehr_connector.settings import Settings
from ehr_sandbox.subscriptions.settings import SubscriptionSettings
from ehr_sandbox.testing.http import RunningSandbox, free_port, running_sandbox, serve
from servicekit.app import Service
from servicekit.testing import Seen, eventually, produce_events, read_topic

OPS = {"Authorization": "Bearer dev-ops-token"}
TOPICS = ("lab.resulted", "medication.changed", "message.received", "appointment.updated",
          "slot.updated")  # fmt: skip


@contextlib.asynccontextmanager
async def ehr_sandbox(
    data_dir: Path, **subscription_settings: Any
) -> AsyncIterator[RunningSandbox]:
    """A seeded sandbox whose failed deliveries are retried quickly (tests kill receivers)."""
    values: dict[str, Any] = {
        "delivery_retry_base_s": 0.2,
        "delivery_retry_max_s": 2.0,
        "delivery_max_failures": 8,
        "reorder_flush_s": 0.5,
    }
    subscriptions = SubscriptionSettings(**(values | subscription_settings))
    async with running_sandbox(
        data_dir, port=free_port(), seed=True, subscriptions=subscriptions
    ) as box:
        yield box


def connector_settings(
    box: RunningSandbox,
    *,
    database_url: str,
    bootstrap: str,
    prefix: str,
    idempotence: bool,
    port: int | None = None,
    **overrides: Any,
) -> Settings:
    """Connector settings: this sandbox, broker, database; its webhook on `port`."""
    port = port or free_port()
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "kafka_bootstrap_servers": bootstrap,
        "kafka_enable_idempotence": idempotence,
        "topic_prefix": prefix,
        "group_prefix": prefix,
        "ehr_base_url": box.fhir,
        "ehr_retry_base_s": 0.05,
        "ehr_retry_max_s": 0.5,
        "http_port": port,
        "inbound_webhook_url": f"http://127.0.0.1:{port}/fhir/notifications",
        "inbound_heartbeat_period_s": 2,
        "inbound_monitor_interval_s": 1.0,
        "inbound_gap_grace_s": 0.5,
        "canary_enabled": False,
        "slot_sync_enabled": False,
        "log_level": "WARNING",
    }
    return Settings(**(values | overrides))


@contextlib.asynccontextmanager
async def running_connector(
    settings: Settings, wrap_ehr: Callable[[FhirClient], EhrPort] | None = None
) -> AsyncIterator[Service]:
    """The connector in this process, served by uvicorn on `settings.http_port` (its EHR
    client wrapped by `wrap_ehr`, when given, to watch or disturb its calls)."""
    service = build(settings, wrap_ehr=wrap_ehr)
    async with serve(service.app, settings.http_port):
        yield service


def ops_client(settings: Settings) -> httpx.AsyncClient:
    """An HTTP client of the connector with the ops token."""
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{settings.http_port}", headers=OPS, timeout=30
    )


async def wait_subscriptions_active(
    settings: Settings, timeout: float = 60
) -> list[dict[str, Any]]:
    """Wait until every topic has an active Subscription; returns them."""
    found: list[dict[str, Any]] = []

    async def active() -> bool:
        nonlocal found
        try:
            async with ops_client(settings) as client:
                response = await client.get("/ops/subscriptions")
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        found = response.json()
        return len(found) == len(settings.inbound_topics) and all(
            s["status"] == "active" for s in found
        )

    await eventually(active, timeout=timeout, interval=0.2)
    return found


async def link(
    bootstrap: str, prefix: str, patient_id: str, patient_fhir_id: str, *, backfill: bool
) -> None:
    """Publish `patient.linked` as the gateway does."""
    await produce_events(
        bootstrap,
        [
            (
                patient_id,
                PatientLinkedV1(
                    patient_id=patient_id,
                    patient_fhir_id=patient_fhir_id,
                    linked_at=datetime.now(UTC),
                    backfill=backfill,
                ),
            )
        ],
        topic_prefix=prefix,
    )


async def wait_linked(settings: Settings, patient_id: str, timeout: float = 60) -> None:
    """Wait until the connector has consumed the link (its back-fill state, or its row)."""
    from ehr_connector import store
    from servicekit.db import Database

    db = Database(settings.database_url)
    try:

        async def linked() -> bool:
            async with db.sessions() as session:
                return await store.patient_fhir_id_of(session, patient_id) is not None

        await eventually(linked, timeout=timeout, interval=0.2)
    finally:
        await db.dispose()


async def simulate(box: RunningSandbox, simulation: str, **body: Any) -> list[dict[str, str]]:
    """A clinician action in the sandbox; returns what it wrote (`reference`, `versionId`)."""
    response = await box.admin.post(f"/sandbox/simulate/{simulation}", json=body)
    response.raise_for_status()
    written: list[dict[str, str]] = response.json()["written"]
    return written


def last_of(written: list[dict[str, str]], resource_type: str) -> tuple[str, str]:
    """(id, version) of the last resource of a type an action wrote."""
    for item in reversed(written):
        kind, _, fhir_id = item["reference"].partition("/")
        if kind == resource_type:
            return fhir_id, item["versionId"]
    raise AssertionError(f"no {resource_type} in {written}")


@dataclass(frozen=True)
class Published:
    """One event read back from a topic."""

    event_id: str
    key: str
    data: dict[str, Any]


async def read_events(
    bootstrap: str,
    topic: str,
    until: Callable[[list[Published]], bool],
    timeout: float = 60,
) -> list[Published]:
    """Every record of a topic (prefixed name) until `until(events)` holds."""

    def parsed(records: list[Seen]) -> list[Published]:
        return [
            Published(r.headers["ce_id"], r.key, json.loads(r.value)) for r in records if r.value
        ]

    records = await read_topic(
        bootstrap, topic, until=lambda seen: until(parsed(seen)), timeout=timeout
    )
    return parsed(records)


def by_source(events: list[Published]) -> Counter[tuple[str, str]]:
    """How many distinct events (by ce_id) there are per source (fhir id, version).

    The outbox relay is at-least-once: after a crash a record may be re-sent with the same
    ce_id, which consumers' inboxes drop. A change published twice is two ce_ids.
    """
    unique = {e.event_id: e for e in events}
    return Counter(
        (e.data["source"]["fhir_id"], e.data["source"]["version_id"]) for e in unique.values()
    )


async def settle(seconds: float) -> None:
    """Let late duplicates and recoveries arrive before asserting 'exactly once'."""
    await asyncio.sleep(seconds)


@dataclass
class ConnectorProcess:
    """The connector as a child process (uvicorn), so a test can SIGKILL it."""

    settings: Settings
    log_path: Path
    proc: asyncio.subprocess.Process | None = None

    def env(self) -> dict[str, str]:
        """The settings as the environment variables the service reads."""
        env = dict(os.environ)
        for name, value in self.settings.model_dump().items():
            if value is None:
                # Unset (e.g. "detect from the CapabilityStatement"): leave the default.
                env.pop(name.upper(), None)
            elif isinstance(value, dict | list):
                env[name.upper()] = json.dumps(value)
            elif isinstance(value, bool):
                env[name.upper()] = "true" if value else "false"
            else:
                env[name.upper()] = str(value)
        return env

    async def start(self) -> None:
        """Start it and wait for /healthz."""
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "ehr_connector.app:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.settings.http_port),
                "--log-level",
                "warning",
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"connector exited: {self.log_path.read_text()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.get(
                        f"http://127.0.0.1:{self.settings.http_port}/healthz", timeout=1
                    )
                    if response.status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise TimeoutError("the connector did not start")

    async def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, in-flight work is lost mid-transaction."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=20)
        except TimeoutError:
            await self.kill()
