"""Appointments and slots: the R4 resources and the rules for changing them. No I/O.

Booking in a FHIR R4 server that is not a scheduling engine is two writes: the Appointment
(status `booked`, pointing at its Slot) and the Slot going `busy` (a compare-and-set with
`If-Match`, which is also what settles two bookings racing for one slot). Many vendor EHRs
flip the Slot themselves or offer `$book`; a generic R4 server (and the sandbox) leaves it
to the client, so the connector does it, and frees slots on cancel and reschedule.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any, Final

from contracts.appointment import AppointmentBookedV1, AppointmentStatus, AppointmentUpdatedV1
from contracts.base import SourceVersion
from ehr_connector.ehr.errors import EhrStateForbids, operation_outcome
from ehr_connector.outbound.domain.identifiers import APPOINTMENT_ID, identifier
from ehr_connector.outbound.domain.tags import tagged

FhirJson = dict[str, Any]

CANCELLATION_REASONS: Final = (
    "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason"
)
# "Patient: Canceled via Patient Portal": what a cancel from the portal is, unless the
# event names another code of the same code system.
PORTAL_CANCELLATION: Final = "pat-cpp"
KNOWN_CANCELLATION_CODES: Final = frozenset(
    {
        "pat", "pat-crs", "pat-cpp", "pat-dec", "pat-fb", "pat-lt", "pat-mt", "pat-mv",
        "pat-preg", "pat-swl", "pat-ucp", "prov", "prov-pers", "prov-dch", "prov-edu",
        "prov-hosp", "prov-labs", "prov-mri", "prov-onc", "maint", "meds-inc", "other",
        "oth-cms", "oth-err", "oth-fin", "oth-iv", "oth-int", "oth-mu", "oth-room",
        "oth-oerr", "oth-swie", "oth-weath",
    }
)  # fmt: skip
# Statuses in which an appointment still holds its slot.
HOLDING_STATUSES: Final = frozenset(
    {"proposed", "pending", "booked", "arrived", "checked-in", "waitlist"}
)
# Statuses from which the patient may still cancel or move the appointment.
CHANGEABLE_STATUSES: Final = frozenset({"proposed", "pending", "booked", "waitlist"})


def _ref(resource_type: str, fhir_id: str) -> FhirJson:
    return {"reference": f"{resource_type}/{fhir_id}"}


def _minutes(start: datetime, end: datetime) -> int:
    return max(1, int((end - start).total_seconds() // 60))


def booking(data: AppointmentBookedV1) -> FhirJson:
    """The Appointment for a booking: booked into its slot, patient and practitioner as
    participants, our appointment id as identifier, the patient's reason as text."""
    participants: list[FhirJson] = [
        {
            "actor": _ref("Patient", data.patient_fhir_id),
            "required": "required",
            "status": "accepted",
        }
    ]
    if data.practitioner_fhir_id:
        participants.append(
            {
                "actor": _ref("Practitioner", data.practitioner_fhir_id),
                "required": "required",
                "status": "accepted",
            }
        )
    appointment: FhirJson = {
        "resourceType": "Appointment",
        "identifier": [identifier(APPOINTMENT_ID, data.appointment_id)],
        "status": "booked",
        "start": data.start.isoformat(),
        "end": data.end.isoformat(),
        "minutesDuration": _minutes(data.start, data.end),
        "slot": [_ref("Slot", data.slot_fhir_id)],
        "created": data.booked_at.isoformat(),
        "participant": participants,
    }
    if data.reason:
        appointment["reasonCode"] = [{"text": data.reason}]
    return tagged(appointment)


def slot_ids(appointment: FhirJson) -> list[str]:
    """The ids of the Slots an Appointment references."""
    ids = []
    for ref in appointment.get("slot", []):
        kind, _, fhir_id = str(ref.get("reference", "")).rpartition("/")
        if kind.endswith("Slot") and fhir_id:
            ids.append(fhir_id)
    return ids


def patient_of(appointment: FhirJson) -> str | None:
    """The id of the Patient participating in an Appointment, if any."""
    for participant in appointment.get("participant", []):
        kind, _, fhir_id = str(participant.get("actor", {}).get("reference", "")).rpartition("/")
        if kind.endswith("Patient") and fhir_id:
            return fhir_id
    return None


def practitioner_of(appointment: FhirJson) -> str | None:
    """The id of the first Practitioner participating in an Appointment, if any."""
    for participant in appointment.get("participant", []):
        kind, _, fhir_id = str(participant.get("actor", {}).get("reference", "")).rpartition("/")
        if kind.endswith("Practitioner") and fhir_id:
            return fhir_id
    return None


def holds_slot(appointment: FhirJson, slot_id: str) -> bool:
    """Whether an Appointment is active and booked into `slot_id`."""
    return appointment.get("status") in HOLDING_STATUSES and slot_id in slot_ids(appointment)


