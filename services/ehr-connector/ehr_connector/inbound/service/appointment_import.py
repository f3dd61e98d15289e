"""The patient's existing appointments, past and future, imported when a back-fill runs.

The records read model has no place for appointments; scheduling keeps them. So instead of
`record.imported`, every Appointment of the patient is published as `appointment.updated`,
the event live notifications publish for a changed Appointment: later changes in the EHR
(clinician, place, time, status) then reach the same row in scheduling. A version is
published once, whichever path sees it first (the same version record as the live
processor), so running the import again, or a notification of a version already imported,
publishes nothing new. It runs at back-fill priority, after live traffic.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from contracts.appointment import AppointmentUpdatedV1
from ehr_connector.ehr.errors import EhrGone, EhrNotFound
from ehr_connector.ehr.port import EhrPort, FhirJson
from ehr_connector.inbound import store
from ehr_connector.inbound.domain.fhir_values import Ref
from ehr_connector.inbound.domain.mapping import MappingContext
from ehr_connector.inbound.domain.mapping.appointment import appointment_needs, map_appointment
from ehr_connector.outbound.domain.identifiers import APPOINTMENT_ID
from ehr_connector.settings import Settings
from servicekit.db import Database
from servicekit.logging import get_logger
from servicekit.outbox import Outbox

log = get_logger(__name__)
OUTCOME = "published"


async def _related(ehr: EhrPort, refs: set[Ref]) -> dict[str, FhirJson]:
    async def one(ref: Ref) -> tuple[str, FhirJson | None]:
        try:
            return ref.key, (await ehr.read(ref.type, ref.id)).resource
        except (EhrNotFound, EhrGone):
            return ref.key, None

    found = await asyncio.gather(*(one(r) for r in sorted(refs, key=lambda r: r.key)))
    return {key: resource for key, resource in found if resource is not None}


async def import_appointments(
    settings: Settings,
    db: Database,
    outbox: Outbox,
    ehr: EhrPort,
    patient_id: str,
    patient_fhir_id: str,
) -> int:
    """Publish `appointment.updated` for each of the patient's Appointments whose version
    was not published before; returns how many were published."""
    appointments: list[FhirJson] = []
    async for page in ehr.pages("Appointment", [("patient", patient_fhir_id)], count=100):
        appointments += [a for a in page.matches if a.get("resourceType") == "Appointment"]
    needed = {ref for a in appointments for ref in appointment_needs(a)}
    ctx = MappingContext(
        patient_id=patient_id,
        related=await _related(ehr, needed),
        appointment_identifier_system=APPOINTMENT_ID,
    )
    events = [
        e for a in appointments if isinstance(e := map_appointment(a, ctx), AppointmentUpdatedV1)
    ]
    if len(events) < len(appointments):
        log.info("inbound.appointments_not_mapped", count=len(appointments) - len(events))
    now = datetime.now(UTC)
    keys = [("Appointment", e.source.fhir_id, e.source.version_id) for e in events if e.source]
    async with db.transaction() as session:
        seen = await store.versions_seen(session, keys)
        fresh = [
            e
            for e in events
            if e.source and ("Appointment", e.source.fhir_id, e.source.version_id) not in seen
        ]
        for event in fresh:
            assert event.source is not None
            await store.add_version(
                session, "Appointment", event.source.fhir_id, event.source.version_id, OUTCOME, now
            )
            outbox.add(session, event, subject=patient_id, priority=settings.backfill_priority)
    log.info("inbound.appointments_imported", patient_id=patient_id, published=len(fresh))
    return len(fresh)
