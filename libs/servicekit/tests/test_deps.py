"""A service's dependencies come from its composition root (`ServiceDefinition.deps`):
built at start-up from the running service, handed to its handlers (plain and
effect-first) and routes, closed at stop; before start-up and after stop a handler finds
none and its event waits (`DependencyUnavailable`), never a closed client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from fastapi import APIRouter, Request

from contracts.base import SourceVersion
from contracts.message import MessageSyncedV1
from contracts.patient import PatientLinkedV1
from servicekit.app import Service, ServiceDefinition, create_service
from servicekit.consumer import BeforeCommit, Event, EventRouter, Record, UnitOfWork, running_deps
from servicekit.errors import DependencyUnavailable
from servicekit.settings import ServiceSettings
from servicekit.testing import broker_less_settings, deliver, serving_in_process

from .fakeservice import Base

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


@dataclass
class Clinic:
    """Stands for a client the composition root opens (and must close)."""

    service_name: str
    seen: list[str] = field(default_factory=list)
    closed: bool = False


def _build(database_url: str, opened: list[Clinic]) -> Service:
    router = EventRouter()
    api = APIRouter()

    @router.handles("patient.linked")
    async def linked(uow: UnitOfWork, event: Event[PatientLinkedV1]) -> None:
        running_deps(uow.deps, Clinic).seen.append(event.data.patient_fhir_id)

    @router.effect_first("message.synced")
    async def synced(reads: BeforeCommit, event: Event[MessageSyncedV1]) -> Record:
        clinic = running_deps(reads.deps, Clinic)
        clinic.seen.append(event.data.communication_fhir_id)

        async def record(uow: UnitOfWork) -> None:
            assert uow.deps is clinic

        return record

    @api.get("/clinic")
    async def clinic(request: Request) -> dict[str, str]:
        return {"service": running_deps(request.app.state.service.deps, Clinic).service_name}

    @contextlib.asynccontextmanager
    async def deps(service: Service) -> AsyncIterator[Clinic]:
        made = Clinic(service.settings.service_name)
        opened.append(made)
        try:
            yield made
        finally:
            made.closed = True

    return create_service(
        ServiceDefinition(
            settings=ServiceSettings(service_name="fake", **broker_less_settings(database_url)),
            title="fake",
            public_api=api,
            handlers=router,
            metadata=Base.metadata,
            deps=deps,
        )
    )


def _linked(marker: str) -> PatientLinkedV1:
    return PatientLinkedV1(patient_id="p1", patient_fhir_id=marker, linked_at=NOW)


async def test_handlers_and_routes_get_the_running_services_deps(database_url: str) -> None:
    opened: list[Clinic] = []
    service = _build(database_url, opened)
    async with serving_in_process(service.app, "http://fake") as client:
        (clinic,) = opened
        assert service.deps is clinic
        assert await deliver(service, _linked("a"), subject="p1") == "handled"
        synced = MessageSyncedV1(
            patient_id="p1",
            communication_fhir_id="comm-1",
            from_patient=True,
            status="completed",
            source=SourceVersion(
                resource_type="Communication", fhir_id="comm-1", version_id="1", last_updated=NOW
            ),
        )
        assert await deliver(service, synced, subject="p1") == "handled"
        assert clinic.seen == ["a", "comm-1"]
        answer = await client.get("/clinic")
        assert answer.status_code == 200
        assert answer.json() == {"service": "fake"}
        assert not clinic.closed
    # Stopped: closed, and forgotten by the service and its consumers.
    assert clinic.closed
    assert service.deps is None
    assert service.runtime.deps is None


async def test_two_services_in_one_process_never_share_deps(database_url: str) -> None:
    opened: list[Clinic] = []
    first, second = _build(database_url, opened), _build(database_url, opened)
    async with (
        serving_in_process(first.app, "http://first"),
        serving_in_process(second.app, "http://second"),
    ):
        assert first.deps is not second.deps
        assert await deliver(second, _linked("b"), subject="p1") == "handled"
        assert first.deps.seen == []
        assert second.deps.seen == ["b"]


def test_without_a_running_service_there_are_no_deps() -> None:
    with pytest.raises(DependencyUnavailable, match="Clinic is not running"):
        running_deps(None, Clinic)
