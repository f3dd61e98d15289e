"""Recording what an event made the connector do in the EHR (the outbound write log)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ehr_connector import store
from ehr_connector.ehr.port import Versioned
from servicekit.consumer import Event, UnitOfWork
from servicekit.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Journal:
    """The write log of one event being handled (same transaction as its inbox row)."""

    session: AsyncSession
    event_id: str
    event_type: str
    patient_id: str

    @classmethod
    def of(cls, uow: UnitOfWork, event: Event[Any]) -> Journal:
        """The journal of `event`, written in `uow`'s transaction."""
        return cls(uow.session, event.envelope.id, event.envelope.type, event.patient_id)

    async def record(
        self,
        our_id: str,
        resource_type: str,
        interaction: str,
        written: Versioned | None = None,
    ) -> None:
        """Log one outbound decision about `our_id` (and the version it produced)."""
        await store.log_write(
            self.session,
            event_id=self.event_id,
            event_type=self.event_type,
            patient_id=self.patient_id,
            our_id=our_id,
            resource_type=resource_type,
            interaction=interaction,
            fhir_id=written.id if written is not None else None,
            version_id=written.version_id if written is not None else None,
        )
        log.info(
            "outbound.write",
            event_type=self.event_type,
            event_id=self.event_id,
            resource_type=resource_type,
            fhir_id=written.id if written is not None else None,
            version_id=written.version_id if written is not None else None,
            interaction=interaction,
        )
