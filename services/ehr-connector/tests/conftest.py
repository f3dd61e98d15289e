"""Fixtures of the ehr-connector's tests: the EHR sandbox over real HTTP, the connector.

`sandbox` is a seeded sandbox served by uvicorn on a port the kernel chooses, one per test
module; `ehr` is the same sandbox with fault injection reset after the test. `harness`
runs a connector (real broker, fresh PostgreSQL database) against it and offers what the
integration tests do repeatedly: produce events, read FHIR resources back over HTTP, read
the connector's output topic. The connector reaches the sandbox only over HTTP.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager

from contracts.appointment import AppointmentBookedV1, AppointmentUpdatedV1
from contracts.base import Payload
from devstack.topics import ensure_topics
from ehr_connector import store
from ehr_connector.app import build
from ehr_connector.ehr.fhir_client import FhirClient
from ehr_connector.ehr.port import EhrPort
from ehr_connector.outbound.domain.identifiers import token
from ehr_connector.settings import Settings
from ehr_sandbox.testing.http import RunningSandbox, free_port, running_sandbox
from servicekit.app import Service
from servicekit.testing import Seen, produce_events, read_topic

T0 = datetime.fromisoformat("2026-11-20T08:00:00+00:00")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningSandbox]:
    """A seeded EHR sandbox over HTTP, shared by one test module."""
    data_dir: Path = tmp_path_factory.mktemp("ehr-sandbox")
    async with running_sandbox(data_dir, port=free_port(), seed=True) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def ehr(sandbox: RunningSandbox) -> AsyncIterator[RunningSandbox]:
    """The module's sandbox, with fault injection switched off again after the test."""
    yield sandbox
    await sandbox.admin.delete("/sandbox/faults")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def free_slots(sandbox: RunningSandbox) -> Iterator[dict[str, Any]]:
    """Seeded free slots (resources), each handed out once per module."""
    response = await sandbox.admin.get(
        "/fhir/Slot", params={"status": "free", "_count": "300", "_sort": "start"}
    )
    response.raise_for_status()
    return iter([entry["resource"] for entry in response.json()["entry"]])


def ehr_settings(sandbox: RunningSandbox, **overrides: Any) -> Settings:
    """Connector settings for EHR-only tests (no broker, no database use)."""
    values: dict[str, Any] = {
        "environment": "test",
        "ehr_base_url": sandbox.fhir,
        "ehr_retry_base_s": 0.05,
        "ehr_retry_max_s": 0.5,
    }
    return Settings(**(values | overrides))


@dataclass
class Harness:
    """A connector on the sandbox, the session's broker and a fresh database."""

    sandbox: RunningSandbox
    settings: Settings
    bootstrap: str
    prefix: str
    slots: Iterator[dict[str, Any]]

    @property
    def admin(self) -> httpx.AsyncClient:
        """The sandbox's admin client (full access: reads back what the connector wrote)."""
        return self.sandbox.admin

    @contextlib.asynccontextmanager
    async def connector(
        self, wrap_ehr: Callable[[FhirClient], EhrPort] | None = None, **overrides: Any
    ) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
        """Run the connector (lifespan: migrations, EHR client, consumers, relay)."""
        settings = self.settings.model_copy(update=overrides)
        service = build(settings, wrap_ehr=wrap_ehr)
        async with (
            LifespanManager(service.app, startup_timeout=60, shutdown_timeout=60),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=service.app), base_url="http://ehr-connector"
            ) as client,
        ):
            yield service, client

    async def produce(
        self, events: list[tuple[str, Payload]], event_ids: list[str] | None = None
    ) -> list[str]:
        """Publish events as the portal's services would."""
        return await produce_events(
            self.bootstrap, events, topic_prefix=self.prefix, event_ids=event_ids
        )

    async def read(self, reference: str) -> dict[str, Any]:
        """A resource as the EHR holds it now."""
        response = await self.admin.get(f"/fhir/{reference}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def search(self, resource_type: str, **params: str) -> list[dict[str, Any]]:
        """The resources a search matches (first page of up to 100)."""
        response = await self.admin.get(
            f"/fhir/{resource_type}", params={**params, "_count": "100"}
        )
        response.raise_for_status()
        return [
            e["resource"]
            for e in response.json().get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"
        ]

    async def with_identifier(
        self, resource_type: str, system: str, value: str
    ) -> list[dict[str, Any]]:
        """The resources of a type carrying one of our identifiers."""
        return await self.search(resource_type, identifier=token(system, value))

    def next_slot(self) -> dict[str, Any]:
        """A free slot no other test of the module uses."""
        return next(self.slots)

    def booking(
        self, patient_id: str, patient_fhir_id: str, slot: dict[str, Any], **extra: Any
    ) -> AppointmentBookedV1:
        """`appointment.booked` for a slot, with a fresh appointment id."""
        schedule = slot["schedule"]["reference"].rsplit("/", 1)[-1]
        practitioner = schedule.removeprefix("sched-")
        values: dict[str, Any] = {
            "appointment_id": f"appt-{uuid.uuid4().hex[:12]}",
            "patient_id": patient_id,
            "patient_fhir_id": patient_fhir_id,
            "slot_fhir_id": slot["id"],
            "practitioner_fhir_id": practitioner,
            "start": datetime.fromisoformat(slot["start"].replace("Z", "+00:00")),
            "end": datetime.fromisoformat(slot["end"].replace("Z", "+00:00")),
            "reason": "Knee pain after running",
            "booked_at": T0,
        }
        return AppointmentBookedV1(**(values | extra))

    async def updates(
        self, until: Callable[[list[AppointmentUpdatedV1]], bool], timeout: float = 90
    ) -> list[AppointmentUpdatedV1]:
        """`appointment.updated` events the connector published, read until `until` holds."""

        def parsed(records: list[Seen]) -> list[AppointmentUpdatedV1]:
            return [AppointmentUpdatedV1.model_validate_json(r.value) for r in records]

        records = await read_topic(
            self.bootstrap,
            self.prefix + "appointment.updated",
            until=lambda seen: until(parsed(seen)),
            timeout=timeout,
        )
        return parsed(records)

    async def remember_patient(self, service: Service, patient_id: str, fhir_id: str) -> None:
        """What `patient.linked` does: tell the connector which EHR Patient a patient is."""
        async with service.db.transaction() as session:
            await store.remember_patient(session, patient_id, fhir_id)


@pytest.fixture
async def harness(
    ehr: RunningSandbox,
    free_slots: Iterator[dict[str, Any]],
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> Harness:
    """A connector harness on the module's sandbox, a fresh database and unique topics."""
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = Settings(
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_enable_idempotence=kafka_enable_idempotence,
        topic_prefix=unique_prefix,
        group_prefix=unique_prefix,
        environment="test",
        ehr_base_url=ehr.fhir,
        consumer_retry_base_s=0.05,
        consumer_retry_max_s=1.0,
        ehr_retry_base_s=0.05,
        ehr_retry_max_s=0.5,
        ehr_breaker_reset_s=1.0,
        # The outbound side on its own: no Subscriptions, no canary writing lab results.
        inbound_enabled=False,
        canary_enabled=False,
        slot_sync_enabled=False,
    )
    return Harness(ehr, settings, kafka_bootstrap, unique_prefix, free_slots)
