"""Finding the EHR resources an event refers to by our ids. Reads only.

An event may refer to something whose own event has not reached the EHR yet (an intake for
an appointment whose booking is still on its way: the two travel on different topics).
That is `NotInEhrYet`: retried a few times by the consumer, then dead-lettered with the
reason, for an operator to re-drive once the other event went through.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ehr_connector import store
from ehr_connector.ehr.port import EhrPort, Versioned
from ehr_connector.outbound.identifiers import APPOINTMENT_ID, token


class NotInEhrYet(Exception):
    """Something the event refers to is not (yet) known in the EHR."""


async def find_by_identifier(
    ehr: EhrPort, resource_type: str, system: str, value: str
) -> Versioned | None:
    """The resource of a type carrying our identifier, if the EHR has one."""
    page = await ehr.search(resource_type, [("identifier", token(system, value))])
    return Versioned(page.matches[0]) if page.matches else None


async def patient_fhir_id(session: AsyncSession, patient_id: str) -> str:
    """The EHR Patient id of a portal patient (learnt from bookings and links)."""
    found = await store.patient_fhir_id_of(session, patient_id)
    if found is None:
        raise NotInEhrYet(f"no EHR Patient is known for portal patient {patient_id}")
    return found


async def locate_appointment(
    ehr: EhrPort, session: AsyncSession, appointment_id: str, appointment_fhir_id: str | None
) -> Versioned | None:
    """The EHR's current version of one of the patient's appointments: by the EHR id the
    event carries, else the one we recorded, else by our identifier."""
    fhir_id = appointment_fhir_id
    if fhir_id is None:
        link = await store.get_link(session, "appointment", appointment_id)
        fhir_id = link.fhir_id if link is not None else None
    if fhir_id is not None:
        return await ehr.read("Appointment", fhir_id)
    return await find_by_identifier(ehr, "Appointment", APPOINTMENT_ID, appointment_id)
