"""The operator's gauges move when what they count changes, against a real broker and a
real PostgreSQL: dead letters and parked messages as they happen, the outbox backlog and
its oldest row's age while the broker is unreachable, and consumer lag per partition."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from prometheus_client import REGISTRY

from contracts.patient import PatientLinkedV1
from devstack.topics import ensure_topics
from servicekit.outbox import OutboxRelay
from servicekit.settings import ServiceSettings
from servicekit.testing import eventually

from . import fakeservice
from .fakeservice import kafka_settings, produce_links

pytestmark = [pytest.mark.integration]
CONSUMER = "record_link"  # the fake service's one subscription


def _settings(database_url: str, bootstrap: str, prefix: str, **extra: Any) -> ServiceSettings:
    # A service name per test: gauges are process-wide, labelled by service.
    values: dict[str, Any] = {
        "service_name": f"gauges-{prefix.strip('-_.')}",
        "metrics_interval_s": 0.2,
    }
    return kafka_settings(database_url, bootstrap, prefix, **(values | extra))


def _gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_dead_letter_and_parked_gauges_move_as_messages_are_dead_lettered_and_parked(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    settings = _settings(database_url, kafka_bootstrap, unique_prefix)
    await ensure_topics(kafka_bootstrap, unique_prefix)
    labels = {"service": settings.service_name, "consumer": CONSUMER}
    svc = fakeservice.build(settings)
    async with LifespanManager(svc.app, startup_timeout=60, shutdown_timeout=60):
        assert _gauge("dead_letters_open", **labels) == 0
        assert _gauge("parked_messages", **labels) == 0
        topic = settings.topic("patient.linked")
        await produce_links(kafka_bootstrap, topic, [("p1", "poison")])

        async def dead_lettered() -> bool:
            return _gauge("dead_letters_open", **labels) == 1

        await eventually(dead_lettered, timeout=60)
        # The next message of that patient waits behind the dead letter.
        await produce_links(kafka_bootstrap, topic, [("p1", "behind")])

        async def parked() -> bool:
            return _gauge("parked_messages", **labels) == 1

        await eventually(parked, timeout=60)
        assert _gauge("dead_letters_open", **labels) == 1


async def test_outbox_backlog_and_oldest_age_grow_while_the_broker_is_unreachable(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    # Nothing listens on port 1: to this relay the broker is down.
    away = _settings(database_url, "127.0.0.1:1", unique_prefix, outbox_publish_timeout_s=1.0)
    service = away.service_name
    svc = fakeservice.build(away)
    await svc.prepare_database()
    for n in range(5):
        async with svc.db.transaction() as session:
            svc.outbox.add(
                session,
                PatientLinkedV1(
                    patient_id=f"p{n}", patient_fhir_id=f"seq-{n}", linked_at=datetime.now(UTC)
                ),
                subject=f"p{n}",
            )
    stuck = OutboxRelay(svc.db, away, svc.outbox)
    running = asyncio.create_task(stuck.run())
    try:

        async def backlog_seen() -> bool:
            return (
                _gauge("outbox_backlog", service=service) == 5
                and (_gauge("outbox_oldest_pending_seconds", service=service) or 0) > 0
            )

        await eventually(backlog_seen, timeout=30)
        first_age = _gauge("outbox_oldest_pending_seconds", service=service) or 0

        async def older() -> bool:
            return (_gauge("outbox_oldest_pending_seconds", service=service) or 0) > first_age

        await eventually(older, timeout=30)
    finally:
        stuck.stop()
        await asyncio.wait_for(running, timeout=30)

    # The broker is reachable again: the backlog drains and the gauges say so.
    back = _settings(database_url, kafka_bootstrap, unique_prefix)
    relay = OutboxRelay(svc.db, back, svc.outbox)
    running = asyncio.create_task(relay.run())
    try:

        async def drained() -> bool:
            return (
                _gauge("outbox_backlog", service=service) == 0
                and _gauge("outbox_oldest_pending_seconds", service=service) == 0
            )

        await eventually(drained, timeout=60)
        assert relay.published == 5
    finally:
        relay.stop()
        await asyncio.wait_for(running, timeout=30)
        await svc.db.dispose()


async def test_consumer_lag_is_reported_per_partition_and_falls_as_the_consumer_catches_up(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    # The first message's dependency is away for a while: the consumer waits on it (without
    # spending its retry budget) and everything behind it on partition 0 is lag.
    settings = _settings(database_url, kafka_bootstrap, unique_prefix, consumer_retry_max_s=0.1)
    await ensure_topics(kafka_bootstrap, unique_prefix)
    topic = settings.topic("patient.linked")
    labels = {"service": settings.service_name, "consumer": CONSUMER, "topic": topic}
    await produce_links(
        kafka_bootstrap, topic, [("p1", "down-60"), ("p1", "second"), ("p1", "third")]
    )
    svc = fakeservice.build(settings)
    async with LifespanManager(svc.app, startup_timeout=60, shutdown_timeout=60):

        async def behind() -> bool:
            return (_gauge("consumer_lag", partition="0", **labels) or 0) >= 2

        await eventually(behind, timeout=60, interval=0.1)

        async def caught_up() -> bool:
            return _gauge("consumer_lag", partition="0", **labels) == 0

        await eventually(caught_up, timeout=60)
        partitions = {
            s.labels["partition"]
            for metric in REGISTRY.collect()
            if metric.name == "consumer_lag"
            for s in metric.samples
            if s.labels.get("topic") == topic
        }
    assert "0" in partitions and len(partitions) >= 2  # every assigned partition has a sample
