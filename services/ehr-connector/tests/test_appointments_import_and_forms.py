"""The patient's existing appointments and the intake forms, against the sandbox over HTTP.

- linking demo-alice imports her appointments, past and future, as `appointment.updated`
  with clinician, place and visit type; importing again publishes nothing twice; the
  clinic cancelling her next visit in the EHR later reaches the same appointment;
- `GET /ehr/questionnaires` answers the EHR's intake form by canonical URL and version.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.appointment import AppointmentUpdatedV1
from devstack.topics import ensure_topics
from ehr_sandbox.testing.http import RunningSandbox
from servicekit.testing import eventually, service_headers

from .inbound_support import (
    OPS,
    connector_settings,
    ehr_sandbox,
    link,
    ops_client,
    read_events,
    running_connector,
    simulate,
    wait_subscriptions_active,
)

pytestmark = [pytest.mark.integration]
ALICE = "pt-alice"
INTAKE = "http://example.org/fhir/ehr-sandbox/Questionnaire/intake"


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[RunningSandbox]:
    async with ehr_sandbox(tmp_path / "ehr") as running:
        yield running


def _updates(events: list[Any]) -> list[AppointmentUpdatedV1]:
    return [AppointmentUpdatedV1.model_validate_json(json.dumps(e.data)) for e in events]


async def test_existing_appointments_are_imported_once_and_follow_later_ehr_changes(
    box: RunningSandbox,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = connector_settings(
        box,
        database_url=database_url,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        idempotence=kafka_enable_idempotence,
    )
    topic = unique_prefix + "appointment.updated"
    async with running_connector(settings):
        await wait_subscriptions_active(settings)
        await link(kafka_bootstrap, unique_prefix, ALICE, "demo-alice", backfill=True)
        events = await read_events(
            kafka_bootstrap,
            topic,
            lambda es: (
                {u.appointment_fhir_id for u in _updates(es)}
                >= {"alice-appt-past", "alice-appt-next"}
            ),
        )
        imported = {u.appointment_fhir_id: u for u in _updates(events)}
        past, upcoming = imported["alice-appt-past"], imported["alice-appt-next"]
        assert all(e.key == ALICE for e in events)
        assert (past.status.value, upcoming.status.value) == ("fulfilled", "booked")
        assert upcoming.practitioner_fhir_id == "dr-adams"
        assert upcoming.practitioner_name == "Dr. Grace Adams"
        assert upcoming.location_fhir_id == "clinic-main"
        assert upcoming.location_name == "Riverside Family Health - Main Clinic"
        assert upcoming.visit_type is not None and upcoming.visit_type.code == "FOLLOWUP"
        assert upcoming.start is not None and upcoming.start.utcoffset() is not None
        assert upcoming.slot_fhir_ids

        # A second import finds nothing new to publish.
        async with ops_client(settings) as client:

            async def rerun() -> bool:
                return (await client.post(f"/ops/backfill/{ALICE}", headers=OPS)).status_code == 202

            await eventually(rerun, timeout=60, interval=0.2)

            async def done() -> bool:
                state = (await client.get(f"/ops/backfill/{ALICE}")).json()
                return bool(state["state"] == "done")

            await eventually(done, timeout=120, interval=0.2)

        # The clinic cancels the next visit in the EHR: the same appointment changes.
        await simulate(
            box, "appointment-cancel", patient="demo-alice", appointment="alice-appt-next"
        )
        events = await read_events(
            kafka_bootstrap,
            topic,
            lambda es: any(
                u.appointment_fhir_id == "alice-appt-next" and u.status.value == "cancelled"
                for u in _updates(es)
            ),
        )
        updates = _updates(events)
        versions = [
            (u.appointment_fhir_id, u.source.version_id if u.source else None) for u in updates
        ]
        assert len(versions) == len(set(versions)), "a version was published twice"
        cancelled = next(u for u in updates if u.status.value == "cancelled")
        assert cancelled.practitioner_name == "Dr. Grace Adams"
        assert cancelled.reason == "Cancelled by the clinic"


async def test_the_intake_form_is_read_from_the_ehr_by_canonical_url_and_version(
    box: RunningSandbox,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    settings = connector_settings(
        box,
        database_url=database_url,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        idempotence=kafka_enable_idempotence,
        inbound_enabled=False,
    )
    async with (
        running_connector(settings),
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.http_port}",
            headers=service_headers("ehr-connector", caller="scheduling"),
        ) as client,
    ):
        form = await client.get("/ehr/questionnaires", params={"url": INTAKE, "version": "1"})
        assert form.status_code == 200
        body = form.json()
        assert (body["resourceType"], body["url"], body["version"]) == (
            "Questionnaire",
            INTAKE,
            "1",
        )
        assert any(item["linkId"] == "reason" and item["required"] for item in body["item"])
        latest = await client.get("/ehr/questionnaires", params={"url": INTAKE})
        assert latest.json()["version"] == "1"
        missing = await client.get("/ehr/questionnaires", params={"url": INTAKE, "version": "9"})
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        # A url the EHR cannot search by (a control character: its 400) is the caller's
        # mistake, refused as such; never a 502 as though the EHR had failed.
        for bad in ("\x11", "http://x/\x7f", "http://x/é"):
            refused = await client.get("/ehr/questionnaires", params={"url": bad})
            assert refused.status_code == 422, (bad, refused.text)
        documented = (await client.get("/openapi.json")).json()
        answers = documented["paths"]["/ehr/questionnaires"]["get"]["responses"]
        assert {"404", "422", "503"} <= set(answers)
