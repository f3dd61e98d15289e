"""Use cases driven by the EHR: its view of slots and appointments into scheduling's tables
(handed over by `scheduling.handlers`). Older versions never overwrite newer ones."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.appointment import AppointmentStatus, AppointmentUpdatedV1, SlotUpdatedV1
from scheduling import store
from scheduling.domain import can_transition, releases_slot
from servicekit.versions import is_newer, version_is_newer


async def cache_slot(session: AsyncSession, data: SlotUpdatedV1) -> None:
    """Keep the slot cache in step with the EHR; older versions never overwrite newer."""
    row = await store.get_slot(session, data.slot_fhir_id)
    if row is not None and not is_newer(data.source, row.source_version, row.source_updated):
        return
    if row is None:
        row = store.Slot(slot_fhir_id=data.slot_fhir_id)
        session.add(row)
    row.schedule_fhir_id = data.schedule_fhir_id
    row.practitioner_fhir_id = data.practitioner_fhir_id
    row.location_fhir_id = data.location_fhir_id
    row.service_type = data.service_type.code if data.service_type else None
    row.service_type_display = data.service_type.display if data.service_type else None
    row.visit_type = data.visit_type.code if data.visit_type else None
    row.visit_type_display = data.visit_type.display if data.visit_type else None
    row.status = data.status.value
    row.start = data.start
    row.end = data.end
    row.source_version = data.source.version_id
    row.source_updated = data.source.last_updated


def _older(row: store.Appointment, data: AppointmentUpdatedV1) -> bool:
    return (
        data.source is not None
        and row.ehr_version is not None
        and data.source.version_id != row.ehr_version
        and version_is_newer(data.source.version_id, row.ehr_version) is False
    )


def _stale(row: store.Appointment, data: AppointmentUpdatedV1) -> bool:
    if (
        data.source is not None
        and row.ehr_version is not None
        and version_is_newer(data.source.version_id, row.ehr_version) is False
    ):
        return True
    return row.status != data.status.value and not can_transition(
        AppointmentStatus(row.status), data.status
    )


async def _settle_move(
    session: AsyncSession, row: store.Appointment, data: AppointmentUpdatedV1, now: datetime
) -> None:
    """A requested move is settled by the EHR's answer: moved (the old slot is let go),
    refused (the new slot is let go and the appointment keeps its time), or ended."""
    target = row.pending_slot_fhir_id
    if target is None:
        return
    if target in data.slot_fhir_ids:
        if row.slot_fhir_id and row.slot_fhir_id != target:
            await store.release_holds(session, row.id, now, slot_fhir_id=row.slot_fhir_id)
        row.pending_slot_fhir_id = None
    elif releases_slot(data.status) or data.reason is not None:
        await store.release_holds(session, row.id, now, slot_fhir_id=target)
        row.pending_slot_fhir_id = None


async def apply_ehr_appointment_change(
    session: AsyncSession, patient_id: str, data: AppointmentUpdatedV1
) -> None:
    """Apply the EHR's confirmation, rejection or change of an appointment, including one
    the clinic made or changed in the EHR (clinician, place, time, status)."""
    now = datetime.now(UTC)
    row = None
    if data.appointment_id:
        row = await store.get_appointment(session, data.appointment_id)
    if row is None and data.appointment_fhir_id:
        row = await store.appointment_by_fhir_id(session, data.appointment_fhir_id)
    if row is None:
        # An appointment made by staff in the EHR (or imported): the patient sees it too.
        row = store.Appointment(
            id=data.appointment_id or f"ehr-{data.appointment_fhir_id}",
            patient_id=patient_id,
            status=data.status.value,
            updated_at=now,
        )
        session.add(row)
    else:
        if not _older(row, data):
            # A refused move leaves the appointment as it was: same version, with a reason.
            await _settle_move(session, row, data, now)
        if _stale(row, data):
            if data.reason is not None and row.pending_slot_fhir_id is None:
                row.status_reason = data.reason
                row.updated_at = now
            return
    if releases_slot(data.status):
        await store.release_holds(session, row.id, now)
    elif data.slot_fhir_ids:
        # The clinic may have moved it in the EHR: holds follow the slots it now uses.
        keep = set(data.slot_fhir_ids) | (
            {row.pending_slot_fhir_id} if row.pending_slot_fhir_id else set()
        )
        await store.release_holds_except(session, row.id, keep, now)
    row.status = data.status.value
    row.appointment_fhir_id = data.appointment_fhir_id or row.appointment_fhir_id
    row.start = data.start or row.start
    row.end = data.end or row.end
    row.slot_fhir_id = data.slot_fhir_ids[0] if data.slot_fhir_ids else row.slot_fhir_id
    if data.practitioner_fhir_id is not None:
        row.practitioner_fhir_id = data.practitioner_fhir_id
        row.practitioner_name = data.practitioner_name
    if data.location_fhir_id is not None:
        row.location_fhir_id = data.location_fhir_id
        row.location_name = data.location_name
    if data.visit_type is not None:
        row.visit_type = data.visit_type.code
        row.visit_type_display = data.visit_type.display
    row.ehr_version = data.source.version_id if data.source else row.ehr_version
    row.status_reason = data.reason
    row.updated_at = now
