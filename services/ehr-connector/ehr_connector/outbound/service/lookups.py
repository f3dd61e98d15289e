"""Finding the EHR resources an event refers to by our ids, and waiting for a booking.

Reads only, and never a database session open across an EHR call. An intake, a cancel or a
reschedule may be handled before its appointment's booking: they travel on other topics
(one topic per event type), so per-patient order holds within a topic only. Such an event
waits for the booking's outcome to be recorded, bounded by `outbound_booking_wait_s`, and
is then dead-lettered with a reason saying which booking it waited for (an operator
re-drives it once the booking is in the EHR). It stops waiting at once when the patient's
bookings are dead-lettered or parked (the booking cannot come before someone acts).
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from ehr_connector import store
from ehr_connector.ehr.port import EhrPort, Versioned
from ehr_connector.outbound.domain.identifiers import APPOINTMENT_ID, token
from servicekit.consumer import BeforeCommit
from servicekit.errors import PermanentError

# The consumer of `appointment.booked` (its handler's name in `ehr_connector.handlers`).
BOOKING_CONSUMER: Final = "book_appointment"
_FIRST_POLL_S: Final = 0.05
_MAX_POLL_S: Final = 1.0


class NotInEhrYet(Exception):
    """Something the event refers to is not (yet) known in the EHR."""


class BookingNotHandled(PermanentError):
    """The booking an event depends on was not handled within the wait (or is blocked)."""


async def find_by_identifier(
    ehr: EhrPort, resource_type: str, system: str, value: str
) -> Versioned | None:
    """The resource of a type carrying our identifier, if the EHR has one."""
    page = await ehr.search(resource_type, [("identifier", token(system, value))])
    return Versioned(page.matches[0]) if page.matches else None


async def known_patient(reads: BeforeCommit, patient_id: str) -> str | None:
    """The EHR Patient id of a portal patient, if known (from bookings and links)."""
    async with reads.reading() as session:
        return await store.patient_fhir_id_of(session, patient_id)


async def patient_fhir_id(reads: BeforeCommit, patient_id: str, *, wait_s: float = 0.0) -> str:
    """The EHR Patient id of a portal patient, waiting up to `wait_s` for it: a patient's
    first message or symptom check may be handled before their `patient.linked` (another
    topic) right after the first sign-in. `NotInEhrYet` when it stays unknown."""
    deadline = time.monotonic() + wait_s
    pause = _FIRST_POLL_S
    while True:
        found = await known_patient(reads, patient_id)
        if found is not None:
            return found
        left = deadline - time.monotonic()
        if left <= 0:
            raise NotInEhrYet(
                f"no EHR Patient is known for portal patient {patient_id}: its patient.linked "
                f"was not handled within {wait_s:g} s"
            )
        # Outside any session: the link's consumer commits in the meantime.
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, _MAX_POLL_S)


async def linked_fhir_id(reads: BeforeCommit, kind: str, our_id: str) -> str | None:
    """The EHR id recorded for one of our objects, if any."""
    async with reads.reading() as session:
        link = await store.get_link(session, kind, our_id)
    return link.fhir_id if link is not None else None


async def locate_appointment(
    ehr: EhrPort, reads: BeforeCommit, appointment_id: str, appointment_fhir_id: str | None
) -> Versioned | None:
    """The EHR's current version of one of the patient's appointments: by the EHR id the
    event carries, else the one we recorded, else by our identifier."""
    fhir_id = appointment_fhir_id or await linked_fhir_id(reads, "appointment", appointment_id)
    if fhir_id is not None:
        return await ehr.read("Appointment", fhir_id)
    return await find_by_identifier(ehr, "Appointment", APPOINTMENT_ID, appointment_id)


async def wait_for_booking(
    reads: BeforeCommit,
    appointment_id: str,
    *,
    patient_id: str,
    booking_consumer: str,
    timeout_s: float,
) -> str | None:
    """Wait until the booking of `appointment_id` has been handled: the Appointment's EHR
    id, or None when the EHR rejected the booking. `BookingNotHandled` after `timeout_s`,
    or at once when the patient's bookings are blocked by a dead letter."""
    deadline = time.monotonic() + timeout_s
    pause = _FIRST_POLL_S
    while True:
        async with reads.reading() as session:
            link = await store.get_link(session, "appointment", appointment_id)
            if link is not None:
                return link.fhir_id
            if await store.booking_was_rejected(session, appointment_id):
                return None
            blocked = await store.booking_blocked(session, booking_consumer, patient_id)
        if blocked is not None:
            raise BookingNotHandled(
                f"appointment {appointment_id} is not in the EHR and its booking cannot be "
                f"handled: {blocked}; re-drive this event after the booking's dead letter"
            )
        left = deadline - time.monotonic()
        if left <= 0:
            raise BookingNotHandled(
                f"appointment {appointment_id} is not in the EHR: its appointment.booked was "
                f"not handled within {timeout_s:g} s; re-drive this event once it is"
            )
        # Outside any session: the booking's consumer commits in the meantime.
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, _MAX_POLL_S)
