"""Booking, cancelling and moving appointments in the EHR (the rules are in `appointments`).

Every step is safe to repeat, so a redelivered or replayed event converges on the same EHR
state: the Appointment is created on the condition of our identifier, Slots and the
Appointment change with `If-Match` (a 412 re-reads and re-applies), and a change the EHR
already has is skipped. Each use case ends by publishing `appointment.updated` with the
version the EHR now holds, so scheduling learns the EHR id and version for its next change.

The EHR is called with no database transaction open: each use case reads what it needs in
short sessions, calls the EHR, and returns its `Journal`, which the kit commits with the
inbox row in one short transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from contracts.appointment import (
    AppointmentBookedV1,
    AppointmentCancelledV1,
    AppointmentRescheduledV1,
)
from ehr_connector.context import Connector
from ehr_connector.ehr.errors import EhrConflict, EhrGone, EhrNotFound, EhrStateForbids
from ehr_connector.ehr.port import EhrPort, FhirJson, Versioned
from ehr_connector.outbound.domain import appointments
from ehr_connector.outbound.domain.identifiers import APPOINTMENT_ID, if_none_exist
from ehr_connector.outbound.domain.r4 import validate
from ehr_connector.outbound.service.journal import Journal
from ehr_connector.outbound.service.lookups import (
    find_by_identifier,
    known_patient,
    locate_appointment,
    wait_for_booking,
)
from ehr_connector.store import Interaction
from servicekit.consumer import BeforeCommit, Event, Record
from servicekit.errors import PermanentError
from servicekit.logging import get_logger

log = get_logger(__name__)

# Compare-and-set rounds before giving up on a resource that keeps changing under us
# (the event is then retried by the consumer, so this only bounds one attempt).
MAX_ROUNDS: Final = 5
NEW_SLOT_TAKEN: Final = "The new slot is no longer free in the EHR; the appointment keeps its time"
NOT_MOVABLE: Final = "The appointment can no longer be moved in the EHR"


def _if_match(resource: Versioned) -> str | None:
    return resource.version_id or None


async def apply_change(
    ehr: EhrPort, current: Versioned, change: Callable[[FhirJson], FhirJson | None]
) -> tuple[Versioned, bool]:
    """Write `change(current)` with `If-Match`; on a version conflict re-read and re-apply.

    `change` returns None when the resource already is in the target state (then nothing is
    written) and may raise `EhrStateForbids`. Returns the resulting version and whether it
    was written."""
    for _ in range(MAX_ROUNDS):
        target = change(current.resource)
        if target is None:
            return current, False
        try:
            return await ehr.update(validate(target), if_match=_if_match(current)), True
        except EhrConflict:
            log.info(
                "outbound.version_conflict",
                resource_type=current.resource_type,
                fhir_id=current.id,
                version_id=current.version_id,
            )
            current = await ehr.read(current.resource_type, current.id)
    raise EhrConflict(
        f"{current.reference} kept changing while we updated it",
        interaction="update",
        resource_type=current.resource_type,
    )


async def other_holders(ehr: EhrPort, slot_id: str, appointment_fhir_id: str | None) -> list[str]:
    """Ids of active Appointments other than `appointment_fhir_id` booked into a slot."""
    page = await ehr.search(
        "Appointment",
        [("slot", f"Slot/{slot_id}"), ("status", ",".join(sorted(appointments.HOLDING_STATUSES)))],
    )
    return [
        str(a["id"])
        for a in page.matches
        if a.get("id") != appointment_fhir_id and appointments.holds_slot(a, slot_id)
    ]


async def occupy(
    ehr: EhrPort, journal: Journal, our_id: str, slot: Versioned, appointment_fhir_id: str
) -> bool:
    """Mark `slot` busy for an appointment; False when another booking (or the clinic)
    has it. The `If-Match` write is what decides a race between two bookings."""
    for _ in range(MAX_ROUNDS):
        status = slot.resource.get("status")
        if status == "busy":
            return not await other_holders(ehr, slot.id, appointment_fhir_id)
        if status != "free":
            return False
        target = appointments.slot_with_status(slot.resource, "busy")
        assert target is not None
        try:
            written = await ehr.update(validate(target), if_match=_if_match(slot))
        except EhrConflict:
            slot = await ehr.read("Slot", slot.id)
            continue
        journal.record(our_id, "Slot", Interaction.UPDATE, written)
        return True
    raise EhrConflict(f"Slot/{slot.id} kept changing", interaction="update", resource_type="Slot")


async def release(
    ehr: EhrPort, journal: Journal, our_id: str, slot_id: str, appointment_fhir_id: str
) -> None:
    """Free a slot the appointment no longer uses, unless another booking holds it or the
    clinic blocked it (then it is not ours to free)."""
    try:
        slot = await ehr.read("Slot", slot_id)
    except (EhrNotFound, EhrGone):
        return
    for _ in range(MAX_ROUNDS):
        if slot.resource.get("status") != "busy":
            return
        if await other_holders(ehr, slot_id, appointment_fhir_id):
            return
        target = appointments.slot_with_status(slot.resource, "free")
        assert target is not None
        try:
            written = await ehr.update(validate(target), if_match=_if_match(slot))
        except EhrConflict:
            slot = await ehr.read("Slot", slot_id)
            continue
        journal.record(our_id, "Slot", Interaction.UPDATE, written)
        return
    raise EhrConflict(f"Slot/{slot_id} kept changing", interaction="update", resource_type="Slot")


def _confirm(
    journal: Journal,
    *,
    appointment_id: str,
    patient_id: str,
    appointment: Versioned,
    reason: str | None = None,
) -> None:
    journal.link("appointment", appointment_id, appointment, patient_id=patient_id)
    journal.publish(
        appointments.updated_event(
            appointment.resource,
            appointment_id=appointment_id,
            patient_id=patient_id,
            reason=reason,
        ),
        subject=patient_id,
    )


def _reject(
    journal: Journal,
    data: AppointmentBookedV1,
    reason: str,
    withdrawn: Versioned | None = None,
) -> None:
    journal.record(data.appointment_id, "Appointment", Interaction.REJECTED, withdrawn)
    journal.publish(
        appointments.rejected_event(
            data, reason, withdrawn.resource if withdrawn is not None else None
        ),
        subject=data.patient_id,
    )
    log.info("outbound.booking_rejected", appointment_id=data.appointment_id)


async def book(connector: Connector, event: Event[AppointmentBookedV1]) -> Record:
    """Write a booking: check the Slot, create the Appointment (conditional on our
    identifier), mark the Slot busy; publish the EHR's confirmation or the rejection."""
    journal = Journal.of(event)
    await _book(connector.ehr, journal, event.data)
    return journal.commit


