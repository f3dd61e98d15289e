"""The gateway's handlers without a broker (`servicekit.testing.deliver`: the consumer's own
path, on a real PostgreSQL); `tests/gateway_with_services/test_gateway_flow.py` runs them through Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from asgi_lifespan import LifespanManager

from contracts.appointment import AppointmentStatus, AppointmentUpdatedV1
from contracts.base import Coding, SourceVersion
from contracts.lab import LabResultedV1, ReportStatus
from gateway import store
from gateway.app import build
from gateway.settings import Settings
from servicekit.app import Service
from servicekit.testing import broker_less_settings, deliver

T = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@pytest.fixture
async def gateway(database_url: str) -> AsyncIterator[Service]:
    service = build(Settings(**broker_less_settings(database_url)))
    async with LifespanManager(service.app):
        yield service


async def _notifications(service: Service, patient_id: str) -> list[tuple[str, str]]:
    async with service.db.sessions() as session:
        notes = await store.notifications_since(session, patient_id, 0)
    return [(n.kind, n.ref) for n in notes]


async def test_a_lab_result_becomes_one_notification_however_often_delivered(
    gateway: Service,
) -> None:
    result = LabResultedV1(
        patient_id="pat-1",
        report_fhir_id="dr-1",
        status=ReportStatus.FINAL,
        code=Coding(system="http://loinc.org", code="24323-8", display="Metabolic panel"),
        effective=T,
        source=SourceVersion(
            resource_type="DiagnosticReport", fhir_id="dr-1", version_id="1", last_updated=T
        ),
    )
    event_id = "5d1c0a9e-2b3f-4e6a-8c7d-9e0f1a2b3c4d"
    assert await deliver(gateway, result, subject="pat-1", event_id=event_id) == "handled"
    assert await deliver(gateway, result, subject="pat-1", event_id=event_id) == "duplicate"
    assert await _notifications(gateway, "pat-1") == [("lab-result", "dr-1")]
    assert await _notifications(gateway, "pat-2") == []


async def test_a_past_appointment_change_is_no_news_for_the_patient(gateway: Service) -> None:
    now = datetime.now(UTC)

    def change(appointment_id: str, end: datetime) -> AppointmentUpdatedV1:
        return AppointmentUpdatedV1(
            appointment_fhir_id=f"fhir-{appointment_id}",
            appointment_id=appointment_id,
            patient_id="pat-1",
            status=AppointmentStatus.CANCELLED,
            start=end - timedelta(minutes=20),
            end=end,
        )

    assert await deliver(gateway, change("past", now - timedelta(days=30)), subject="pat-1")
    assert await deliver(gateway, change("next", now + timedelta(days=3)), subject="pat-1")
    assert await _notifications(gateway, "pat-1") == [("appointment", "next")]
