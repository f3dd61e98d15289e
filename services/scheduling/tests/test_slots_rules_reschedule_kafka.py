"""Slot search, the booking race, clinic rules and reschedule, through scheduling's HTTP API
on PostgreSQL with slots and EHR answers arriving over a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from contracts.appointment import (
    AppointmentRescheduledV1,
    AppointmentStatus,
    AppointmentUpdatedV1,
    SlotStatus,
    SlotUpdatedV1,
)
from contracts.base import Coding, SourceVersion
from contracts.intake import IntakeRemindedV1
from devstack.topics import ensure_topics
from scheduling.app import build
from scheduling.service import Context, remind_missing_intake
from scheduling.settings import Settings
from servicekit.testing import (
    eventually,
    isolated_settings,
    produce_events,
    read_topic,
    serving_in_process,
)

pytestmark = [pytest.mark.integration]
NOW = datetime.now(UTC).replace(microsecond=0)
VISIT = "http://terminology.hl7.org/CodeSystem/v2-0276"


def _slot(
    slot_id: str,
    start: datetime,
    *,
    practitioner: str = "dr-a",
    location: str = "clinic-main",
    visit: str = "ROUTINE",
) -> SlotUpdatedV1:
    return SlotUpdatedV1(
        slot_fhir_id=slot_id,
        schedule_fhir_id=f"sched-{practitioner}",
        practitioner_fhir_id=practitioner,
        location_fhir_id=location,
        service_type=Coding(system="st", code="124", display="General Practice"),
        visit_type=Coding(system=VISIT, code=visit, display=visit.title()),
        status=SlotStatus.FREE,
        start=start,
        end=start + timedelta(minutes=20),
        source=SourceVersion(
            resource_type="Slot", fhir_id=slot_id, version_id="1", last_updated=NOW
        ),
    )


SLOTS = [
    _slot("s-soon", NOW + timedelta(hours=3)),
    _slot("s-d2", NOW + timedelta(days=2)),
    _slot("s-d3", NOW + timedelta(days=3), practitioner="dr-b"),
    _slot("s-d4", NOW + timedelta(days=4), location="clinic-north"),
    _slot("s-d4b", NOW + timedelta(days=4, hours=1), visit="FOLLOWUP"),
    _slot("s-far", NOW + timedelta(days=10)),
    _slot("s-past", NOW - timedelta(hours=2)),
]


async def _slot_ids(http: httpx.AsyncClient, **params: Any) -> list[str]:
    return [s["id"] for s in (await http.get("/slots", params=params)).json()["items"]]


@pytest.fixture
async def client(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = Settings(
        **isolated_settings(database_url, kafka_bootstrap, unique_prefix),
        booking_horizon_days=7,
        max_open_bookings=2,
        change_cutoff_hours=24,
        intake_reminder_interval_s=0.2,
    )
    service = build(settings)
    async with serving_in_process(service.app, "http://scheduling") as http:
        await produce_events(
            kafka_bootstrap, [(s.schedule_fhir_id, s) for s in SLOTS], topic_prefix=unique_prefix
        )
        since = (NOW - timedelta(days=1)).isoformat()

        async def cached() -> bool:
            return len(await _slot_ids(http, start=since, end=(NOW + timedelta(days=30)))) == 7

        await eventually(cached, timeout=60)
        yield http


async def test_slots_are_searched_by_time_practitioner_location_visit_type_and_paged(
    client: httpx.AsyncClient,
) -> None:
    # `start` defaults to now: the past slot is not offered; `end` defaults to 14 days.
    assert await _slot_ids(client) == ["s-soon", "s-d2", "s-d3", "s-d4", "s-d4b", "s-far"]
    assert await _slot_ids(client, practitioner="dr-b") == ["s-d3"]
    assert await _slot_ids(client, location="clinic-north") == ["s-d4"]
    assert await _slot_ids(client, visit_type="FOLLOWUP") == ["s-d4b"]
    assert await _slot_ids(client, service_type="124", end=NOW + timedelta(days=3)) == [
        "s-soon",
        "s-d2",
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/slots", params=params)).json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["s-soon", "s-d2", "s-d3", "s-d4", "s-d4b", "s-far"]
    item = (await client.get("/slots", params={"practitioner": "dr-b"})).json()["items"][0]
    assert datetime.fromisoformat(item["start"]).utcoffset() == timedelta(0)
    assert (item["location"], item["visit_type"]) == ("clinic-main", "ROUTINE")
    bad = await client.get("/slots", params={"cursor": "nonsense"})
    naive = await client.get("/slots", params={"start": "2026-12-01T10:00:00"})
    assert (bad.status_code, naive.status_code) == (422, 422)


async def test_thirty_concurrent_bookings_of_one_slot_one_wins_the_rest_409_before_the_ehr(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    async def attempt(n: int) -> httpx.Response:
        return await client.post(
            f"/patients/pat-{n}/appointments",
            json={"slot_id": "s-d2", "patient_fhir_id": f"fhir-{n}"},
            headers={"Idempotency-Key": f"race-{n}"},
        )

    answers = await asyncio.gather(*(attempt(n) for n in range(30)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] + [409] * 29, statuses
    assert all(
        a.headers["content-type"] == "application/problem+json"
        for a in answers
        if a.status_code == 409
    )
    winner = next(a for a in answers if a.status_code == 201).json()
    booked = await read_topic(
        kafka_bootstrap, f"{unique_prefix}appointment.booked", until=lambda s: len(s) >= 1
    )
    # Only the winner's booking goes to the EHR: read past it to be sure no other follows.
    marker = await client.post(
        "/patients/pat-x/appointments",
        json={"slot_id": "s-d3", "patient_fhir_id": "fhir-x"},
    )
    assert marker.status_code == 201
    booked = await read_topic(
        kafka_bootstrap, f"{unique_prefix}appointment.booked", until=lambda s: len(s) >= 2
    )
    slots = [b.value for b in booked]
    assert sum(b'"s-d2"' in v for v in slots) == 1
    assert winner["id"].encode() in next(v for v in slots if b'"s-d2"' in v)
    losers = [n for n, a in enumerate(answers) if a.status_code == 409]
    for n in losers[:3]:
        assert (await client.get(f"/patients/pat-{n}/appointments")).json() == []


async def test_clinic_rules_horizon_open_bookings_and_no_cancel_close_to_the_visit(
    client: httpx.AsyncClient,
) -> None:
    def book(slot: str, key: str) -> Any:
        return client.post(
            "/patients/pat-1/appointments",
            json={"slot_id": slot, "patient_fhir_id": "demo-alice"},
            headers={"Idempotency-Key": key},
        )

    far = await book("s-far", "r-1")
    assert far.status_code == 422
    assert far.json()["rule"] == "horizon"
    soon = await book("s-soon", "r-2")
    assert soon.status_code == 201
    assert (await book("s-d2", "r-3")).status_code == 201
    third = await book("s-d3", "r-4")
    assert third.status_code == 409
    assert third.json()["rule"] == "max-open-bookings"
    assert "cancel one" in third.json()["detail"]
    late = await client.post(f"/patients/pat-1/appointments/{soon.json()['id']}/cancel", json={})
    assert late.status_code == 409
    assert late.json()["rule"] == "change-cutoff"
    assert "less than 24 hours" in late.json()["detail"]
    assert "call" in late.json()["detail"]
    past = await book("s-past", "r-5")
    assert past.status_code == 409


def _ehr_says(
    appointment_id: str, version: str, slot: str, start: datetime, reason: str | None = None
) -> AppointmentUpdatedV1:
    return AppointmentUpdatedV1(
        appointment_fhir_id="ap-1",
        appointment_id=appointment_id,
        patient_id="pat-1",
        status=AppointmentStatus.BOOKED,
        start=start,
        end=start + timedelta(minutes=20),
        slot_fhir_ids=[slot],
        practitioner_fhir_id="dr-a",
        practitioner_name="Dr. A",
        location_fhir_id="clinic-main",
        location_name="Main Clinic",
        reason=reason,
        source=SourceVersion(
            resource_type="Appointment", fhir_id="ap-1", version_id=version, last_updated=NOW
        ),
    )


async def test_reschedule_holds_the_new_slot_then_follows_the_ehrs_move_or_refusal(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    d2, d3, d4 = (s.start for s in SLOTS[1:4])
    booked = await client.post(
        "/patients/pat-1/appointments", json={"slot_id": "s-d2", "patient_fhir_id": "demo-alice"}
    )
    appointment = booked.json()["id"]
    path = f"/patients/pat-1/appointments/{appointment}"
    early = await client.post(f"{path}/reschedule", json={"slot_id": "s-d3"})
    assert early.status_code == 409  # not confirmed by the EHR yet
    await produce_events(
        kafka_bootstrap,
        [("pat-1", _ehr_says(appointment, "1", "s-d2", d2))],
        topic_prefix=unique_prefix,
    )

    async def state(key: str, value: object) -> bool:
        return bool((await client.get(path)).json()[key] == value)

    await eventually(lambda: state("status", "booked"), timeout=60)
    moving = await client.post(
        f"{path}/reschedule", json={"slot_id": "s-d3"}, headers={"Idempotency-Key": "mv-1"}
    )
    assert moving.status_code == 202, moving.text
    assert (moving.json()["pending_slot"], moving.json()["slot"]) == ("s-d3", "s-d2")
    assert "s-d3" not in await _slot_ids(client)
    second = await client.post(f"{path}/reschedule", json={"slot_id": "s-d4"})
    assert second.status_code == 409
    events = await read_topic(
        kafka_bootstrap, f"{unique_prefix}appointment.rescheduled", until=lambda s: len(s) >= 1
    )
    event = AppointmentRescheduledV1.model_validate_json(events[0].value)
    assert (event.appointment_fhir_id, event.based_on_version) == ("ap-1", "1")
    assert (event.old_slot_fhir_id, event.new_slot_fhir_id, event.start) == ("s-d2", "s-d3", d3)

    # The EHR moved it: the old slot is let go, the appointment is at the new time.
    await produce_events(
        kafka_bootstrap,
        [("pat-1", _ehr_says(appointment, "2", "s-d3", d3))],
        topic_prefix=unique_prefix,
    )
    await eventually(lambda: state("slot", "s-d3"), timeout=60)
    moved = (await client.get(path)).json()
    assert moved["pending_slot"] is None
    assert (moved["practitioner_name"], moved["location_name"]) == ("Dr. A", "Main Clinic")
    assert "s-d2" in await _slot_ids(client)

    # The next move is refused by the EHR: the appointment keeps its time, the slot is free.
    assert (await client.post(f"{path}/reschedule", json={"slot_id": "s-d4"})).status_code == 202
    refused = _ehr_says(appointment, "2", "s-d3", d3, reason="The new slot is no longer free")
    await produce_events(kafka_bootstrap, [("pat-1", refused)], topic_prefix=unique_prefix)
    await eventually(lambda: state("pending_slot", None), timeout=60)
    kept = (await client.get(path)).json()
    assert (kept["slot"], kept["status"]) == ("s-d3", "booked")
    assert kept["status_reason"] == "The new slot is no longer free"
    assert "s-d4" in await _slot_ids(client)
    assert d4 > d3


async def test_a_visit_within_24_hours_with_missing_intake_gets_one_reminder(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    soon = await client.post(
        "/patients/pat-1/appointments", json={"slot_id": "s-soon", "patient_fhir_id": "f-1"}
    )
    later = await client.post(
        "/patients/pat-1/appointments", json={"slot_id": "s-d2", "patient_fhir_id": "f-1"}
    )
    assert soon.json()["intake_due"] is True
    assert later.json()["intake_due"] is False
    reminded = await read_topic(
        kafka_bootstrap, f"{unique_prefix}intake.reminded", until=lambda s: len(s) >= 1
    )
    event = IntakeRemindedV1.model_validate_json(reminded[0].value)
    assert (event.appointment_id, event.patient_id) == (soon.json()["id"], "pat-1")
    assert event.questionnaire_canonical.endswith("Questionnaire/intake|1")
    assert reminded[0].key == "pat-1"
    listed = (await client.get("/patients/pat-1/appointments")).json()
    assert [a["intake_due"] for a in listed] == [True, False]


async def test_each_visit_within_the_window_is_reminded_once(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = Settings(
        **isolated_settings(database_url, kafka_bootstrap, unique_prefix),
        intake_reminder_interval_s=3600,  # the loop's first round runs before any booking
    )
    running = build(settings)
    ctx = Context.of(running)
    async with serving_in_process(running.app, "http://scheduling") as http:
        await produce_events(
            kafka_bootstrap, [("s", SLOTS[0]), ("s", SLOTS[1])], topic_prefix=unique_prefix
        )

        async def cached() -> bool:
            return len(await _slot_ids(http)) == 2

        await eventually(cached, timeout=60)
        for slot in ("s-soon", "s-d2"):
            booked = await http.post(
                "/patients/pat-1/appointments", json={"slot_id": slot, "patient_fhir_id": "f-1"}
            )
            assert booked.status_code == 201
        rounds = []
        for _ in range(2):
            async with running.db.transaction() as session:
                rounds.append(await remind_missing_intake(ctx, session, datetime.now(UTC)))
        assert rounds == [1, 0]


async def test_a_move_made_by_the_clinic_in_the_ehr_lets_the_old_slot_go(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    booked = await client.post(
        "/patients/pat-1/appointments", json={"slot_id": "s-d2", "patient_fhir_id": "f-1"}
    )
    appointment = booked.json()["id"]
    d2, d4b = SLOTS[1].start, SLOTS[4].start
    assert "s-d2" not in await _slot_ids(client)
    await produce_events(
        kafka_bootstrap,
        [
            ("pat-1", _ehr_says(appointment, "1", "s-d2", d2)),
            ("pat-1", _ehr_says(appointment, "2", "s-d4b", d4b)),
        ],
        topic_prefix=unique_prefix,
    )

    async def moved() -> bool:
        got = (await client.get(f"/patients/pat-1/appointments/{appointment}")).json()
        return bool(got["slot"] == "s-d4b")

    await eventually(moved, timeout=60)
    assert "s-d2" in await _slot_ids(client)