async def _book(ehr: EhrPort, journal: Journal, data: AppointmentBookedV1) -> None:
    journal.remember_patient(data.patient_id, data.patient_fhir_id)
    appointment = validate(appointments.booking(data))
    try:
        slot = await ehr.read("Slot", data.slot_fhir_id)
    except (EhrNotFound, EhrGone):
        _reject(journal, data, "The slot does not exist in the EHR")
        return
    if slot.resource.get("status") != "free":
        # Taken, unless by this very booking written before (a replay).
        ours = await find_by_identifier(ehr, "Appointment", APPOINTMENT_ID, data.appointment_id)
        if ours is None or not appointments.holds_slot(ours.resource, slot.id):
            status = slot.resource.get("status")
            _reject(journal, data, f"The slot is {status} in the EHR")
            return
        journal.record(data.appointment_id, "Appointment", Interaction.MATCH, ours)
        _confirm(
            journal,
            appointment_id=data.appointment_id,
            patient_id=data.patient_id,
            appointment=ours,
        )
        return
    try:
        result = await ehr.create(
            appointment, if_none_exist=if_none_exist(APPOINTMENT_ID, data.appointment_id)
        )
    except EhrConflict as exc:
        _reject(journal, data, exc.outcome_text or "The EHR refused the booking")
        return
    interaction = Interaction.CREATE if result.created else Interaction.MATCH
    journal.record(data.appointment_id, "Appointment", interaction, result)
    if appointments.holds_slot(result.resource, slot.id) and not await occupy(
        ehr, journal, data.appointment_id, slot, result.id
    ):
        # Another booking won the slot between our read and our write: take ours back.
        withdrawn, _ = await apply_change(ehr, result, appointments.withdrawn)
        journal.record(data.appointment_id, "Appointment", Interaction.COMPENSATE, withdrawn)
        _reject(journal, data, "Another booking took the slot", withdrawn)
        return
    _confirm(
        journal, appointment_id=data.appointment_id, patient_id=data.patient_id, appointment=result
    )


async def booked_appointment(
    connector: Connector,
    reads: BeforeCommit,
    *,
    patient_id: str,
    appointment_id: str,
    appointment_fhir_id: str | None,
) -> Versioned | None:
    """The EHR's current version of the patient's appointment, waiting (bounded) for its
    booking when it is not in the EHR yet; None when the EHR rejected the booking."""
    ehr = connector.ehr
    current = await locate_appointment(ehr, reads, appointment_id, appointment_fhir_id)
    if current is None:
        fhir_id = await wait_for_booking(
            reads,
            appointment_id,
            patient_id=patient_id,
            booking_consumer=connector.booking_consumer,
            timeout_s=connector.settings.outbound_booking_wait_s,
        )
        if fhir_id is None:
            return None
        current = await ehr.read("Appointment", fhir_id)
    return current


