"""Consumers against a real broker: duplicates, poison messages, trace propagation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from asgi_lifespan import LifespanManager
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.envelope import build_headers
from contracts.patient import PatientLinkedV1
from devstack.topics import ensure_topics
from servicekit.app import ServiceDefinition, create_service
from servicekit.consumer import Event, EventRouter, UnitOfWork
from servicekit.telemetry import tracer
from servicekit.testing import eventually, read_topic

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


def _message(
    patient: str, marker: str, event_id: str | None = None
) -> tuple[bytes, list[tuple[str, bytes]]]:
    headers = build_headers(
        event_type="patient.linked",
        subject=patient,
        source_service="gateway",
        dataschema="patient.linked/v1",
        event_id=event_id,
        time=datetime.now(UTC),
    )
    body = PatientLinkedV1(patient_id=patient, patient_fhir_id=marker, linked_at=datetime.now(UTC))
    return body.model_dump_json().encode(), headers


async def _produce(
    bootstrap: str, topic: str, items: list[tuple[str, bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, headers in items:
            await producer.send_and_wait(
                topic, value=value, key=key.encode(), headers=headers, partition=0
            )
    finally:
        await producer.stop()


async def _markers(svc: Any) -> list[str]:
    async with svc.db.sessions() as s:
        return [e.marker for e in await effects(s)]


async def test_event_delivered_twice_through_kafka_has_one_effect(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    settings = kafka_settings(database_url, kafka_bootstrap, unique_prefix)
    await ensure_topics(kafka_bootstrap, unique_prefix)
    value, headers = _message("p1", "once")
    topic = settings.topic("patient.linked")
    await _produce(kafka_bootstrap, topic, [("p1", value, headers), ("p1", value, headers)])
    later_value, later_headers = _message("p1", "later")
    await _produce(kafka_bootstrap, topic, [("p1", later_value, later_headers)])
    svc = fakeservice.build(settings)
    async with LifespanManager(svc.app, startup_timeout=60, shutdown_timeout=60):
        await eventually(lambda: _has(svc, "later"), timeout=60)
        assert await _markers(svc) == ["once", "later"]


async def _has(svc: Any, marker: str) -> bool:
    return marker in await _markers(svc)


async def test_poison_message_goes_to_dlq_and_the_partition_moves_on(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    settings = kafka_settings(database_url, kafka_bootstrap, unique_prefix)
    await ensure_topics(
        kafka_bootstrap, unique_prefix, [("patient.linked", 1), ("patient.linked.dlq", 1)]
    )
    topic = settings.topic("patient.linked")
    _, poison_headers = _message("p1", "x")
    ok_value, ok_headers = _message("p2", "behind-1")
    ok2_value, ok2_headers = _message("p3", "behind-2")
    await _produce(
        kafka_bootstrap,
        topic,
        [
            ("p1", b"{not json", poison_headers),
            ("p2", ok_value, ok_headers),
            ("p3", ok2_value, ok2_headers),
        ],
    )
    svc = fakeservice.build(settings)
    async with LifespanManager(svc.app, startup_timeout=60, shutdown_timeout=60):
        await eventually(lambda: _has(svc, "behind-2"), timeout=60)
        assert await _markers(svc) == ["behind-1", "behind-2"]
        dead = await read_topic(kafka_bootstrap, topic + ".dlq", until=lambda seen: len(seen) >= 1)
    assert dead[0].key == "p1"
    assert dead[0].value == b"{not json"
    assert dead[0].headers["dlq_error_kind"] == "unparseable"
    assert "invalid payload" in dead[0].headers["dlq_error"]
    assert dead[0].headers["dlq_attempts"] == "1"
    assert dead[0].headers["ce_id"] == dict(poison_headers)["ce_id"].decode()
    assert dead[0].headers["dlq_original_topic"] == topic


async def test_one_trace_spans_the_business_span_publish_and_consume(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    settings = kafka_settings(database_url, kafka_bootstrap, unique_prefix)
    await ensure_topics(kafka_bootstrap, unique_prefix)
    svc = fakeservice.build(settings)
    async with LifespanManager(svc.app, startup_timeout=60, shutdown_timeout=60):
        with tracer("test").start_as_current_span("link patient") as root:
            async with svc.db.transaction() as session:
                svc.outbox.add(
                    session,
                    PatientLinkedV1(
                        patient_id="p9", patient_fhir_id="traced", linked_at=datetime.now(UTC)
                    ),
                    subject="p9",
                )
        await eventually(lambda: _has(svc, "traced"), timeout=60)
    trace_id = root.get_span_context().trace_id
    topic = settings.topic("patient.linked")
    names = {s.name for s in _exporter.get_finished_spans() if s.context.trace_id == trace_id}
    assert {"link patient", f"{topic} publish", f"{topic} process"} <= names
    process = next(
        s
        for s in _exporter.get_finished_spans()
        if s.name == f"{topic} process" and s.context.trace_id == trace_id
    )
    assert process.attributes is not None
    assert process.attributes["portal.outcome"] == "handled"


async def test_consumers_fetch_with_the_configured_max_waits(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    """KAFKA_FETCH_MAX_WAIT_MS reaches every subscriber's consumer, and
    KAFKA_INTERACTIVE_FETCH_MAX_WAIT_MS those of interactive subscriptions: Tansu answers
    a fetch only when its wait expires, so the local stack shortens the wait where a patient
    waits (aiokafka's 500 ms made each hop there take ~200 ms at p50)."""
    router = EventRouter()
    router.handles("patient.linked")(fakeservice.record_link)

    @router.handles("consent.granted", interactive=True)
    async def granted(uow: UnitOfWork, event: Event[Any]) -> None:
        """Nothing: only its consumer's settings are looked at."""

    settings = kafka_settings(database_url, kafka_bootstrap, unique_prefix).model_copy(
        update={"kafka_fetch_max_wait_ms": 300, "kafka_interactive_fetch_max_wait_ms": 20}
    )
    await ensure_topics(kafka_bootstrap, unique_prefix)
    svc = create_service(
        ServiceDefinition(
            settings=settings, title="fake", handlers=router, metadata=fakeservice.Base.metadata
        )
    )
    async with LifespanManager(svc.app, startup_timeout=60, shutdown_timeout=60):

        async def started() -> bool:  # the broker connects in the background
            return all(s.consumer is not None for s in svc.broker.subscribers)

        await eventually(started, timeout=60)
        waits = {
            s.topics[0].name: s.consumer._fetch_max_wait_ms  # type: ignore[union-attr]
            for s in svc.broker.subscribers
        }
        assert waits == {
            f"{unique_prefix}patient.linked": 300,
            f"{unique_prefix}consent.granted": 20,
        }
