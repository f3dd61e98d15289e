"""Slots and appointment changes from the EHR, through a real broker, read back over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from contracts.appointment import AppointmentStatus, AppointmentUpdatedV1, SlotStatus, SlotUpdatedV1
from contracts.base import SourceVersion
from devstack.topics import ensure_topics
from scheduling.app import build
from scheduling.settings import Settings
from servicekit.testing import eventually, isolated_settings, produce_events, serving_in_process

pytestmark = [pytest.mark.integration]
START = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)


def _slot(version: str, status: SlotStatus) -> SlotUpdatedV1:
    return SlotUpdatedV1(
        slot_fhir_id="slot-1",
        schedule_fhir_id="sched-1",
        practitioner_fhir_id="dr-a",
        status=status,
        start=START,
        end=START + timedelta(minutes=20),
        source=SourceVersion(
            resource_type="Slot", fhir_id="slot-1", version_id=version, last_updated=START
        ),
    )


def _appt(version: str, status: AppointmentStatus) -> AppointmentUpdatedV1:
    return AppointmentUpdatedV1(
        appointment_fhir_id="ap-1",
        patient_id="pat-1",
        status=status,
        start=START,
        end=START + timedelta(minutes=20),
        slot_fhir_ids=["slot-1"],
        practitioner_fhir_id="dr-a",
        source=SourceVersion(
            resource_type="Appointment", fhir_id="ap-1", version_id=version, last_updated=START
        ),
    )


@pytest.fixture
async def client(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    service = build(Settings(**isolated_settings(database_url, kafka_bootstrap, unique_prefix)))
    async with serving_in_process(service.app, "http://scheduling") as http:
        yield http


async def test_slot_cache_follows_the_ehr_and_ignores_stale_versions(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    await produce_events(
        kafka_bootstrap,
        [
            ("slot-1", _slot("1", SlotStatus.FREE)),
            ("slot-1", _slot("3", SlotStatus.BUSY)),
            ("slot-1", _slot("2", SlotStatus.FREE)),
        ],
        topic_prefix=unique_prefix,
    )
    marker = SlotUpdatedV1(
        slot_fhir_id="slot-2",
        schedule_fhir_id="sched-1",
        status=SlotStatus.FREE,
        start=START,
        end=START + timedelta(minutes=20),
        source=SourceVersion(
            resource_type="Slot", fhir_id="slot-2", version_id="1", last_updated=START
        ),
    )
    await produce_events(kafka_bootstrap, [("slot-1", marker)], topic_prefix=unique_prefix)

    async def marker_arrived() -> bool:
        slots = (
            await client.get("/slots", params={"start": (START - timedelta(hours=1)).isoformat()})
        ).json()["items"]
        return any(s["id"] == "slot-2" for s in slots)

    await eventually(marker_arrived, timeout=60)
    slots = (
        await client.get("/slots", params={"start": (START - timedelta(hours=1)).isoformat()})
    ).json()["items"]
    assert [s["id"] for s in slots] == ["slot-2"]  # slot-1 is busy at v3; v2 (free) was stale


async def test_staff_made_appointment_appears_and_a_cancelled_one_stays_cancelled(
    client: httpx.AsyncClient, kafka_bootstrap: str, unique_prefix: str
) -> None:
    await produce_events(
        kafka_bootstrap,
        [
            ("pat-1", _appt("1", AppointmentStatus.BOOKED)),
            ("pat-1", _appt("2", AppointmentStatus.CANCELLED)),
        ],
        topic_prefix=unique_prefix,
    )

    async def cancelled() -> bool:
        items = (await client.get("/patients/pat-1/appointments")).json()
        return bool(items) and items[0]["status"] == "cancelled"

    await eventually(cancelled, timeout=60)
    # A late re-delivery of an older "booked" version does not resurrect it.
    await produce_events(
        kafka_bootstrap,
        [("pat-1", _appt("1", AppointmentStatus.BOOKED))],
        topic_prefix=unique_prefix,
    )
    await produce_events(
        kafka_bootstrap,
        [
            (
                "pat-2",
                _appt("1", AppointmentStatus.BOOKED).model_copy(
                    update={"patient_id": "pat-2", "appointment_fhir_id": "ap-2"}
                ),
            )
        ],
        topic_prefix=unique_prefix,
    )

    async def other_arrived() -> bool:
        return bool((await client.get("/patients/pat-2/appointments")).json())

    await eventually(other_arrived, timeout=60)
    item = (await client.get("/patients/pat-1/appointments")).json()[0]
    assert item["status"] == "cancelled"
    assert (await client.get(f"/patients/pat-2/appointments/{item['id']}")).status_code == 404
    bad = await client.get("/slots", params={"start": "not-a-date"})
    assert bad.status_code == 422
