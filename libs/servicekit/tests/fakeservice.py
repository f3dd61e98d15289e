"""A minimal service built with the kit, used by the kit's own tests.

It consumes `patient.linked` and records one `Effect` row per handled event; payloads
steer failures: `patient_fhir_id="poison"` raises a permanent error, `"flaky-N"` fails the
first N attempts, `"down-N"` reports its dependency unavailable N times, `"cut-N"` has its
own database connection cut (`pg_terminate_backend`, as a database restart does) N times, `"poison-..."`
raises a permanent error until the test adds it to `healed` (the fix an operator re-drives
after).
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from sqlalchemy import DateTime, Integer, String, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from contracts.envelope import build_headers
from contracts.patient import PatientLinkedV1
from servicekit.app import Service, ServiceDefinition, create_service
from servicekit.consumer import Event, EventRouter, UnitOfWork
from servicekit.crypto import Cipher
from servicekit.db import new_metadata
from servicekit.errors import DependencyUnavailable, PermanentError
from servicekit.ops_api import kit_encryption_routes
from servicekit.settings import ServiceSettings


class Base(DeclarativeBase):
    metadata = new_metadata()


class Effect(Base):
    __tablename__ = "effects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36))
    patient_id: Mapped[str] = mapped_column(String(64))
    marker: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


attempts: Counter[str] = Counter()
healed: set[str] = set()
router = EventRouter()


@router.handles("patient.linked")
async def record_link(uow: UnitOfWork, event: Event[PatientLinkedV1]) -> None:
    """Record the link (the test's observable effect)."""
    marker = event.data.patient_fhir_id
    attempts[event.envelope.id] += 1
    if marker == "poison" or (marker.startswith("poison-") and marker not in healed):
        raise PermanentError("this patient cannot be linked")
    if marker.startswith("cut-") and attempts[event.envelope.id] <= int(marker.split("-")[1]):
        await uow.session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
    for prefix, exc in (
        ("flaky-", RuntimeError("flaky")),
        ("down-", DependencyUnavailable("down")),
    ):
        if marker.startswith(prefix) and attempts[event.envelope.id] <= int(marker.split("-")[1]):
            raise exc
    uow.session.add(
        Effect(
            event_id=event.envelope.id,
            patient_id=event.patient_id,
            marker=marker,
            at=datetime.now(UTC),
        )
    )


def build(settings: ServiceSettings, cipher: Cipher | None = None) -> Service:
    """The fake service with the given settings; with `cipher` its kit tables are sealed
    and it has the `/ops/encryption` routes."""
    service = create_service(
        ServiceDefinition(
            settings=settings,
            title="fake",
            handlers=router,
            publishes=("patient.linked",),
            metadata=Base.metadata,
            cipher=cipher,
        )
    )
    if cipher is not None:
        service.app.include_router(kit_encryption_routes())
    return service


async def effects(session: AsyncSession) -> list[Effect]:
    """Every recorded effect, in the order written."""
    return list((await session.execute(select(Effect).order_by(Effect.id))).scalars().all())


async def produce_links(
    bootstrap: str, topic: str, items: list[tuple[str, str]], *, partition: int | None = 0
) -> None:
    """`patient.linked` events for `(patient, marker)` pairs, one after another (the marker
    steers the handler: see the module docstring), to `partition` (None: by key)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for patient, marker in items:
            headers = build_headers(
                event_type="patient.linked",
                subject=patient,
                source_service="gateway",
                dataschema="patient.linked/v1",
                time=datetime.now(UTC),
            )
            body = PatientLinkedV1(
                patient_id=patient, patient_fhir_id=marker, linked_at=datetime.now(UTC)
            )
            await producer.send_and_wait(
                topic,
                value=body.model_dump_json().encode(),
                key=patient.encode(),
                headers=headers,
                partition=partition,
            )
    finally:
        await producer.stop()


def kafka_settings(database_url: str, bootstrap: str, prefix: str, **extra: Any) -> ServiceSettings:
    """The fake service's settings on the test broker (topics and groups under `prefix`),
    polling and retrying fast; `extra` overrides."""
    values: dict[str, Any] = {
        "service_name": "fake",
        "database_url": database_url,
        "kafka_bootstrap_servers": bootstrap,
        "kafka_enable_idempotence": os.environ.get("KAFKA", "tansu") == "apache",
        "topic_prefix": prefix,
        "group_prefix": prefix,
        "outbox_poll_interval_s": 0.05,
        "outbox_idle_poll_max_s": 0.05,
        "consumer_retry_base_s": 0.01,
        "consumer_max_attempts": 2,
    }
    return ServiceSettings(**(values | extra))
