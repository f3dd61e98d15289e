"""Batches through a real broker and PostgreSQL: what a consumer has fetched is handled one
partition's batch per transaction, with every guarantee a single message has."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from asgi_lifespan import LifespanManager
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import func, select

from contracts.envelope import build_headers
from contracts.patient import PatientLinkedV1
from devstack.topics import ensure_topics
from servicekit.metrics import CONSUMED
from servicekit.settings import ServiceSettings
from servicekit.tables import DeadLetterRow, InboxRow, ParkedRow
from servicekit.testing import eventually, read_topic, until_count

from . import fakeservice
from .fakeservice import effects, kafka_settings

pytestmark = [pytest.mark.integration]

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _tracing() -> None:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_exporter))


def _message(patient: str, marker: str) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    headers = build_headers(
        event_type="patient.linked",
        subject=patient,
        source_service="gateway",
        dataschema="patient.linked/v1",
        time=datetime.now(UTC),
    )
    body = PatientLinkedV1(patient_id=patient, patient_fhir_id=marker, linked_at=datetime.now(UTC))
    return patient, body.model_dump_json().encode(), headers


async def _produce_together(
    bootstrap: str,
    topic: str,
    items: list[tuple[str, bytes, list[tuple[str, bytes]]]],
    partition: int | None = 0,
) -> None:
    """Produce `items` in one go (lingering, so a partition's share is one record batch the
    consumer fetches at once)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=200)
    await producer.start()
    try:
        sent = [
            await producer.send(
                topic, value=value, key=key.encode(), headers=headers, partition=partition
            )
            for key, value, headers in items
        ]
        for future in sent:
            await future
    finally:
        await producer.stop()


async def _markers(svc: Any) -> list[str]:
    async with svc.db.sessions() as s:
        return [e.marker for e in await effects(s)]


def _batch_sizes(topic: str) -> list[int]:
    return [
        int(s.attributes["messaging.batch.message_count"])
        for s in _exporter.get_finished_spans()
        if s.name == f"{topic} process batch" and s.attributes is not None
    ]


def _count(consumer: str, outcome: str) -> float:
    return CONSUMED.labels("fake", consumer, outcome)._value.get()


async def test_a_batch_has_its_effects_once_across_a_crash_before_the_offset_commit(
    database_url: str, kafka_bootstrap: str, unique_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = kafka_settings(database_url, kafka_bootstrap, unique_prefix)
    await ensure_topics(kafka_bootstrap, unique_prefix, [("patient.linked", 1)])
    topic = settings.topic("patient.linked")
    items = [_message(f"p{n % 3}", f"m{n}") for n in range(12)]
    await _produce_together(kafka_bootstrap, topic, items)

    # The first life stores the batch's effects, then dies before committing the offsets.
    async def crash_before_commit(consumer: Any, *args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(AIOKafkaConsumer, "commit", crash_before_commit)
    first = fakeservice.build(settings)
    async with LifespanManager(first.app, startup_timeout=60, shutdown_timeout=60):
        await until_count(lambda: _inbox_count(first), 12)
    assert await _markers(first) == [f"m{n}" for n in range(12)]
    assert max(_batch_sizes(topic)) > 1  # they were handled as a batch

    # The second life reads the same batch again from the uncommitted offsets.
    monkeypatch.undo()
    duplicates_before = _count("record_link", "duplicate")
    second = fakeservice.build(settings)
    async with LifespanManager(second.app, startup_timeout=60, shutdown_timeout=60):
        await _produce_together(kafka_bootstrap, topic, [_message("p1", "after-restart")])
        await eventually(lambda: _has(second, "after-restart"), timeout=60)
    assert await _markers(second) == [f"m{n}" for n in range(12)] + ["after-restart"]
    assert _count("record_link", "duplicate") - duplicates_before == 12


async def _inbox_count(svc: Any) -> int:
    async with svc.db.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(InboxRow)) or 0)


async def _has(svc: Any, marker: str) -> bool:
    return marker in await _markers(svc)


