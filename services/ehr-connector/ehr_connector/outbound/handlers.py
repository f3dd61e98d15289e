"""The outbound side's event subscribers: each hands its event to its use case.

They are effect-first (registered with `@router.effect_first` on the service's one router,
in `ehr_connector.handlers`): the EHR is called with no transaction open, and the use case
returns what to record with the inbox row. What they need at run time (EHR client,
settings) is the service's `deps`, built by the composition root.
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
from ehr_connector.outbound.service import booking, consents, filing
from servicekit.consumer import BeforeCommit, Event, Record


async def book_appointment(reads: BeforeCommit, event: Event[AppointmentBookedV1]) -> Record:
    """Write the booking to the EHR (Appointment + busy Slot); publish its confirmation
    or rejection as appointment.updated."""
    return await booking.book(connector_for(reads.deps), event)


async def cancel_appointment(reads: BeforeCommit, event: Event[AppointmentCancelledV1]) -> Record:
    """Cancel the appointment in the EHR and free its slot."""
    return await booking.cancel(connector_for(reads.deps), reads, event)


async def reschedule_appointment(
    reads: BeforeCommit, event: Event[AppointmentRescheduledV1]
) -> Record:
    """Move the appointment to its new slot in the EHR."""
    return await booking.reschedule(connector_for(reads.deps), reads, event)


async def file_intake(reads: BeforeCommit, event: Event[IntakeSubmittedV1]) -> Record:
    """File the intake answers as a QuestionnaireResponse."""
    return await filing.file_intake(connector_for(reads.deps), reads, event)


async def send_message_to_care_team(reads: BeforeCommit, event: Event[MessageSentV1]) -> Record:
    """File the patient's message as a Communication to the care team."""
    return await filing.send_message(connector_for(reads.deps), reads, event)


async def file_triage(reads: BeforeCommit, event: Event[TriageCompletedV1]) -> Record:
    """File the triage outcome and a review Task for the care team."""
    return await filing.file_triage(connector_for(reads.deps), reads, event)


async def file_consent(reads: BeforeCommit, event: Event[ConsentGrantedV1]) -> Record:
    """Record the patient's consent to a caregiver's access as a FHIR Consent."""
    return await consents.grant(connector_for(reads.deps), event)


async def revoke_consent(reads: BeforeCommit, event: Event[ConsentRevokedV1]) -> Record:
    """Make the revoked grant's Consent inactive in the EHR."""
    return await consents.revoke(connector_for(reads.deps), event)
