"""Booking, cancelling and intake: the slot is held, the events reach the topics, retries
and conflicts are handled."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from contracts.appointment import (
    AppointmentBookedV1,
    AppointmentCancelledV1,
    AppointmentStatus,
    AppointmentUpdatedV1,
    SlotStatus,
    SlotUpdatedV1,
)
from contracts.base import SourceVersion
from devstack.topics import ensure_topics
from scheduling.app import build
from scheduling.settings import Settings
from servicekit.testing import (
    eventually,
    isolated_settings,
    produce_events,
    read_topic,
    serving_in_process,
)

pytestmark = [pytest.mark.integration]
SOON = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)


def _slot(slot_id: str, start: datetime, version: str = "1") -> SlotUpdatedV1:
    return SlotUpdatedV1(
        slot_fhir_id=slot_id,
        schedule_fhir_id="sched-1",
        practitioner_fhir_id="dr-a",
        status=SlotStatus.FREE,
        start=start,
        end=start + timedelta(minutes=20),
        source=SourceVersion(
            resource_type="Slot", fhir_id=slot_id, version_id=version, last_updated=start
        ),
    )


@pytest.fixture
async def client(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    service = build(Settings(**isolated_settings(database_url, kafka_bootstrap, unique_prefix)))
    async with serving_in_process(service.app, "http://scheduling") as http:
        await produce_events(
            kafka_bootstrap,
            [
                ("s1", _slot("slot-1", SOON)),
                ("s2", _slot("slot-2", SOON + timedelta(hours=1))),
                ("s3", _slot("slot-past", datetime.now(UTC) - timedelta(hours=1))),
            ],
            topic_prefix=unique_prefix,
        )

        async def cached() -> bool:
            slots = (
                await http.get(
                    "/slots", params={"start": (datetime.now(UTC) - timedelta(days=1)).isoformat()}
                )
            ).json()["items"]
            return len(slots) == 3

        await eventually(cached, timeout=60)
        yield http


BOOK = {"slot_id": "slot-1", "patient_fhir_id": "demo-alice", "reason": "Check-up"}


async def test_booking_holds_the_slot_and_publishes_once_even_when_retried(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    first = await client.post(
        "/patients/pat-1/appointments", json=BOOK, headers={"Idempotency-Key": "k-1"}
    )
    retry = await client.post(
        "/patients/pat-1/appointments", json=BOOK, headers={"Idempotency-Key": "k-1"}
    )
    assert first.status_code == 201
    assert retry.status_code == 201
    assert retry.json() == first.json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert first.json()["status"] == "pending"
    reused = await client.post(
        "/patients/pat-1/appointments",
        json={**BOOK, "slot_id": "slot-2"},
        headers={"Idempotency-Key": "k-1"},
    )
    assert reused.status_code == 422
    taken = await client.post(
        "/patients/pat-2/appointments", json={**BOOK, "patient_fhir_id": "demo-bob"}
    )
    assert taken.status_code == 409
    assert taken.headers["content-type"] == "application/problem+json"
    free = (await client.get("/slots")).json()["items"]
    assert "slot-1" not in {s["id"] for s in free}
    seen = await read_topic(
        kafka_bootstrap, f"{unique_prefix}appointment.booked", until=lambda s: len(s) >= 1
    )
    await_more = await read_topic(
        kafka_bootstrap,
        f"{unique_prefix}appointment.booked",
        until=lambda s: len(s) >= 1,
        timeout=5,
    )
    assert len(await_more) == 1
    booked = AppointmentBookedV1.model_validate_json(seen[0].value)
    assert (booked.appointment_id, booked.slot_fhir_id, booked.patient_fhir_id) == (
        first.json()["id"],
        "slot-1",
        "demo-alice",
    )
    assert seen[0].key == "pat-1"


async def test_ehr_confirmation_then_cancel(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    appointment = (
        await client.post("/patients/pat-1/appointments", json={**BOOK, "slot_id": "slot-2"})
    ).json()
    confirmed = AppointmentUpdatedV1(
        appointment_fhir_id="ehr-ap-9",
        appointment_id=appointment["id"],
        patient_id="pat-1",
        status=AppointmentStatus.BOOKED,
        start=SOON,
        end=SOON + timedelta(minutes=20),
        slot_fhir_ids=["slot-2"],
        source=SourceVersion(
            resource_type="Appointment", fhir_id="ehr-ap-9", version_id="1", last_updated=SOON
        ),
    )
    await produce_events(kafka_bootstrap, [("pat-1", confirmed)], topic_prefix=unique_prefix)

    async def booked() -> bool:
        return (await client.get(f"/patients/pat-1/appointments/{appointment['id']}")).json()[
            "status"
        ] == "booked"

    await eventually(booked, timeout=60)
    cancelled = await client.post(
        f"/patients/pat-1/appointments/{appointment['id']}/cancel", json={"reason_code": "pat"}
    )
    again = await client.post(f"/patients/pat-1/appointments/{appointment['id']}/cancel", json={})
    assert cancelled.json()["status"] == again.json()["status"] == "cancelled"
    free = {s["id"] for s in (await client.get("/slots")).json()["items"]}
    assert "slot-2" in free  # the hold is released with the cancellation
    other = await client.post(f"/patients/pat-2/appointments/{appointment['id']}/cancel", json={})
    assert other.status_code == 404
    seen = await read_topic(
        kafka_bootstrap, f"{unique_prefix}appointment.cancelled", until=lambda s: len(s) >= 1
    )
    event = AppointmentCancelledV1.model_validate_json(seen[0].value)
    assert (event.appointment_fhir_id, event.based_on_version, event.reason_code) == (
        "ehr-ap-9",
        "1",
        "pat",
    )


async def test_a_past_or_unknown_slot_cannot_be_booked(client: httpx.AsyncClient) -> None:
    past = await client.post("/patients/pat-1/appointments", json={**BOOK, "slot_id": "slot-past"})
    unknown = await client.post("/patients/pat-1/appointments", json={**BOOK, "slot_id": "nope"})
    invalid = await client.post("/patients/pat-1/appointments", json={"slot_id": "slot-1"})
    assert (past.status_code, unknown.status_code, invalid.status_code) == (409, 404, 422)
