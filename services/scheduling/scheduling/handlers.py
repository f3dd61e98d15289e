"""Event handlers: the EHR's view of slots and appointments into scheduling's tables."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.appointment import AppointmentStatus, AppointmentUpdatedV1, SlotUpdatedV1
from scheduling import store
from scheduling.domain import can_transition
from servicekit.consumer import Event, EventRouter, UnitOfWork
from servicekit.versions import is_newer, version_is_newer

router = EventRouter()


@router.handles("slot.updated")
async def cache_slot(uow: UnitOfWork, event: Event[SlotUpdatedV1]) -> None:
    """Keep the slot cache in step with the EHR; older versions never overwrite newer."""
    data = event.data
    row = await store.get_slot(uow.session, data.slot_fhir_id)
    if row is not None and not is_newer(data.source, row.source_version, row.source_updated):
        return
    if row is None:
        row = store.Slot(slot_fhir_id=data.slot_fhir_id)
        uow.session.add(row)
    row.schedule_fhir_id = data.schedule_fhir_id
    row.practitioner_fhir_id = data.practitioner_fhir_id
    row.status = data.status.value
    row.start = data.start
    row.end = data.end
    row.source_version = data.source.version_id
    row.source_updated = data.source.last_updated


@router.handles("appointment.updated")
async def apply_ehr_appointment_change(uow: UnitOfWork, event: Event[AppointmentUpdatedV1]) -> None:
    """Apply the EHR's confirmation, rejection or change of an appointment."""
    data = event.data
    row = None
    if data.appointment_id:
        row = await store.get_appointment(uow.session, data.appointment_id)
    if row is None and data.appointment_fhir_id:
        row = await store.appointment_by_fhir_id(uow.session, data.appointment_fhir_id)
    if row is None:
        # An appointment made by staff in the EHR: the patient sees it too.
        row = store.Appointment(
            id=data.appointment_id or f"ehr-{data.appointment_fhir_id}",
            patient_id=event.patient_id,
            status=data.status.value,
        )
        uow.session.add(row)
    elif (
        data.source is not None
        and row.ehr_version is not None
        and version_is_newer(data.source.version_id, row.ehr_version) is False
    ) or (
        row.status != data.status.value
        and not can_transition(AppointmentStatus(row.status), data.status)
    ):
        return
    row.status = data.status.value
    row.appointment_fhir_id = data.appointment_fhir_id or row.appointment_fhir_id
    row.start = data.start or row.start
    row.end = data.end or row.end
    row.slot_fhir_id = data.slot_fhir_ids[0] if data.slot_fhir_ids else row.slot_fhir_id
    row.practitioner_fhir_id = data.practitioner_fhir_id or row.practitioner_fhir_id
    row.ehr_version = data.source.version_id if data.source else row.ehr_version
    row.status_reason = data.reason
    row.updated_at = datetime.now(UTC)
