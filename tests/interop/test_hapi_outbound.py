"""Outbound against HAPI: every event type becomes a FHIR write HAPI accepts, replays write
nothing twice (conditional create, If-Match), and every resource the connector wrote passes
HAPI's `$validate` (the official validator, base R4) with no error."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.appointment import AppointmentBookedV1, AppointmentCancelledV1
from contracts.base import Coding
from contracts.intake import IntakeAnswer, IntakeSubmittedV1
from contracts.message import MessageSentV1
from contracts.triage import TriageCompletedV1, Urgency
from devstack.topics import ensure_topics
from ehr_connector import store
from ehr_connector.inbound.domain.canary_data import canary_observation, canary_report
from ehr_connector.outbound.domain.identifiers import (
    APPOINTMENT_ID,
    INTAKE_ID,
    MESSAGE_ID,
    TRIAGE_SESSION_ID,
    token,
)
from servicekit.testing import eventually, produce_events

from .conftest import Hapi, hapi_settings, running_connector, seed_chart

pytestmark = [pytest.mark.interop]

INTAKE = "http://example.org/fhir/ehr-sandbox/Questionnaire/intake|1"


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _one(hapi: Hapi, resource_type: str, system: str, value: str) -> dict[str, Any] | None:
    found = await hapi.search(resource_type, identifier=token(system, value))
    assert len(found) <= 1, f"{len(found)} {resource_type} for one business id"
    return found[0] if found else None


async def test_every_written_resource_is_valid_r4_and_written_once(
    hapi: Hapi,
    database_url: str,
    kafka_bootstrap: str,
    kafka_enable_idempotence: bool,
    unique_prefix: str,
) -> None:
    chart = await seed_chart(hapi)
    slot = chart.slots[0]
    await ensure_topics(kafka_bootstrap, unique_prefix)
    settings = hapi_settings(
        hapi,
        database_url=database_url,
        bootstrap=kafka_bootstrap,
        prefix=unique_prefix,
        idempotence=kafka_enable_idempotence,
        inbound_enabled=False,
    )
    now = datetime.now(UTC)
    booking = AppointmentBookedV1(
        appointment_id=_id("appt"),
        patient_id="pat-interop",
        patient_fhir_id=chart.patient,
        slot_fhir_id=slot["id"],
        practitioner_fhir_id=chart.practitioner,
        start=datetime.fromisoformat(slot["start"]),
        end=datetime.fromisoformat(slot["end"]),
        reason="Knee pain after running",
        booked_at=now,
    )
    intake = IntakeSubmittedV1(
        intake_id=_id("intake"),
        appointment_id=booking.appointment_id,
        patient_id="pat-interop",
        questionnaire_canonical=INTAKE,
        answers=[
            IntakeAnswer(link_id="reason", value_string="Knee pain after running"),
            IntakeAnswer(
                link_id="duration",
                value_coding=Coding(system="http://example.org/duration", code="weeks"),
            ),
            IntakeAnswer(link_id="pain", value_integer=4),
            IntakeAnswer(link_id="medications-changed", value_boolean=False),
        ],
        submitted_at=now,
    )
    message = MessageSentV1(
        message_id=_id("msg"),
        thread_id=_id("thread"),
        patient_id="pat-interop",
        recipient_pool="primary",
        subject="Knee",
        body="Should I rest before the visit?",
        sent_at=now,
    )
    triage = TriageCompletedV1(
        session_id=_id("triage"),
        patient_id="pat-interop",
        urgency=Urgency.URGENT,
        summary="Knee swelling for two weeks",
        findings=[Coding(system="http://snomed.info/sct", code="202381003", display="Knee pain")],
        rule_set_version="2026.11",
        recommended_pool="primary",
        completed_at=now,
    )
    async with running_connector(settings) as service:
        async with service.db.transaction() as session:
            await store.remember_patient(session, "pat-interop", chart.patient)
        # Every event twice as separate events: the second must match, not write again.
        for payload in (booking, message, triage, booking, message, triage):
            await produce_events(
                kafka_bootstrap, [("pat-interop", payload)], topic_prefix=unique_prefix
            )

        async def booked() -> bool:
            return (
                await _one(hapi, "Appointment", APPOINTMENT_ID, booking.appointment_id) is not None
            )

        await eventually(booked, timeout=120, interval=0.5)
        for payload in (intake, intake):
            await produce_events(
                kafka_bootstrap, [("pat-interop", payload)], topic_prefix=unique_prefix
            )

        async def all_filed() -> bool:
            return all(
                [
                    await _one(hapi, "QuestionnaireResponse", INTAKE_ID, intake.intake_id),
                    await _one(hapi, "Communication", MESSAGE_ID, message.message_id),
                    await _one(hapi, "Task", TRIAGE_SESSION_ID, triage.session_id),
                    await _one(hapi, "QuestionnaireResponse", TRIAGE_SESSION_ID, triage.session_id),
                ]
            )

        await eventually(all_filed, timeout=120, interval=0.5)

        async def replays_matched() -> bool:
            async with service.db.sessions() as session:
                logs = [
                    [w.interaction for w in await store.writes_for(session, kind, our_id)]
                    for kind, our_id in (
                        ("appointment.booked", booking.appointment_id),
                        ("intake.submitted", intake.intake_id),
                        ("message.sent", message.message_id),
                        ("triage.completed", triage.session_id),
                    )
                ]
            return all("match" in log for log in logs)

        await eventually(replays_matched, timeout=120, interval=0.5)

        # A cancellation is an update with If-Match on the version the connector read.
        await produce_events(
            kafka_bootstrap,
            [
                (
                    "pat-interop",
                    AppointmentCancelledV1(
                        appointment_id=booking.appointment_id,
                        patient_id="pat-interop",
                        reason_code="pat",
                        cancelled_at=datetime.now(UTC),
                    ),
                )
            ],
            topic_prefix=unique_prefix,
        )

        async def cancelled() -> bool:
            found = await _one(hapi, "Appointment", APPOINTMENT_ID, booking.appointment_id)
            return found is not None and found["status"] == "cancelled"

        await eventually(cancelled, timeout=120, interval=0.5)

    written = [
        await _one(hapi, "Appointment", APPOINTMENT_ID, booking.appointment_id),
        (await hapi.client.get(f"Slot/{slot['id']}")).json(),
        await _one(hapi, "QuestionnaireResponse", INTAKE_ID, intake.intake_id),
        await _one(hapi, "Communication", MESSAGE_ID, message.message_id),
        await _one(hapi, "Task", TRIAGE_SESSION_ID, triage.session_id),
        await _one(hapi, "QuestionnaireResponse", TRIAGE_SESSION_ID, triage.session_id),
    ]
    for resource in written:
        assert resource is not None
        assert await hapi.validation_errors(resource) == [], resource["resourceType"]
    # The synthetic canary's lab result is written to the EHR too.
    observation = canary_observation(chart.patient, "interop-run", now)
    observation_id = (await hapi.post(observation))["id"]
    for resource in (
        observation,
        canary_report(chart.patient, "interop-run", observation_id, now),
    ):
        assert await hapi.validation_errors(resource) == [], resource["resourceType"]
    appointment, _slot, response = written[0], written[1], written[2]
    assert appointment is not None and response is not None
    # The intake names its visit in a form R4 allows.
    assert {"reference": f"Appointment/{appointment['id']}"} in [
        e.get("valueReference") for e in response.get("extension", [])
    ]
