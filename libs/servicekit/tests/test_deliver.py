"""`servicekit.testing.deliver`: a handler run without a broker, through the consumer's own
path (envelope, inbox, unit of work, outbox, dead letters) on a real PostgreSQL; and the
effect-first handlers, which call out with no database connection held."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from contracts.base import SourceVersion
from contracts.envelope import build_headers
from contracts.message import MessageSyncedV1
from contracts.patient import PatientLinkedV1
from servicekit.app import Service, ServiceDefinition, create_service
from servicekit.consumer import (
    BeforeCommit,
    Event,
    EventRouter,
    Outcome,
    RawMessage,
    Record,
    UnitOfWork,
)
from servicekit.settings import ServiceSettings
from servicekit.tables import DeadLetterRow, InboxRow, OutboxRow
from servicekit.testing import deliver

from . import fakeservice
from .fakeservice import Effect, effects

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def _settings(database_url: str, **overrides: Any) -> ServiceSettings:
    return ServiceSettings(
        service_name="fake",
        database_url=database_url,
        consumer_retry_base_s=0.001,
        consumer_retry_max_s=0.002,
        consumer_max_attempts=2,
        **overrides,
    )


async def _fake_service(database_url: str, router: EventRouter, **overrides: Any) -> Service:
    """The fake service with `router`'s handlers, its tables created."""
    svc: Service = create_service(
        ServiceDefinition(
            settings=_settings(database_url, **overrides),
            title="fake",
            handlers=router,
            metadata=fakeservice.Base.metadata,
        )
    )
    await svc.prepare_database()
    return svc


def _linked(marker: str) -> PatientLinkedV1:
    return PatientLinkedV1(patient_id="p1", patient_fhir_id=marker, linked_at=NOW)


@pytest.fixture
async def service(database_url: str) -> AsyncIterator[Service]:
    svc = fakeservice.build(_settings(database_url))
    await svc.prepare_database()
    yield svc
    await svc.db.dispose()


async def test_a_delivered_event_is_handled_once_with_its_inbox_row(service: Service) -> None:
    event_id = str(uuid.uuid4())
    assert await deliver(service, _linked("a"), subject="p1", event_id=event_id) == "handled"
    assert await deliver(service, _linked("a"), subject="p1", event_id=event_id) == "duplicate"
    async with service.db.sessions() as session:
        assert [e.marker for e in await effects(session)] == ["a"]
        inbox = (await session.execute(select(InboxRow))).scalars().all()
    assert [(row.consumer, row.event_id) for row in inbox] == [("fake.record_link", event_id)]


async def test_a_delivered_poison_event_is_dead_lettered_as_in_kafka(service: Service) -> None:
    assert await deliver(service, _linked("poison"), subject="p1") == Outcome.DEAD_LETTERED
    async with service.db.sessions() as session:
        dead = (await session.execute(select(DeadLetterRow))).scalar_one()
        dlq = (await session.execute(select(OutboxRow))).scalar_one()
    assert (dead.error_kind, dead.key, dead.status) == ("permanent", "p1", "open")
    assert dlq.topic == "patient.linked.dlq"