async def _patients_appointment(
    connector: Connector,
    reads: BeforeCommit,
    patient_id: str,
    appointment_id: str,
    appointment_fhir_id: str | None,
) -> Versioned | None:
    current = await booked_appointment(
        connector,
        reads,
        patient_id=patient_id,
        appointment_id=appointment_id,
        appointment_fhir_id=appointment_fhir_id,
    )
    if current is None:
        return None
    known = await known_patient(reads, patient_id)
    owner = appointments.patient_of(current.resource)
    if known is not None and owner is not None and owner != known:
        raise PermanentError(f"{current.reference} is not an appointment of this patient")
    return current


def _log_stale_base(current: Versioned, based_on_version: str | None) -> None:
    if based_on_version is not None and based_on_version != current.version_id:
        # Someone changed it in the EHR since scheduling saw it: re-applied on the current
        # version (the state rules decide whether that is still allowed).
        log.info(
            "outbound.base_version_stale",
            fhir_id=current.id,
            based_on=based_on_version,
            current=current.version_id,
        )


async def cancel(
    connector: Connector, reads: BeforeCommit, event: Event[AppointmentCancelledV1]
) -> Record:
    """Cancel the appointment in the EHR (If-Match, re-applied on conflict) and free its
    slots; a state that forbids it (fulfilled, arrived, ...) is a permanent failure."""
    ehr, data, journal = connector.ehr, event.data, Journal.of(event)
    current = await _patients_appointment(
        connector, reads, data.patient_id, data.appointment_id, data.appointment_fhir_id
    )
    if current is None:
        # The booking was rejected: nothing to cancel.
        journal.record(data.appointment_id, "Appointment", Interaction.NOOP)
        return journal.commit
    _log_stale_base(current, data.based_on_version)
    result, changed = await apply_change(
        ehr, current, lambda r: appointments.cancelled(r, reason_code=data.reason_code)
    )
    interaction = Interaction.UPDATE if changed else Interaction.NOOP
    journal.record(data.appointment_id, "Appointment", interaction, result)
    for slot_id in appointments.slot_ids(result.resource):
        await release(ehr, journal, data.appointment_id, slot_id, result.id)
    _confirm(
        journal, appointment_id=data.appointment_id, patient_id=data.patient_id, appointment=result
    )
    return journal.commit


async def reschedule(
    connector: Connector, reads: BeforeCommit, event: Event[AppointmentRescheduledV1]
) -> Record:
    """Move the appointment to its new slot: occupy the new Slot first (so a taken slot
    leaves the appointment untouched), update the Appointment, then free the old Slot."""
    journal = Journal.of(event)
    data = event.data
    current = await _patients_appointment(
        connector, reads, data.patient_id, data.appointment_id, data.appointment_fhir_id
    )
    if current is None:
        # The booking was rejected: nothing to move.
        journal.record(data.appointment_id, "Appointment", Interaction.NOOP)
        return journal.commit
    _log_stale_base(current, data.based_on_version)
    await _move(connector.ehr, journal, data, current)
    return journal.commit


async def _move(
    ehr: EhrPort, journal: Journal, data: AppointmentRescheduledV1, current: Versioned
) -> None:
    new_slot_id = data.new_slot_fhir_id
    result, changed = current, False
    if not appointments.is_rescheduled_to(current.resource, new_slot_id, data.start, data.end):
        try:
            appointments.check_changeable(current.resource, "rescheduled")
        except EhrStateForbids as exc:
            # Nothing to retry: the patient learns why and the appointment stays as it is.
            journal.record(data.appointment_id, "Appointment", Interaction.REJECTED, current)
            _confirm(
                journal,
                appointment_id=data.appointment_id,
                patient_id=data.patient_id,
                appointment=current,
                reason=exc.outcome_text or NOT_MOVABLE,
            )
            return
        try:
            new_slot: Versioned | None = await ehr.read("Slot", new_slot_id)
        except (EhrNotFound, EhrGone):
            new_slot = None
        if new_slot is None or not await occupy(
            ehr, journal, data.appointment_id, new_slot, current.id
        ):
            journal.record(data.appointment_id, "Appointment", Interaction.REJECTED, current)
            _confirm(
                journal,
                appointment_id=data.appointment_id,
                patient_id=data.patient_id,
                appointment=current,
                reason=NEW_SLOT_TAKEN,
            )
            return
        try:
            result, changed = await apply_change(
                ehr,
                current,
                lambda r: appointments.rescheduled(
                    r, slot_id=new_slot_id, start=data.start, end=data.end
                ),
            )
        except EhrStateForbids:
            await release(ehr, journal, data.appointment_id, new_slot_id, current.id)
            raise
    interaction = Interaction.UPDATE if changed else Interaction.NOOP
    journal.record(data.appointment_id, "Appointment", interaction, result)
    old_slots = {data.old_slot_fhir_id, *appointments.slot_ids(current.resource)} - {new_slot_id}
    for slot_id in sorted(old_slots):
        await release(ehr, journal, data.appointment_id, slot_id, result.id)
    _confirm(
        journal, appointment_id=data.appointment_id, patient_id=data.patient_id, appointment=result
    )
