"""Scheduling's handlers without a broker (`servicekit.testing.deliver`: the consumer's own
path, on a real PostgreSQL); `test_ehr_changes_kafka.py` runs the same through Kafka."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from asgi_lifespan import LifespanManager

from contracts.appointment import AppointmentStatus, AppointmentUpdatedV1, SlotStatus, SlotUpdatedV1
from contracts.base import SourceVersion
from scheduling import store
from scheduling.app import build
from scheduling.settings import Settings
from servicekit.app import Service
from servicekit.testing import broker_less_settings, deliver, service_auth_for

START = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)


def _slot(version: str, status: SlotStatus) -> SlotUpdatedV1:
    return SlotUpdatedV1(
        slot_fhir_id="slot-1",
        schedule_fhir_id="sched-1",
        practitioner_fhir_id="dr-a",
        status=status,
        start=START,
        end=START + timedelta(minutes=20),
        source=SourceVersion(
            resource_type="Slot",
            fhir_id="slot-1",
            version_id=version,
            last_updated=START + timedelta(minutes=int(version)),
        ),
    )


@pytest.fixture
async def scheduling(database_url: str) -> AsyncIterator[Service]:
    service = build(Settings(**broker_less_settings(database_url)))
    async with LifespanManager(service.app):
        yield service


async def test_an_older_slot_version_never_overwrites_a_newer_one(scheduling: Service) -> None:
    assert await deliver(scheduling, _slot("2", SlotStatus.BUSY), subject="slot-1") == "handled"
    assert await deliver(scheduling, _slot("1", SlotStatus.FREE), subject="slot-1") == "handled"
    async with scheduling.db.sessions() as session:
        slot = await store.get_slot(session, "slot-1")
    assert slot is not None
    assert (slot.status, slot.source_version) == ("busy", "2")


def _made_in_ehr(
    version: str, status: AppointmentStatus = AppointmentStatus.BOOKED
) -> AppointmentUpdatedV1:
    return AppointmentUpdatedV1(
        appointment_fhir_id="ap-1",
        patient_id="pat-1",
        status=status,
        start=START,
        end=START + timedelta(minutes=20),
        slot_fhir_ids=["slot-1"],
        practitioner_fhir_id="dr-a",
        source=SourceVersion(
            resource_type="Appointment",
            fhir_id="ap-1",
            version_id=version,
            last_updated=START + timedelta(minutes=int(version)),
        ),
    )


async def test_an_appointment_made_in_the_ehr_is_shown_to_the_patient(
    scheduling: Service,
) -> None:
    made = _made_in_ehr("1")
    event_id = "7a0c2f4e-1d2b-4c3a-9e8f-0a1b2c3d4e5f"
    assert await deliver(scheduling, made, subject="pat-1", event_id=event_id) == "handled"
    assert await deliver(scheduling, made, subject="pat-1", event_id=event_id) == "duplicate"
    async with scheduling.db.sessions() as session:
        rows = await store.appointments_of(session, "pat-1")
    assert [(r.id, r.status) for r in rows] == [("ehr-ap-1", "booked")]


async def test_a_cancellation_waits_for_an_ehr_change_of_the_same_patient_in_flight(
    scheduling: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `appointment.updated` consumer and the patient's cancel both read an appointment
    and then write it: the consumer read it, the cancel committed, then the consumer wrote
    `booked` over `cancelled`. A patient's appointment writers take turns."""
    pending = _made_in_ehr("1", AppointmentStatus.PENDING)
    assert await deliver(scheduling, pending, subject="pat-1") == "handled"
    paused, resume = asyncio.Event(), asyncio.Event()
    release = store.release_holds_except

    async def pausing(
        session: store.AsyncSession, appointment_id: str, keep: set[str], now: datetime
    ) -> None:
        paused.set()
        await resume.wait()
        await release(session, appointment_id, keep, now)

    monkeypatch.setattr(store, "release_holds_except", pausing)
    # The clinic confirms the appointment in the EHR (version 2) ...
    change = asyncio.ensure_future(deliver(scheduling, _made_in_ehr("2"), subject="pat-1"))
    await asyncio.wait_for(paused.wait(), timeout=10)
    # ... while the patient cancels.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=scheduling.app),
        base_url="http://scheduling",
        auth=service_auth_for(scheduling.app),
    ) as client:
        cancel = asyncio.ensure_future(
            client.post("/patients/pat-1/appointments/ehr-ap-1/cancel", json={})
        )
        done, _ = await asyncio.wait({cancel}, timeout=1.0)
        resume.set()
        assert await change == "handled"
        answer = await cancel
    assert answer.status_code == 200, answer.text
    async with scheduling.db.sessions() as session:
        row = await store.get_appointment(session, "ehr-ap-1")
    assert row is not None
    # The cancel read the confirmed version: the EHR is asked to cancel version 2.
    assert (row.status, row.ehr_version) == ("cancelled", "2")
    assert not done, "the cancel did not wait for the EHR change"
