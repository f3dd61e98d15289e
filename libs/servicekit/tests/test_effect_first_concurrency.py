"""Effect-first messages through a real broker and PostgreSQL: messages of distinct keys
call out at the same time (up to `consumer_effect_concurrency`), a key's messages one
after another in offset order."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from asgi_lifespan import LifespanManager

from contracts.patient import PatientLinkedV1
from devstack.topics import ensure_topics
from servicekit.app import ServiceDefinition, create_service
from servicekit.consumer import BeforeCommit, Event, EventRouter, Record, UnitOfWork
from servicekit.settings import ServiceSettings
from servicekit.testing import until_count

from . import fakeservice
from .fakeservice import Effect, effects
from .test_consumer_batches_kafka import _message, _produce_together

pytestmark = [pytest.mark.integration]

# How long the first call of key "a" waits for key "b"'s first call to start: when calls
# are made one at a time, "b" never starts while "a" waits, and the test fails.
OVERLAP_WAIT_S = 30.0


def _service(database_url: str, bootstrap: str, prefix: str, concurrency: int) -> Any:
    router = EventRouter()
    started: dict[str, asyncio.Event] = {"a": asyncio.Event(), "b": asyncio.Event()}
    calls: list[tuple[str, str, bool]] = []  # (key, marker, saw the other key's call)

    @router.effect_first("patient.linked")
    async def call_out(reads: BeforeCommit, event: Event[PatientLinkedV1]) -> Record:
        """Stands for an EHR call: the first call of each key waits for the other's."""
        key, marker = event.patient_id, event.data.patient_fhir_id
        overlapped = True
        if marker in ("a0", "b0"):
            started[key].set()
            other = started["b" if key == "a" else "a"]
            try:
                await asyncio.wait_for(other.wait(), OVERLAP_WAIT_S)
            except TimeoutError:
                overlapped = False
        calls.append((key, marker, overlapped))

        async def record(uow: UnitOfWork) -> None:
            uow.session.add(
                Effect(
                    event_id=event.envelope.id,
                    patient_id=key,
                    marker=marker,
                    at=datetime.now(UTC),
                )
            )

        return record

    settings = ServiceSettings(
        service_name="fake",
        database_url=database_url,
        kafka_bootstrap_servers=bootstrap,
        kafka_enable_idempotence=os.environ.get("KAFKA", "tansu") == "apache",
        topic_prefix=prefix,
        group_prefix=prefix,
        consumer_effect_concurrency=concurrency,
    )
    svc = create_service(
        ServiceDefinition(
            settings=settings, title="fake", handlers=router, metadata=fakeservice.Base.metadata
        )
    )
    return svc, calls


async def test_distinct_keys_call_out_at_once_and_each_key_in_order(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    svc, calls = _service(database_url, kafka_bootstrap, unique_prefix, concurrency=4)
    await ensure_topics(kafka_bootstrap, unique_prefix, [("patient.linked", 1)])
    topic = svc.settings.topic("patient.linked")
    items = [_message(key, f"{key}{n}") for n in range(3) for key in ("a", "b")]
    async with LifespanManager(svc.app, startup_timeout=60, shutdown_timeout=60):
        await _produce_together(kafka_bootstrap, topic, items)

        async def stored() -> int:
            async with svc.db.sessions() as s:
                return len(await effects(s))

        await until_count(stored, 6, stall=OVERLAP_WAIT_S * 2 + 30)
    assert all(overlapped for _key, _marker, overlapped in calls), calls
    for key in ("a", "b"):
        assert [m for k, m, _ in calls if k == key] == [f"{key}0", f"{key}1", f"{key}2"]
