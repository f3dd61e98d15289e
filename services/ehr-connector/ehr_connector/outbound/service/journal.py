"""What handling one event made the connector do in the EHR, recorded after the calls.

The outbound use cases call the EHR with no database transaction open (no locks held
across HTTP, as the inbound side does): while they work they note each decision here, and
`commit` writes the notes (the write log, the id links, the events to publish) in the one
short transaction the kit opens for the event's inbox row. A failure before that commit
leaves nothing behind, exactly as a rolled-back transaction did; the EHR writes themselves
are idempotent (conditional create, `If-Match`), so the retry converges.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from contracts.base import Payload
from ehr_connector import store
from ehr_connector.ehr.port import Versioned
from servicekit.consumer import Event, UnitOfWork
from servicekit.logging import get_logger

log = get_logger(__name__)

_Step = Callable[[UnitOfWork], Awaitable[None]]


@dataclass
class Journal:
    """The outcome of one event being handled, written in order by `commit`."""

    event_id: str
    event_type: str
    patient_id: str
    _steps: list[_Step] = field(default_factory=list)

    @classmethod
    def of(cls, event: Event[Any]) -> Journal:
        """An empty journal for `event`."""
        return cls(event.envelope.id, event.envelope.type, event.patient_id)

    def record(
        self,
        our_id: str,
        resource_type: str,
        interaction: str,
        written: Versioned | None = None,
    ) -> None:
        """Note one outbound decision about `our_id` (and the version it produced)."""
        fhir_id = written.id if written is not None else None
        version_id = written.version_id if written is not None else None

        async def step(uow: UnitOfWork) -> None:
            await store.log_write(
                uow.session,
                event_id=self.event_id,
                event_type=self.event_type,
                patient_id=self.patient_id,
                our_id=our_id,
                resource_type=resource_type,
                interaction=interaction,
                fhir_id=fhir_id,
                version_id=version_id,
            )
            log.info(
                "outbound.write",
                event_type=self.event_type,
                event_id=self.event_id,
                resource_type=resource_type,
                fhir_id=fhir_id,
                version_id=version_id,
                interaction=interaction,
            )

        self._steps.append(step)

    def link(self, kind: str, our_id: str, written: Versioned, *, patient_id: str) -> None:
        """Note which EHR resource (and version) one of our objects now is."""

        async def step(uow: UnitOfWork) -> None:
            await store.save_link(
                uow.session,
                kind=kind,
                our_id=our_id,
                resource_type=written.resource_type,
                fhir_id=written.id,
                version_id=written.version_id,
                patient_id=patient_id,
            )

        self._steps.append(step)

    def remember_patient(self, patient_id: str, patient_fhir_id: str) -> None:
        """Note which EHR Patient a portal patient is."""

        async def step(uow: UnitOfWork) -> None:
            await store.remember_patient(uow.session, patient_id, patient_fhir_id)

        self._steps.append(step)

    def publish(self, data: Payload, *, subject: str) -> None:
        """Note an event to publish through the outbox, caused by the event handled."""

        async def step(uow: UnitOfWork) -> None:
            uow.publish(data, subject=subject)

        self._steps.append(step)

    async def commit(self, uow: UnitOfWork) -> None:
        """Write every note, in the order taken, in `uow`'s transaction."""
        for step in self._steps:
            await step(uow)
