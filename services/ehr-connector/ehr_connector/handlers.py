"""Event subscribers of the ehr-connector.

`router` is the service's one EventRouter: the outbound subscribers live here, and the
inbound side's `patient.linked` handler (`ehr_connector.inbound.handlers`) is registered
on it at the end of this module. Each outbound subscriber only
hands the event to its use case with the running connector (EHR client, settings: the
service's `deps`, built by the composition root). They are effect-first: the EHR is called
with no transaction open, and the use case returns what to record with the inbox row.
"""

from __future__ import annotations

from contracts.appointment import (
    AppointmentBookedV1,
    AppointmentCancelledV1,
    AppointmentRescheduledV1,
)
from contracts.consent import ConsentGrantedV1, ConsentRevokedV1
from contracts.intake import IntakeSubmittedV1
from contracts.message import MessageSentV1
from contracts.triage import TriageCompletedV1
from ehr_connector.context import connector_for
from ehr_connector.inbound import handlers as inbound
from ehr_connector.outbound import booking, consents, filing
from servicekit.consumer import BeforeCommit, Event, EventRouter, Record

router = EventRouter()


@router.effect_first("appointment.booked")
async def book_appointment(reads: BeforeCommit, event: Event[AppointmentBookedV1]) -> Record:
    """Write the booking to the EHR (Appointment + busy Slot); publish its confirmation
    or rejection as appointment.updated."""
    return await booking.book(connector_for(reads.deps), event)


@router.effect_first("appointment.cancelled")
async def cancel_appointment(reads: BeforeCommit, event: Event[AppointmentCancelledV1]) -> Record:
    """Cancel the appointment in the EHR and free its slot."""
    return await booking.cancel(connector_for(reads.deps), reads, event)


@router.effect_first("appointment.rescheduled")
async def reschedule_appointment(
    reads: BeforeCommit, event: Event[AppointmentRescheduledV1]
) -> Record:
    """Move the appointment to its new slot in the EHR."""
    return await booking.reschedule(connector_for(reads.deps), reads, event)


@router.effect_first("intake.submitted")
async def file_intake(reads: BeforeCommit, event: Event[IntakeSubmittedV1]) -> Record:
    """File the intake answers as a QuestionnaireResponse."""
    return await filing.file_intake(connector_for(reads.deps), reads, event)


@router.effect_first("message.sent")
async def send_message_to_care_team(reads: BeforeCommit, event: Event[MessageSentV1]) -> Record:
    """File the patient's message as a Communication to the care team."""
    return await filing.send_message(connector_for(reads.deps), reads, event)


@router.effect_first("triage.completed")
async def file_triage(reads: BeforeCommit, event: Event[TriageCompletedV1]) -> Record:
    """File the triage outcome and a review Task for the care team."""
    return await filing.file_triage(connector_for(reads.deps), reads, event)


@router.effect_first("consent.granted")
async def file_consent(reads: BeforeCommit, event: Event[ConsentGrantedV1]) -> Record:
    """Record the patient's consent to a caregiver's access as a FHIR Consent."""
    return await consents.grant(connector_for(reads.deps), event)


@router.effect_first("consent.revoked")
async def revoke_consent(reads: BeforeCommit, event: Event[ConsentRevokedV1]) -> Record:
    """Make the revoked grant's Consent inactive in the EHR."""
    return await consents.revoke(connector_for(reads.deps), event)


# The inbound side's one subscriber: which portal patient an EHR Patient is, and the
# back-fill of their history.
router.handles("patient.linked")(inbound.link_patient)