class _Calls:
    """An external system that records what it was asked, and how many database
    connections the caller held at that moment."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.held_connections: list[int] = []

    def call(self) -> None:
        pool = self.service.db.engine.sync_engine.pool
        self.held_connections.append(pool.checkedout())  # type: ignore[attr-defined]


async def test_an_effect_first_handler_calls_out_holding_no_connection_then_records(
    database_url: str,
) -> None:
    router = EventRouter()
    calls: list[_Calls] = []

    @router.effect_first("message.synced")
    async def file_message(reads: BeforeCommit, event: Event[MessageSyncedV1]) -> Record:
        """Call out, then record the result with the inbox row."""
        async with reads.reading() as session:
            await session.execute(select(Effect.id).limit(1))
        calls[0].call()

        async def record(uow: UnitOfWork) -> None:
            uow.session.add(
                Effect(
                    event_id=event.envelope.id, patient_id=event.patient_id, marker="filed", at=NOW
                )
            )
            uow.publish(fakeservice_linked(event.patient_id), subject=event.patient_id)

        return record

    svc = await _fake_service(database_url, router)
    calls.append(_Calls(svc))
    synced = MessageSyncedV1(
        patient_id="p1",
        communication_fhir_id="c1",
        message_id="m1",
        thread_id="t1",
        thread_fhir_id="c1",
        from_patient=True,
        status="completed",
        sent_at=NOW,
        source=SourceVersion(
            resource_type="Communication", fhir_id="c1", version_id="1", last_updated=NOW
        ),
    )
    try:
        event_id = str(uuid.uuid4())
        assert await deliver(svc, synced, subject="p1", event_id=event_id) == "handled"
        # Seen in the inbox before calling out: a redelivery makes no second call.
        assert await deliver(svc, synced, subject="p1", event_id=event_id) == "duplicate"
        async with svc.db.sessions() as session:
            assert [e.marker for e in await effects(session)] == ["filed"]
            outbox = (await session.execute(select(OutboxRow))).scalars().all()
    finally:
        await svc.db.dispose()
    assert calls[0].held_connections == [0]
    assert [row.topic for row in outbox] == ["patient.linked"]


def fakeservice_linked(patient_id: str) -> PatientLinkedV1:
    """What the effect-first test handler publishes."""
    return PatientLinkedV1(patient_id=patient_id, patient_fhir_id="x", linked_at=NOW)


def _synced_message(partition: int, offset: int, patient: str) -> RawMessage:
    synced = MessageSyncedV1(
        patient_id=patient,
        communication_fhir_id=f"c{offset}",
        message_id=f"m{offset}",
        thread_id="t1",
        thread_fhir_id="c1",
        from_patient=True,
        status="completed",
        sent_at=NOW,
        source=SourceVersion(
            resource_type="Communication", fhir_id=f"c{offset}", version_id="1", last_updated=NOW
        ),
    )
    headers = build_headers(
        event_type="message.synced",
        subject=patient,
        source_service="ehr-connector",
        dataschema="message.synced/v1",
        time=NOW,
    )
    return RawMessage(
        topic="message.synced",
        partition=partition,
        offset=offset,
        key=patient,
        headers=headers,
        value=synced.model_dump_json().encode(),
    )


async def test_effect_first_partitions_call_out_concurrently_each_in_offset_order(
    database_url: str,
) -> None:
    """A fetch's partitions call out at once (one EHR round trip per event one after
    another held every patient's writes below a rate-limited EHR's allowance), while a
    partition's own events still go one at a time, in offset order."""
    router = EventRouter()
    both_calling = asyncio.Event()
    calling: dict[int, int] = {}  # partition -> calls under way
    order: list[str] = []
    overlapped: list[bool] = []

    @router.effect_first("message.synced")
    async def file_message(reads: BeforeCommit, event: Event[MessageSyncedV1]) -> Record:
        """Call out (waiting until another partition is calling too), then record."""
        partition = event.partition
        calling[partition] = calling.get(partition, 0) + 1
        assert calling[partition] == 1, "two calls of one partition at once"
        if len(calling) == 2 and all(calling.values()):
            both_calling.set()
        try:
            await asyncio.wait_for(both_calling.wait(), 5)
            overlapped.append(True)
        except TimeoutError:
            overlapped.append(False)
        order.append(event.data.message_id)
        calling[partition] -= 1

        async def record(uow: UnitOfWork) -> None:
            uow.session.add(
                Effect(event_id=event.envelope.id, patient_id=event.patient_id, marker="f", at=NOW)
            )

        return record

    svc = await _fake_service(database_url, router)
    batch = [_synced_message(n % 2, n, f"p{n % 2}") for n in range(6)]
    try:
        outcomes = await svc.runtime.consume_batch(svc.runtime.router.subscriptions[0], batch)
    finally:
        await svc.db.dispose()
    assert outcomes == [Outcome.HANDLED] * 6
    assert overlapped[:2] == [True, True]
    assert [m for m in order if int(m[1:]) % 2 == 0] == ["m0", "m2", "m4"]
    assert [m for m in order if int(m[1:]) % 2 == 1] == ["m1", "m3", "m5"]


@pytest.mark.parametrize("keys_at_once", [8, 1])
async def test_effect_first_keys_of_one_partition_call_out_side_by_side_each_in_order(
    database_url: str, keys_at_once: int
) -> None:
    """Ten patients booking at once share three partitions: their EHR calls go side by
    side (up to `consumer_effect_first_keys_at_once` keys of a partition), while each
    patient's own events go one at a time, in offset order."""
    router = EventRouter()
    others_calling = asyncio.Event()
    calling: dict[str, int] = {}  # key -> calls under way
    most_at_once = 0
    order: list[str] = []

    @router.effect_first("message.synced")
    async def file_message(reads: BeforeCommit, event: Event[MessageSyncedV1]) -> Record:
        """Call out (waiting, the first time, until the other key is calling too)."""
        nonlocal most_at_once
        key = event.patient_id
        calling[key] = calling.get(key, 0) + 1
        assert calling[key] == 1, "two calls of one key at once"
        most_at_once = max(most_at_once, sum(calling.values()))
        if most_at_once == 3:
            others_calling.set()
        if keys_at_once > 1 and event.data.message_id in ("m0", "m1", "m2"):
            await asyncio.wait_for(others_calling.wait(), 5)
        else:
            await asyncio.sleep(0.01)
        order.append(event.data.message_id)
        calling[key] -= 1

        async def record(uow: UnitOfWork) -> None:
            uow.session.add(
                Effect(event_id=event.envelope.id, patient_id=event.patient_id, marker="f", at=NOW)
            )

        return record

    svc = await _fake_service(database_url, router, consumer_effect_first_keys_at_once=keys_at_once)
    # One partition, three patients' events interleaved.
    batch = [_synced_message(0, n, f"p{n % 3}") for n in range(9)]
    try:
        outcomes = await svc.runtime.consume_batch(svc.runtime.router.subscriptions[0], batch)
    finally:
        await svc.db.dispose()
    assert outcomes == [Outcome.HANDLED] * 9
    assert most_at_once == (3 if keys_at_once > 1 else 1)
    for key in range(3):
        assert [m for m in order if int(m[1:]) % 3 == key] == [f"m{n}" for n in range(key, 9, 3)]
