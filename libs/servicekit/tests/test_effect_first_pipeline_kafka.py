"""Effect-first events through a real broker (`messaging.KeyPipeline`): handed on as they
are fetched, so a key whose EHR call hangs holds back neither the next fetch nor another
key's events; each key's events in offset order; and offsets never committed past an event
whose outcome is not stored, so a crash while it hangs redelivers it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from asgi_lifespan import LifespanManager

from contracts.patient import PatientLinkedV1
from devstack.topics import ensure_topics
from servicekit.app import Service, ServiceDefinition, create_service
from servicekit.consumer import BeforeCommit, Event, EventRouter, Record, UnitOfWork
from servicekit.settings import ServiceSettings
from servicekit.testing import eventually

from . import fakeservice
from .fakeservice import Effect, effects, kafka_settings, produce_links

pytestmark = [pytest.mark.integration]


class _Ehr:
    """The handler's outside call: markers starting with "hang" wait for `release`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls: list[str] = []

    async def call(self, marker: str) -> None:
        self.calls.append(marker)
        if marker.startswith("hang"):
            await self.release.wait()


def _service(settings: ServiceSettings, ehr: _Ehr) -> Service:
    router = EventRouter()

    @router.effect_first("patient.linked")
    async def file_link(reads: BeforeCommit, event: Event[PatientLinkedV1]) -> Record:
        """Call out (maybe hanging), then record the effect with the inbox row."""
        marker = event.data.patient_fhir_id
        await ehr.call(marker)

        async def record(uow: UnitOfWork) -> None:
            uow.session.add(
                Effect(
                    event_id=event.envelope.id,
                    patient_id=event.patient_id,
                    marker=marker,
                    at=datetime.now(UTC),
                )
            )

        return record

    return create_service(
        ServiceDefinition(
            settings=settings, title="fake", handlers=router, metadata=fakeservice.Base.metadata
        )
    )


async def _markers(svc: Service) -> list[str]:
    async with svc.db.sessions() as s:
        return [e.marker for e in await effects(s)]


async def test_a_hanging_key_holds_back_no_later_fetch_and_its_event_comes_again_after_a_crash(
    database_url: str, kafka_bootstrap: str, unique_prefix: str
) -> None:
    settings = kafka_settings(database_url, kafka_bootstrap, unique_prefix)
    await ensure_topics(kafka_bootstrap, unique_prefix, [("patient.linked", 1)])
    topic = settings.topic("patient.linked")
    ehr = _Ehr()
    first = _service(settings, ehr)
    async with LifespanManager(first.app, startup_timeout=60, shutdown_timeout=60):
        await produce_links(kafka_bootstrap, topic, [("p1", "hang-1"), ("p1", "p1-second")])

        async def hanging() -> bool:
            return "hang-1" in ehr.calls

        await eventually(hanging, timeout=60)
        # Produced (so fetched) after the hanging call began: handled while it hangs.
        await produce_links(kafka_bootstrap, topic, [("p2", "p2-first"), ("p2", "p2-second")])

        async def p2_done() -> bool:
            return await _markers(first) == ["p2-first", "p2-second"]

        await eventually(p2_done, timeout=60)
        # p1's second event waits behind its first, whose outcome is not stored.
        assert "p1-second" not in ehr.calls
    # Stopped while p1's first event hangs (a crash for it: nothing of it stored).
    assert await _markers(first) == ["p2-first", "p2-second"]

    ehr.release.set()
    ehr.calls.clear()
    second = _service(settings, ehr)
    async with LifespanManager(second.app, startup_timeout=60, shutdown_timeout=60):

        async def all_done() -> bool:
            return len(await _markers(second)) == 4

        await eventually(all_done, timeout=60)
        # From the lowest offset not stored: p1's events again, in order; p2's were
        # handled before the stop, so they come again only to be skipped by the inbox.
        assert ehr.calls[:2] == ["hang-1", "p1-second"]
        assert "p2-first" not in ehr.calls
    assert await _markers(second) == ["p2-first", "p2-second", "hang-1", "p1-second"]
