"""The inbound side's event subscriber: `patient.linked` (registered on the service's one
router by `ehr_connector.handlers`, beside the outbound subscribers).

Linking tells the connector which portal patient an EHR Patient is (both directions are
remembered: the outbound side needs the EHR id of our patient, the inbound side the portal
id of an EHR Patient) and, unless the event says otherwise, queues a back-fill of the
patient's history, in the same transaction as the inbox row.
"""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.patient import PatientLinkedV1
from ehr_connector import store as connector_store
from ehr_connector.inbound import store
from ehr_connector.inbound.service.backfill import new_backfill
from servicekit.consumer import Event, UnitOfWork
from servicekit.logging import get_logger

log = get_logger(__name__)


async def link_patient(uow: UnitOfWork, event: Event[PatientLinkedV1]) -> None:
    """Remember the link and queue the back-fill of the patient's history."""
    data = event.data
    now = datetime.now(UTC)
    await connector_store.remember_patient(uow.session, data.patient_id, data.patient_fhir_id, now)
    if not data.backfill:
        return
    latest = await store.latest_backfill(uow.session, data.patient_id)
    if (
        latest is not None
        and latest.patient_fhir_id == data.patient_fhir_id
        and latest.state in ("pending", "running", "done")
    ):
        # The same link again (a re-delivered or repeated event): its history is imported
        # or being imported; an operator can force a new import at /ops/backfill.
        return
    job = new_backfill(data.patient_id, data.patient_fhir_id, "linked", now)
    uow.session.add(job)
    log.info("inbound.backfill_queued", backfill_id=job.backfill_id, patient_id=data.patient_id)
