"""Event subscribers of the ehr-connector.

`router` is the service's one EventRouter: the outbound subscribers live here, and the
inbound side registers its `patient.linked` handler on the same router from
`ehr_connector.backfill` (imported by the composition root). Each subscriber only hands
the event to its use case with the running connector (EHR client, settings).
"""

from __future__ import annotations

from contracts.appointment import (
    AppointmentBookedV1,
    AppointmentCancelledV1,
    AppointmentRescheduledV1,
)
from contracts.intake import IntakeSubmittedV1
from contracts.message import MessageSentV1
from contracts.triage import TriageCompletedV1
from ehr_connector.context import connector_for
from ehr_connector.outbound import booking, filing
from servicekit.consumer import Event, EventRouter, UnitOfWork

router = EventRouter()


@router.handles("appointment.booked")
async def book_appointment(uow: UnitOfWork, event: Event[AppointmentBookedV1]) -> None:
    """Write the booking to the EHR (Appointment + busy Slot); publish its confirmation
    or rejection as appointment.updated."""
    await booking.book(connector_for(uow), uow, event)


@router.handles("appointment.cancelled")
async def cancel_appointment(uow: UnitOfWork, event: Event[AppointmentCancelledV1]) -> None:
    """Cancel the appointment in the EHR and free its slot."""
    await booking.cancel(connector_for(uow), uow, event)


@router.handles("appointment.rescheduled")
async def reschedule_appointment(uow: UnitOfWork, event: Event[AppointmentRescheduledV1]) -> None:
    """Move the appointment to its new slot in the EHR."""
    await booking.reschedule(connector_for(uow), uow, event)


@router.handles("intake.submitted")
async def file_intake(uow: UnitOfWork, event: Event[IntakeSubmittedV1]) -> None:
    """File the intake answers as a QuestionnaireResponse."""
    await filing.file_intake(connector_for(uow), uow, event)


@router.handles("message.sent")
async def send_message_to_care_team(uow: UnitOfWork, event: Event[MessageSentV1]) -> None:
    """File the patient's message as a Communication to the care team."""
    await filing.send_message(connector_for(uow), uow, event)


@router.handles("triage.completed")
async def file_triage(uow: UnitOfWork, event: Event[TriageCompletedV1]) -> None:
    """File the triage outcome and a review Task for the care team."""
    await filing.file_triage(connector_for(uow), uow, event)
