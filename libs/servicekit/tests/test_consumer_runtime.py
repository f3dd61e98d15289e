"""The consumer loop's guarantees, driven directly (no broker): inbox, retries, dead
letters, parking and release. The same runtime runs behind every Kafka subscriber."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from contracts.envelope import build_headers, parse_headers
from contracts.patient import PatientLinkedV1
from servicekit.app import Service
from servicekit.consumer import Outcome, RawMessage
from servicekit.settings import ServiceSettings
from servicekit.tables import DeadLetterRow, InboxRow, OutboxRow, ParkedRow

from . import fakeservice
from .fakeservice import effects

_offsets = iter(range(10_000))


def message(
    patient: str, marker: str, *, event_id: str | None = None, raw: bytes | None = None
) -> RawMessage:
    headers = build_headers(
        event_type="patient.linked",
        subject=patient,
        source_service="gateway",
        dataschema="patient.linked/v1",
        event_id=event_id,
        time=datetime.now(UTC),
    )
    payload = PatientLinkedV1(
        patient_id=patient, patient_fhir_id=marker, linked_at=datetime.now(UTC)
    )
    return RawMessage(
        topic="patient.linked",
        partition=0,
        offset=next(_offsets),
        key=patient,
        headers=headers,
        value=raw if raw is not None else payload.model_dump_json().encode(),
    )


@pytest.fixture
async def service(database_url: str) -> AsyncIterator[Service]:
    settings = ServiceSettings(
        service_name="fake",
        database_url=database_url,
        consumer_retry_base_s=0.001,
        consumer_retry_max_s=0.002,
        consumer_max_attempts=3,
    )
    svc = fakeservice.build(settings)
    await svc.prepare_database()
    yield svc
    await svc.db.dispose()


async def consume(svc: Service, msg: RawMessage) -> str:
    sub = svc.runtime.router.subscriptions[0]
    return await svc.runtime.consume(sub, msg)


async def markers(svc: Service) -> list[str]:
    async with svc.db.sessions() as s:
        return [e.marker for e in await effects(s)]


async def test_same_event_delivered_twice_has_one_effect(service: Service) -> None:
    first = message("p1", "a")
    assert await consume(service, first) == Outcome.HANDLED
    assert await consume(service, first) == Outcome.DUPLICATE
    assert await markers(service) == ["a"]


async def test_transient_failure_is_retried_then_handled(service: Service) -> None:
    assert await consume(service, message("p1", "flaky-2")) == Outcome.HANDLED
    assert await markers(service) == ["flaky-2"]


async def test_dependency_outage_is_waited_without_spending_retries(service: Service) -> None:
    # 5 unavailable answers exceed the 3-attempt budget, yet the message is handled.
    assert await consume(service, message("p1", "down-5")) == Outcome.HANDLED
    assert await markers(service) == ["down-5"]


async def test_a_cut_database_connection_is_waited_out_like_a_dependency(service: Service) -> None:
    # The database is the service's own dependency: losing the connection 4 times (more
    # than the 3-attempt budget) is no fault of the message, which is handled.
    assert await consume(service, message("p1", "cut-4")) == Outcome.HANDLED
    assert await markers(service) == ["cut-4"]
    async with service.db.sessions() as s:
        assert (await s.execute(select(DeadLetterRow))).first() is None


async def test_exhausted_retries_dead_letter_with_reason_and_dlq_message(service: Service) -> None:
    assert await consume(service, message("p1", "flaky-9")) == Outcome.DEAD_LETTERED
    async with service.db.sessions() as s:
        dead = (await s.execute(select(DeadLetterRow))).scalar_one()
        dlq = (await s.execute(select(OutboxRow))).scalar_one()
    assert (dead.error_kind, dead.attempts, dead.status) == ("exhausted", 3, "open")
    assert "flaky" in dead.error
    assert dlq.topic == "patient.linked.dlq"
    headers = dict(dlq.headers)
    assert headers["dlq_attempts"] == "3"
    assert headers["dlq_error_kind"] == "exhausted"
    assert headers["ce_type"] == "patient.linked"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "invalid payload"),
        (json.dumps({"patient_id": "p1"}).encode(), "patient_fhir_id"),
    ],
)
async def test_unparseable_message_is_dead_lettered_at_once(
    service: Service, raw: bytes, reason: str
) -> None:
    assert await consume(service, message("p1", "x", raw=raw)) == Outcome.DEAD_LETTERED
    async with service.db.sessions() as s:
        dead = (await s.execute(select(DeadLetterRow))).scalar_one()
    assert dead.error_kind == "unparseable"
    assert reason in dead.error


async def test_bad_envelope_is_dead_lettered_naming_the_header(service: Service) -> None:
    msg = message("p1", "a")
    broken = RawMessage(
        **{**msg.__dict__, "headers": [(k, v) for k, v in msg.headers if k != "ce_time"]}
    )
    assert await consume(service, broken) == Outcome.DEAD_LETTERED
    async with service.db.sessions() as s:
        dead = (await s.execute(select(DeadLetterRow))).scalar_one()
    assert "ce_time" in dead.error


async def test_later_messages_of_a_dead_lettered_patient_are_parked_others_flow(
    service: Service,
) -> None:
    assert await consume(service, message("p1", "poison")) == Outcome.DEAD_LETTERED
    assert await consume(service, message("p1", "after-1")) == Outcome.PARKED
    assert await consume(service, message("p2", "other")) == Outcome.HANDLED
    assert await consume(service, message("p1", "after-2")) == Outcome.PARKED
    assert await markers(service) == ["other"]
    async with service.db.sessions() as s:
        parked = (await s.execute(select(ParkedRow).order_by(ParkedRow.id))).scalars().all()
    assert [p.key for p in parked] == ["p1", "p1"]


async def test_an_unparseable_message_of_a_blocked_patient_is_parked_behind_the_dead_letter(
    service: Service,
) -> None:
    # It never reaches a handler's transaction (where the dead-letter check runs): it must
    # still wait behind its key's open dead letter, not open a second one.
    assert await consume(service, message("p1", "poison")) == Outcome.DEAD_LETTERED
    assert await consume(service, message("p1", "x", raw=b"not json")) == Outcome.PARKED
    async with service.db.sessions() as s:
        dead = (await s.execute(select(DeadLetterRow))).scalars().all()
        parked = (await s.execute(select(ParkedRow))).scalars().all()
    assert len(dead) == 1
    assert [p.key for p in parked] == ["p1"]


async def test_a_handled_event_redelivered_while_its_patient_is_blocked_is_parked(
    service: Service,
) -> None:
    # Parking comes first: the release hands it to the inbox, which then skips it.
    handled = message("p1", "a")
    assert await consume(service, handled) == Outcome.HANDLED
    assert await consume(service, message("p1", "poison")) == Outcome.DEAD_LETTERED
    assert await consume(service, handled) == Outcome.PARKED
    async with service.db.sessions() as s:
        dead_id = (await s.execute(select(DeadLetterRow.id))).scalar_one()
    result = await service.runtime.discard(dead_id)
    assert result["released"] == 1
    assert await markers(service) == ["a"]


async def test_discarding_the_dead_letter_releases_parked_messages_in_order(
    service: Service,
) -> None:
    await consume(service, message("p1", "poison"))
    await consume(service, message("p1", "after-1"))
    await consume(service, message("p1", "after-2"))
    async with service.db.sessions() as s:
        dead_id = (await s.execute(select(DeadLetterRow.id))).scalar_one()
    result = await service.runtime.discard(dead_id)
    assert result["released"] == 2
    assert result["status"] == "discarded"
    assert await markers(service) == ["after-1", "after-2"]
    # The key is unblocked: the next message is handled directly.
    assert await consume(service, message("p1", "after-3")) == Outcome.HANDLED


async def test_redrive_handles_the_dead_letter_first_then_the_parked_ones(service: Service) -> None:
    await consume(service, message("p1", "flaky-4"))  # 3 attempts: dead-lettered
    await consume(service, message("p1", "after-1"))
    async with service.db.sessions() as s:
        dead_id = (await s.execute(select(DeadLetterRow.id))).scalar_one()
    result = await service.runtime.redrive(dead_id)  # 4th attempt succeeds
    assert result["status"] == "redriven"
    assert await markers(service) == ["flaky-4", "after-1"]


async def test_redrive_that_fails_again_keeps_the_key_blocked(service: Service) -> None:
    await consume(service, message("p1", "poison"))
    await consume(service, message("p1", "after-1"))
    async with service.db.sessions() as s:
        dead_id = (await s.execute(select(DeadLetterRow.id))).scalar_one()
    result = await service.runtime.redrive(dead_id)
    assert result["status"] == "open"
    assert await consume(service, message("p1", "after-2")) == Outcome.PARKED
    assert await markers(service) == []


async def test_a_parked_message_that_fails_becomes_the_new_blocker(service: Service) -> None:
    await consume(service, message("p1", "poison"))
    await consume(service, message("p1", "ok-1"))
    await consume(service, message("p1", "poison"))
    await consume(service, message("p1", "ok-2"))
    async with service.db.sessions() as s:
        first = (await s.execute(select(DeadLetterRow.id))).scalar_one()
    result = await service.runtime.discard(first)
    assert result["released"] == 1
    assert result["new_dead_letter"] is not None
    assert await markers(service) == ["ok-1"]
    second = await service.runtime.discard(result["new_dead_letter"])
    assert second["released"] == 1
    assert await markers(service) == ["ok-1", "ok-2"]


async def test_resolving_twice_is_refused(service: Service) -> None:
    await consume(service, message("p1", "poison"))
    async with service.db.sessions() as s:
        dead_id = (await s.execute(select(DeadLetterRow.id))).scalar_one()
    await service.runtime.discard(dead_id)
    with pytest.raises(ValueError, match="already discarded"):
        await service.runtime.discard(dead_id)
    with pytest.raises(LookupError):
        await service.runtime.discard(dead_id + 100)


async def test_the_lock_map_holds_only_keys_in_flight(service: Service) -> None:
    # Many patients, some events twice, handled concurrently: afterwards no lock is left.
    msgs = [message(f"p{n}", f"m{n}") for n in range(40)]
    outcomes = await asyncio.gather(*(consume(service, m) for m in msgs + msgs[:10]))
    assert Counter(outcomes)[Outcome.HANDLED] == 40
    assert service.runtime.keys_in_flight == 0


async def test_the_inbox_forgets_events_older_than_its_retention(service: Service) -> None:
    old, recent = message("p1", "old"), message("p1", "recent")
    assert await consume(service, old) == Outcome.HANDLED
    assert await consume(service, recent) == Outcome.HANDLED
    retention = timedelta(hours=service.settings.inbox_retention_hours)
    async with service.db.transaction() as s:
        await s.execute(
            update(InboxRow)
            .where(InboxRow.event_id == parse_headers(old.headers).id)
            .values(handled_at=datetime.now(UTC) - retention - timedelta(minutes=1))
        )
    assert await service.relay.purge_inbox() == 1
    async with service.db.sessions() as s:
        kept = (await s.execute(select(InboxRow.event_id))).scalars().all()
    assert kept == [parse_headers(recent.headers).id]
    # Within the retention a redelivery is still recognised.
    assert await consume(service, recent) == Outcome.DUPLICATE


# -- batches (a partition's fetched messages in one transaction) -----------------------


async def consume_batch(svc: Service, msgs: list[RawMessage]) -> list[str]:
    sub = svc.runtime.router.subscriptions[0]
    return await svc.runtime.consume_batch(sub, msgs)


async def inbox_size(svc: Service) -> int:
    async with svc.db.sessions() as s:
        return len((await s.execute(select(InboxRow))).scalars().all())


async def test_a_batch_is_handled_in_order_with_one_inbox_row_per_event(service: Service) -> None:
    batch = [message(f"p{n % 3}", f"m{n}") for n in range(8)]
    assert await consume_batch(service, batch) == [Outcome.HANDLED] * 8
    assert await markers(service) == [f"m{n}" for n in range(8)]
    assert await inbox_size(service) == 8
    # The same batch again (offsets not committed before a crash): no second effect.
    assert await consume_batch(service, batch) == [Outcome.DUPLICATE] * 8
    assert await markers(service) == [f"m{n}" for n in range(8)]


async def test_each_partition_batch_is_counted_by_its_size(service: Service) -> None:
    sub = service.runtime.router.subscriptions[0]
    labels = {"service": "fake", "consumer": sub.name}

    def sizes() -> tuple[float, float]:
        count = REGISTRY.get_sample_value("consumer_batch_events_count", labels) or 0.0
        total = REGISTRY.get_sample_value("consumer_batch_events_sum", labels) or 0.0
        return count, total

    before = sizes()
    other = [replace(message("p9", f"q{n}"), partition=1) for n in range(2)]
    await consume_batch(service, [message(f"p{n}", f"m{n}") for n in range(5)] + other)
    after = sizes()
    # Two partitions: one transaction of five events and one of two.
    assert (after[0] - before[0], after[1] - before[1]) == (2.0, 7.0)


async def test_an_event_twice_in_one_batch_has_one_effect(service: Service) -> None:
    first = message("p1", "a")
    assert await consume_batch(service, [first, message("p2", "b"), first]) == [
        Outcome.HANDLED,
        Outcome.HANDLED,
        Outcome.DUPLICATE,
    ]
    assert await markers(service) == ["a", "b"]


async def test_a_poison_event_in_a_batch_is_the_only_one_dead_lettered(service: Service) -> None:
    batch = [
        message("p1", "before"),
        message("p2", "poison"),
        message("p3", "after"),
        message("p2", "behind-poison"),
        message("p1", "last"),
    ]
    assert await consume_batch(service, batch) == [
        Outcome.HANDLED,
        Outcome.DEAD_LETTERED,
        Outcome.HANDLED,
        Outcome.PARKED,
        Outcome.HANDLED,
    ]
    assert await markers(service) == ["before", "after", "last"]
    async with service.db.sessions() as s:
        dead = (await s.execute(select(DeadLetterRow))).scalar_one()
        parked = (await s.execute(select(ParkedRow))).scalar_one()
    assert (dead.key, dead.error_kind) == ("p2", "permanent")
    assert parked.key == "p2"


async def test_an_unparseable_message_in_a_batch_is_the_only_one_dead_lettered(
    service: Service,
) -> None:
    batch = [message("p1", "a"), message("p2", "x", raw=b"{oops"), message("p3", "b")]
    assert await consume_batch(service, batch) == [
        Outcome.HANDLED,
        Outcome.DEAD_LETTERED,
        Outcome.HANDLED,
    ]
    assert await markers(service) == ["a", "b"]


async def test_a_batch_whose_dependency_is_down_waits_and_keeps_every_event(
    service: Service,
) -> None:
    batch = [message("p1", "a"), message("p2", "down-4"), message("p3", "b")]
    assert await consume_batch(service, batch) == [Outcome.HANDLED] * 3
    assert await markers(service) == ["a", "down-4", "b"]
    async with service.db.sessions() as s:
        assert (await s.execute(select(DeadLetterRow))).first() is None
    # Waited as a batch (4 unavailable answers exceed the 3-attempt budget of one event):
    # the whole batch was tried again each time, and nothing was stored until it passed.
    assert fakeservice.attempts[parse_headers(batch[0].headers).id] == 5


async def test_a_batch_whose_database_connection_is_cut_waits_and_keeps_every_event(
    service: Service,
) -> None:
    batch = [message("p1", "a"), message("p2", "cut-4"), message("p3", "b")]
    assert await consume_batch(service, batch) == [Outcome.HANDLED] * 3
    assert await markers(service) == ["a", "cut-4", "b"]
    async with service.db.sessions() as s:
        assert (await s.execute(select(DeadLetterRow))).first() is None
    assert fakeservice.attempts[parse_headers(batch[0].headers).id] == 5


async def test_a_batch_parks_the_messages_of_a_blocked_key_and_handles_the_rest(
    service: Service,
) -> None:
    assert await consume(service, message("p1", "poison")) == Outcome.DEAD_LETTERED
    batch = [message("p1", "held-1"), message("p2", "free"), message("p1", "held-2")]
    assert await consume_batch(service, batch) == [
        Outcome.PARKED,
        Outcome.HANDLED,
        Outcome.PARKED,
    ]
    assert await markers(service) == ["free"]
    async with service.db.sessions() as s:
        dead = (await s.execute(select(DeadLetterRow))).scalar_one()
    released = await service.runtime.discard(dead.id)
    assert released["released"] == 2
    assert await markers(service) == ["free", "held-1", "held-2"]


async def test_batches_of_several_partitions_each_keep_their_order(service: Service) -> None:
    def on(partition: int, patient: str, marker: str) -> RawMessage:
        msg = message(patient, marker)
        return RawMessage(**{**msg.__dict__, "partition": partition})

    batch = [on(n % 2, f"p{n % 2}", f"{n % 2}-{n}") for n in range(10)]
    outcomes = await consume_batch(service, batch)
    assert outcomes == [Outcome.HANDLED] * 10
    async with service.db.sessions() as s:
        rows = await effects(s)
    for side in (0, 1):
        mine = [e.marker for e in rows if e.patient_id == f"p{side}"]
        assert mine == [f"{side}-{n}" for n in range(10) if n % 2 == side]