async def test_poison_in_the_middle_of_a_batch_alone_is_dead_lettered_the_rest_in_order(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    settings = kafka_settings(database_url, kafka_bootstrap, unique_prefix)
    await ensure_topics(
        kafka_bootstrap, unique_prefix, [("patient.linked", 1), ("patient.linked.dlq", 1)]
    )
    topic = settings.topic("patient.linked")
    poison = _message("p2", "poison")
    await _produce_together(
        kafka_bootstrap,
        topic,
        [
            _message("p1", "first"),
            _message("p3", "second"),
            poison,
            _message("p3", "third"),
            _message("p2", "behind-poison"),
            _message("p1", "fourth"),
        ],
    )
    svc = fakeservice.build(settings)
    async with LifespanManager(svc.app, startup_timeout=60, shutdown_timeout=60):
        await eventually(lambda: _has(svc, "fourth"), timeout=60)
        dead = await read_topic(kafka_bootstrap, topic + ".dlq", until=lambda seen: len(seen) >= 1)
        async with svc.db.sessions() as s:
            letters = (await s.execute(select(DeadLetterRow))).scalars().all()
            parked = (await s.execute(select(ParkedRow))).scalars().all()
    assert await _markers(svc) == ["first", "second", "third", "fourth"]
    assert max(_batch_sizes(topic)) == 6
    assert [(d.key, d.headers["dlq_error_kind"]) for d in dead] == [("p2", "permanent")]
    assert dead[0].headers["ce_id"] == dict(poison[2])["ce_id"].decode()
    assert [(row.key, row.status) for row in letters] == [("p2", "open")]
    assert [row.key for row in parked] == ["p2"]


async def _three_partitions(
    database_url: str, bootstrap: str, prefix: str, batch: int
) -> tuple[ServiceSettings, str]:
    """Settings with batches of at most `batch`, and their topic, made with 3 partitions."""
    settings = kafka_settings(database_url, bootstrap, prefix, consumer_batch_max_records=batch)
    await ensure_topics(bootstrap, prefix, [("patient.linked", 3)])
    return settings, settings.topic("patient.linked")


async def test_order_per_key_is_kept_across_batches_and_partitions(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    # Small batches: 90 events of 6 patients on 3 partitions make many batches, handled
    # partition by partition concurrently.
    settings, topic = await _three_partitions(database_url, kafka_bootstrap, unique_prefix, 7)
    patients = [f"p{n}" for n in range(6)]
    first_half = [_message(patients[n % 6], f"{patients[n % 6]}-{n:03d}") for n in range(45)]
    await _produce_together(kafka_bootstrap, topic, first_half, partition=None)
    svc = fakeservice.build(settings)
    async with LifespanManager(svc.app, startup_timeout=60, shutdown_timeout=60):
        await until_count(lambda: _inbox_count(svc), 45)
        # More for the same patients while it runs: later batches, same order.
        second_half = [
            _message(patients[n % 6], f"{patients[n % 6]}-{n:03d}") for n in range(45, 90)
        ]
        await _produce_together(kafka_bootstrap, topic, second_half, partition=None)
        await until_count(lambda: _inbox_count(svc), 90)
        async with svc.db.sessions() as s:
            rows = await effects(s)
    assert len(rows) == 90
    for patient in patients:
        seen = [e.marker for e in rows if e.patient_id == patient]
        assert seen == sorted(seen)
        assert len(seen) == 15
    sizes = _batch_sizes(topic)
    assert sizes and max(sizes) <= 7


async def test_a_backlog_on_several_partitions_is_handled_in_batches_side_by_side(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    # Each partition holds more than a batch: asked for all at once, the broker client
    # fills the bound from one partition and the batches went one at a time.
    settings, topic = await _three_partitions(database_url, kafka_bootstrap, unique_prefix, 10)
    for partition in range(3):
        items = [_message(f"p{partition}", f"m{partition}-{n:02d}") for n in range(40)]
        await _produce_together(kafka_bootstrap, topic, items, partition=partition)
    svc = fakeservice.build(settings)
    async with LifespanManager(svc.app, startup_timeout=60, shutdown_timeout=60):
        await until_count(lambda: _inbox_count(svc), 120)
    batches = [
        (str(s.attributes["messaging.destination.partition.id"]), s.start_time, s.end_time)
        for s in _exporter.get_finished_spans()
        if s.name == f"{topic} process batch" and s.attributes is not None
    ]
    assert {partition for partition, _, _ in batches} == {"0", "1", "2"}
    side_by_side = [
        (a, b)
        for a in batches
        for b in batches
        if a[0] < b[0] and a[1] is not None and b[1] is not None and a[2] is not None
        if b[2] is not None and a[1] < b[2] and b[1] < a[2]
    ]
    assert side_by_side, "every partition's batch ran alone"
