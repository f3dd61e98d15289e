"""Fixtures of the interop tests: HAPI FHIR JPA (an independent FHIR R4 server) as the EHR.

`hapi` starts HAPI once per session (`devstack.hapi`, ~40 s; the first run also fetches its
jars with Maven) on a free port, loaded with the same SubscriptionTopics the sandbox
serves, in the form HAPI 8.8 reads (see `hapi_topic`). The connector talks to it exactly as
it would to a vendor EHR: over HTTP, with the EHR profile in settings.

These tests run with `make test-interop` (PORTAL_INTEROP=1), not in `make test`: they need
Java, Maven and a minute of start-up, which the quick suite should not pay.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from devstack._paths import free_port
from devstack.hapi import HapiServer
from ehr_connector.app import build
from ehr_connector.settings import Settings
from ehr_sandbox.subscriptions.topics import TOPICS, topic_basic_resource
from ehr_sandbox.testing.http import serve
from servicekit.app import Service

if not os.environ.get("PORTAL_INTEROP"):
    # Collected only by `make test-interop`.
    collect_ignore_glob = ["test_*.py"]

FHIR_JSON = "application/fhir+json"
OPS = {"Authorization": "Bearer dev-ops-token"}


def hapi_topic(basic: dict[str, Any]) -> dict[str, Any]:
    """A sandbox topic in the form HAPI 8.8 matches: HAPI compares `resourceTrigger.resource`
    with the bare type name (`DiagnosticReport`, not the StructureDefinition URL), ignores
    `queryCriteria` in R4, and its FHIRPath evaluation knows no `%previous`. So HAPI's topics
    fire on every create/update of their type; the connector's mapping decides what is an
    event (a DiagnosticReport that is not final publishes nothing)."""
    topic = json.loads(json.dumps(basic))
    for extension in topic["extension"]:
        if extension["url"].endswith("extension-SubscriptionTopic.resourceTrigger"):
            extension["extension"] = [
                e
                for e in extension["extension"]
                if e["url"] not in ("fhirPathCriteria", "queryCriteria")
            ]
            for part in extension["extension"]:
                if part["url"] == "resource":
                    part["valueUri"] = part["valueUri"].rsplit("/", 1)[-1]
    return topic


@dataclass
class Hapi:
    """The running HAPI server and an HTTP client on its FHIR base."""

    server: HapiServer
    client: httpx.AsyncClient

    @property
    def base_url(self) -> str:
        """FHIR base URL."""
        return self.server.base_url

    async def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a resource with a client-assigned id."""
        response = await self.client.put(
            f"{resource['resourceType']}/{resource['id']}", json=resource
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def post(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Create a resource (server-assigned id)."""
        response = await self.client.post(resource["resourceType"], json=resource)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def search(self, resource_type: str, **params: str) -> list[dict[str, Any]]:
        """Current matches of a search (HAPI's search cache bypassed)."""
        response = await self.client.get(
            resource_type,
            params={**params, "_count": "200"},
            headers={"Cache-Control": "no-cache"},
        )
        response.raise_for_status()
        return [e["resource"] for e in response.json().get("entry", [])]

    async def validation_errors(self, resource: dict[str, Any]) -> list[str]:
        """What HAPI's `$validate` (the official validator, base R4) reports as error/fatal."""
        response = await self.client.post(
            f"{resource['resourceType']}/$validate", json=resource, timeout=180
        )
        outcome = response.json()
        return [
            f"{i.get('severity')}: {i.get('diagnostics')} @ {i.get('location')}"
            for i in outcome.get("issue", [])
            if i.get("severity") in ("error", "fatal")
        ]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def hapi(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hapi]:
    """HAPI FHIR for the whole session, with the portal's SubscriptionTopics loaded."""
    data_dir: Path = tmp_path_factory.mktemp("hapi")
    entries = [
        {
            "resource": hapi_topic(topic_basic_resource(topic)),
            "request": {"method": "PUT", "url": f"Basic/{topic.id}"},
        }
        for topic in TOPICS
    ]
    topics_file = data_dir / "topics.json"
    topics_file.write_text(
        json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    )
    server = HapiServer(data_dir=data_dir, topics_file=topics_file)
    await server.start()
    try:
        await server.wait_ready(timeout=600)
        async with httpx.AsyncClient(
            base_url=server.base_url + "/",
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
            timeout=60,
        ) as client:
            yield Hapi(server, client)
    finally:
        await server.stop()


@dataclass
class Chart:
    """One patient's scheduling context on HAPI: ids of what `seed_chart` wrote."""

    patient: str
    practitioner: str
    slots: list[dict[str, Any]]


async def seed_chart(hapi: Hapi, slots: int = 2) -> Chart:
    """A Patient, a Practitioner with a Schedule and free Slots, the primary CareTeam."""
    tag = uuid.uuid4().hex[:10]
    patient = f"ip-{tag}"
    practitioner = f"pr-{tag}"
    await hapi.put(
        {
            "resourceType": "Patient",
            "id": patient,
            "name": [{"family": "Interop", "given": ["Test"]}],
            "birthDate": "1980-01-01",
        }
    )
    await hapi.put(
        {"resourceType": "Practitioner", "id": practitioner, "name": [{"family": "Doctor"}]}
    )
    await hapi.put(
        {
            "resourceType": "Schedule",
            "id": f"sched-{practitioner}",
            "actor": [{"reference": f"Practitioner/{practitioner}"}],
        }
    )
    await hapi.put(
        {
            "resourceType": "CareTeam",
            "id": "care-team-primary",
            "status": "active",
            "name": "Primary care",
        }
    )
    start = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=2)
    written = []
    for index in range(slots):
        begins = start + timedelta(minutes=30 * index)
        written.append(
            await hapi.put(
                {
                    "resourceType": "Slot",
                    "id": f"slot-{tag}-{index}",
                    "schedule": {"reference": f"Schedule/sched-{practitioner}"},
                    "status": "free",
                    "start": begins.isoformat(),
                    "end": (begins + timedelta(minutes=30)).isoformat(),
                }
            )
        )
    return Chart(patient, practitioner, written)


def hapi_settings(
    hapi: Hapi,
    *,
    database_url: str,
    bootstrap: str,
    prefix: str,
    idempotence: bool,
    **overrides: Any,
) -> Settings:
    """Connector settings for HAPI: its EHR profile (no auth, topic-based Subscriptions that
    HAPI does not advertise, no signature, no $status/$events, no heartbeats or handshakes:
    the last four are what HAPI's CapabilityStatement yields anyway)."""
    port = free_port()
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url,
        "kafka_bootstrap_servers": bootstrap,
        "kafka_enable_idempotence": idempotence,
        "topic_prefix": prefix,
        "group_prefix": prefix,
        "ehr_base_url": hapi.base_url,
        "ehr_auth_mode": "none",
        "ehr_subscription_style": "backport-topic",
        "ehr_retry_base_s": 0.05,
        "ehr_retry_max_s": 0.5,
        "http_port": port,
        "inbound_webhook_url": f"http://127.0.0.1:{port}/fhir/notifications",
        "inbound_notification_auth": "channel-header",
        "inbound_monitor_interval_s": 0.5,
        "inbound_reconcile_interval_s": 2.0,
        "inbound_gap_grace_s": 0.5,
        "canary_enabled": False,
        "slot_sync_enabled": False,
        "log_level": "WARNING",
        # HAPI has none of the sandbox's clinic: every pool goes to the CareTeam each test
        # seeds, which may come after the connector started (so it is not checked then).
        "ehr_recipients_file": Path(__file__).resolve().parent / "recipients.yaml",
        "ehr_verify_recipients": False,
    }
    return Settings(**(values | overrides))


@contextlib.asynccontextmanager
async def running_connector(settings: Settings) -> AsyncIterator[Service]:
    """The connector served over HTTP on `settings.http_port` (HAPI POSTs to it)."""
    service = build(settings)
    async with serve(service.app, settings.http_port):
        yield service


def ops_client(settings: Settings) -> httpx.AsyncClient:
    """An HTTP client of the connector with the ops token."""
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{settings.http_port}", headers=OPS, timeout=60
    )
