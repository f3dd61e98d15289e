"""Event handlers: the EHR's view of slots and appointments, handed to the use cases in
`scheduling.service`."""

from __future__ import annotations

from contracts.appointment import AppointmentUpdatedV1, SlotUpdatedV1
from scheduling import service
from scheduling.store import PATIENT_TURNS
from servicekit.consumer import Event, EventRouter, UnitOfWork

router = EventRouter()


@router.handles("slot.updated")
async def cache_slot(uow: UnitOfWork, event: Event[SlotUpdatedV1]) -> None:
    """Keep the slot cache in step with the EHR; older versions never overwrite newer."""
    await service.cache_slot(uow.session, event.data)


# Reads an appointment, then writes it, as the patient's cancel and move do: turns.
@router.handles("appointment.updated", interactive=True, turns=PATIENT_TURNS)
async def apply_ehr_appointment_change(uow: UnitOfWork, event: Event[AppointmentUpdatedV1]) -> None:
    """Apply the EHR's confirmation, rejection or change of an appointment, including one
    the clinic made or changed in the EHR (clinician, place, time, status)."""
    await service.apply_ehr_appointment_change(uow.session, event.patient_id, event.data)