def slot_with_status(slot: FhirJson, status: str) -> FhirJson | None:
    """The Slot with a new status, or None when it already has it."""
    if slot.get("status") == status:
        return None
    changed = copy.deepcopy(slot)
    changed["status"] = status
    return tagged(changed)


def _forbidden(appointment: FhirJson, action: str) -> EhrStateForbids:
    status = appointment.get("status")
    message = (
        f"Appointment/{appointment.get('id')} is {status} in the EHR; "
        f"a {status} appointment cannot be {action}"
    )
    return EhrStateForbids(
        "The EHR's state of the appointment forbids the change",
        outcome=operation_outcome("business-rule", message),
        interaction="update",
        resource_type="Appointment",
    )


def cancelled(appointment: FhirJson, *, reason_code: str | None) -> FhirJson | None:
    """The Appointment cancelled from the portal; None when it already is cancelled.

    Raises `EhrStateForbids` when its status does not allow a cancel (e.g. fulfilled)."""
    if appointment.get("status") == "cancelled":
        return None
    if appointment.get("status") not in CHANGEABLE_STATUSES:
        raise _forbidden(appointment, "cancelled")
    code = reason_code if reason_code in KNOWN_CANCELLATION_CODES else PORTAL_CANCELLATION
    changed = copy.deepcopy(appointment)
    changed["status"] = "cancelled"
    changed["cancelationReason"] = {"coding": [{"system": CANCELLATION_REASONS, "code": code}]}
    return tagged(changed)


def _same_instant(value: Any, when: datetime) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) == when
    except ValueError:
        return False


def is_rescheduled_to(appointment: FhirJson, slot_id: str, start: datetime, end: datetime) -> bool:
    """Whether the Appointment already is in `slot_id` at `start`-`end`."""
    return (
        slot_ids(appointment) == [slot_id]
        and _same_instant(appointment.get("start"), start)
        and _same_instant(appointment.get("end"), end)
    )


def check_changeable(appointment: FhirJson, action: str) -> None:
    """Raise `EhrStateForbids` unless the patient may still change the appointment."""
    if appointment.get("status") not in CHANGEABLE_STATUSES:
        raise _forbidden(appointment, action)


def rescheduled(
    appointment: FhirJson, *, slot_id: str, start: datetime, end: datetime
) -> FhirJson | None:
    """The Appointment moved to another slot; None when it already is there.

    Raises `EhrStateForbids` when its status does not allow a change."""
    if is_rescheduled_to(appointment, slot_id, start, end):
        return None
    check_changeable(appointment, "rescheduled")
    changed = copy.deepcopy(appointment)
    changed["slot"] = [_ref("Slot", slot_id)]
    changed["start"] = start.isoformat()
    changed["end"] = end.isoformat()
    changed["minutesDuration"] = _minutes(start, end)
    return tagged(changed)


def withdrawn(appointment: FhirJson) -> FhirJson | None:
    """Our own booking cancelled again because another booking won its slot."""
    if appointment.get("status") == "cancelled":
        return None
    changed = copy.deepcopy(appointment)
    changed["status"] = "cancelled"
    changed["cancelationReason"] = {
        "coding": [{"system": CANCELLATION_REASONS, "code": "other"}],
        "text": "The slot was taken by another booking",
    }
    return tagged(changed)


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def updated_event(
    appointment: FhirJson, *, appointment_id: str, patient_id: str, reason: str | None = None
) -> AppointmentUpdatedV1:
    """`appointment.updated` saying what the EHR now holds for one of our appointments."""
    meta = appointment.get("meta", {})
    return AppointmentUpdatedV1(
        appointment_fhir_id=appointment["id"],
        appointment_id=appointment_id,
        patient_id=patient_id,
        status=AppointmentStatus(appointment["status"]),
        start=_instant(appointment.get("start")),
        end=_instant(appointment.get("end")),
        slot_fhir_ids=slot_ids(appointment),
        practitioner_fhir_id=practitioner_of(appointment),
        reason=reason,
        source=SourceVersion(
            resource_type="Appointment",
            fhir_id=appointment["id"],
            version_id=str(meta.get("versionId", "")),
            last_updated=_instant(meta.get("lastUpdated")) or datetime.now(UTC),
        ),
    )


def rejected_event(
    data: AppointmentBookedV1, reason: str, withdrawn: FhirJson | None = None
) -> AppointmentUpdatedV1:
    """`appointment.updated` with status `rejected`: the EHR did not take the booking."""
    return AppointmentUpdatedV1(
        appointment_fhir_id=withdrawn["id"] if withdrawn is not None else None,
        appointment_id=data.appointment_id,
        patient_id=data.patient_id,
        status=AppointmentStatus.REJECTED,
        start=data.start,
        end=data.end,
        slot_fhir_ids=[data.slot_fhir_id],
        practitioner_fhir_id=data.practitioner_fhir_id,
        reason=reason,
    )
