"""The connector's outbound handlers without a broker (`servicekit.testing.deliver`: the
consumer's own path, on a real PostgreSQL) against the sandbox over HTTP; the Kafka ring is
`test_outbound_kafka.py`. Every EHR call is made with no database connection held."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import select

from contracts.appointment import AppointmentBookedV1, AppointmentUpdatedV1
from ehr_connector import store
from ehr_connector.app import build
from ehr_connector.ehr.fhir_client import FhirClient
from ehr_connector.ehr.port import FhirJson, SearchPage, Versioned, WriteResult
from ehr_connector.settings import Settings
from ehr_sandbox.testing.http import RunningSandbox
from servicekit import sealing
from servicekit.app import Service
from servicekit.tables import OutboxRow
from servicekit.testing import broker_less_settings, deliver

from .conftest import T0

pytestmark = [pytest.mark.integration]


class CountsHeldConnections:
    """An EhrPort noting, at every call, how many database connections the service held."""

    def __init__(self, inner: FhirClient, service: list[Service]) -> None:
        self._inner = inner
        self._service = service
        self.held: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _note(self) -> None:
        pool = self._service[0].db.engine.sync_engine.pool
        self.held.append(pool.checkedout())  # type: ignore[attr-defined]

    async def read(self, resource_type: str, fhir_id: str) -> Versioned:
        self._note()
        return await self._inner.read(resource_type, fhir_id)

    async def search(self, resource_type: str, params: Any) -> SearchPage:
        self._note()
        return await self._inner.search(resource_type, params)

    async def create(self, resource: FhirJson, *, if_none_exist: str | None = None) -> WriteResult:
        self._note()
        return await self._inner.create(resource, if_none_exist=if_none_exist)

    async def update(self, resource: FhirJson, *, if_match: str | None = None) -> WriteResult:
        self._note()
        return await self._inner.update(resource, if_match=if_match)


async def test_a_delivered_booking_is_written_once_and_confirmed_through_the_outbox(
    ehr: RunningSandbox, free_slots: Iterator[dict[str, Any]], database_url: str
) -> None:
    slot = next(free_slots)
    booking = AppointmentBookedV1(
        appointment_id=f"appt-{uuid.uuid4().hex[:12]}",
        patient_id="pat-alice",
        patient_fhir_id="demo-alice",
        slot_fhir_id=slot["id"],
        start=datetime.fromisoformat(slot["start"].replace("Z", "+00:00")),
        end=datetime.fromisoformat(slot["end"].replace("Z", "+00:00")),
        booked_at=T0,
    )
    settings = Settings(
        **broker_less_settings(database_url),
        environment="test",
        ehr_base_url=ehr.fhir,
        inbound_enabled=False,
        canary_enabled=False,
        slot_sync_enabled=False,
    )
    services: list[Service] = []
    wrappers: list[CountsHeldConnections] = []

    def wrap(client: FhirClient) -> CountsHeldConnections:
        wrappers.append(CountsHeldConnections(client, services))
        return wrappers[-1]

    service = build(settings, wrap_ehr=wrap)
    services.append(service)
    event_id = str(uuid.uuid4())
    async with LifespanManager(service.app, startup_timeout=60, shutdown_timeout=60):
        assert await deliver(service, booking, subject="pat-alice", event_id=event_id) == "handled"
        calls = len(wrappers[0].held)
        assert await deliver(service, booking, subject="pat-alice", event_id=event_id) == (
            "duplicate"
        )
        # The inbox is read before the EHR is called: a redelivery calls nothing.
        assert len(wrappers[0].held) == calls
        async with service.db.sessions() as session:
            log = await store.writes_for(session, "appointment.booked", booking.appointment_id)
            link = await store.get_link(session, "appointment", booking.appointment_id)
            outbox = (await session.execute(select(OutboxRow))).scalars().all()

    assert [w.interaction for w in log] == ["create", "update"]
    assert [w.resource_type for w in log] == ["Appointment", "Slot"]
    assert link is not None and link.fhir_id == log[0].fhir_id
    (confirmation,) = [row for row in outbox if row.topic.endswith("appointment.updated")]
    # Sealed at rest (servicekit.sealing): opened as the relay opens it.
    opened = sealing.unseal(
        service.outbox.cipher, confirmation.payload, sealing.outbox_aad(confirmation.event_id)
    )
    updated = AppointmentUpdatedV1.model_validate_json(opened)
    assert (updated.appointment_id, updated.status.value) == (booking.appointment_id, "booked")
    assert calls > 0 and set(wrappers[0].held) == {0}
    appointment = await ehr.admin.get(f"/fhir/Appointment/{link.fhir_id}")
    assert appointment.json()["status"] == "booked"
