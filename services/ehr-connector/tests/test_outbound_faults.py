"""An EHR outage (503 for 10 s) and rate limiting (429 with Retry-After) on the way out:
events wait in Kafka while the circuit is open, then every one is written exactly once, in
each patient's order."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY

from contracts.appointment import AppointmentStatus
from contracts.message import MessageSentV1
from ehr_connector import store
from ehr_connector.outbound.domain.identifiers import MESSAGE_ID
from servicekit.app import Service
from servicekit.testing import eventually

from .conftest import T0, Harness

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
PATIENTS = {"pat-alice": "demo-alice", "pat-bob": "demo-bob"}
OPS = {"Authorization": "Bearer dev-ops-token"}


def _messages(patient_id: str, thread_id: str, numbers: range) -> list[MessageSentV1]:
    return [
        MessageSentV1(
            message_id=f"{thread_id}-{n}",
            thread_id=thread_id,
            patient_id=patient_id,
            recipient_pool="primary",
            subject="Question",
            body=f"Message number {n}",
            sent_at=T0 + timedelta(minutes=n),
        )
        for n in numbers
    ]


def _metric(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _filed_once_in_order(
    harness: Harness, service: Service, messages: list[MessageSentV1]
) -> None:
    updated: list[str] = []
    for message in messages:
        found = await harness.with_identifier("Communication", MESSAGE_ID, message.message_id)
        assert len(found) == 1, message.message_id
        assert found[0]["payload"] == [{"contentString": message.body}]
        updated.append(found[0]["meta"]["lastUpdated"])
        async with service.db.sessions() as session:
            log = await store.writes_for(session, "message.sent", message.message_id)
        assert [w.interaction for w in log] == ["create"], message.message_id
    assert updated == sorted(updated), "a patient's messages were written out of order"


async def test_outage_and_rate_limit_lose_nothing_double_nothing_and_keep_order(
    harness: Harness,
) -> None:
    threads = {pid: f"thread-{uuid.uuid4().hex[:8]}" for pid in PATIENTS}
    during_outage = {pid: _messages(pid, threads[pid], range(1, 6)) for pid in PATIENTS}
    while_throttled = {pid: _messages(pid, threads[pid], range(6, 11)) for pid in PATIENTS}
    bookings = {
        pid: harness.booking(pid, fid, harness.next_slot()) for pid, fid in PATIENTS.items()
    }

    async with harness.connector(ehr_breaker_failure_threshold=3) as (service, client):
        for pid, fid in PATIENTS.items():
            await harness.remember_patient(service, pid, fid)
        # Warm up: consumers assigned, token cached, before the EHR goes down.
        warm = {pid: _messages(pid, threads[pid], range(0, 1)) for pid in PATIENTS}
        await harness.produce([(pid, m) for pid, ms in warm.items() for m in ms])

        async def all_written(batch: dict[str, list[MessageSentV1]]) -> bool:
            # Asked of the connector's write log: the test's own EHR reads would meet the
            # outage and eat the rate limit's budget.
            async with service.db.sessions() as session:
                for messages in batch.values():
                    for message in messages:
                        if not await store.writes_for(session, "message.sent", message.message_id):
                            return False
            return True

        await eventually(lambda: all_written(warm), timeout=90)

        opened_before = _metric("ehr_circuit_breaker_transitions_total", {"to": "open"})
        await harness.admin.post("/sandbox/faults", json={"down_for_s": 10})
        events = [
            (pid, m) for n in range(5) for pid, ms in during_outage.items() for m in ms[n : n + 1]
        ]
        events += list(bookings.items())
        await harness.produce(events)
        await asyncio.sleep(4)
        # Still down: nothing written, nothing dead-lettered, the circuit is open.
        readiness = (await client.get("/readyz")).json()
        assert readiness["checks"]["ehr"].startswith("unavailable")
        assert _metric("ehr_circuit_breaker_transitions_total", {"to": "open"}) > opened_before

        await eventually(lambda: all_written(during_outage), timeout=120, interval=0.5)
        await harness.updates(
            lambda us: all(
                any(
                    u.appointment_id == b.appointment_id and u.status is AppointmentStatus.BOOKED
                    for u in us
                )
                for b in bookings.values()
            )
        )
        assert (await client.get("/readyz")).json()["checks"]["ehr"] == "ok"

        retried_before = _metric(
            "ehr_call_retries_total", {"interaction": "create", "reason": "http_429"}
        )
        await harness.admin.post(
            "/sandbox/faults", json={"rate_limit": {"rate": 2, "retry_after_s": 1}}
        )
        events = [
            (pid, m) for n in range(5) for pid, ms in while_throttled.items() for m in ms[n : n + 1]
        ]
        await harness.produce(events)
        await eventually(lambda: all_written(while_throttled), timeout=120, interval=0.5)
        assert (
            _metric("ehr_call_retries_total", {"interaction": "create", "reason": "http_429"})
            > retried_before
        )
        await harness.admin.delete("/sandbox/faults")

        for pid in PATIENTS:
            await _filed_once_in_order(
                harness, service, warm[pid] + during_outage[pid] + while_throttled[pid]
            )
        dead = (await client.get("/ops/dead-letters", headers=OPS)).json()
        assert dead == []
    for booking in bookings.values():
        assert (await harness.read(f"Slot/{booking.slot_fhir_id}"))["status"] == "busy"
