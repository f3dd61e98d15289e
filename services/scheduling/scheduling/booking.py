"""The patient's own appointment actions: book, cancel, submit intake.

Each use case changes scheduling's tables and adds its event to the outbox in one
transaction; the ehr-connector writes it to the EHR and answers with `appointment.updated`
(handled in `handlers.py`). A retried request with the same idempotency key changes
nothing twice.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from contracts.appointment import AppointmentBookedV1, AppointmentCancelledV1, AppointmentStatus
from contracts.intake import IntakeAnswer, IntakeSubmittedV1
from scheduling import store
from scheduling.domain import cancellable
from servicekit.app import Service


class BookingError(Exception):
    """The action cannot be done; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class BookRequest:
    """What the patient asked for."""

    patient_id: str
    patient_fhir_id: str
    slot_id: str
    reason: str | None
    idempotency_key: str | None


async def book(service: Service, request: BookRequest) -> tuple[store.Appointment, bool]:
    """Hold the slot and ask the EHR to book it; returns (appointment, created)."""
    now = datetime.now(UTC)
    async with service.db.transaction() as session:
        if request.idempotency_key:
            earlier = await store.appointment_by_key(
                session, request.patient_id, request.idempotency_key
            )
            if earlier is not None:
                return earlier, False
        slot = await store.get_slot(session, request.slot_id, for_update=True)
        if slot is None:
            raise BookingError(404, "No such slot.")
        if slot.status != "free":
            raise BookingError(409, "This time is no longer free; please choose another.")
        if slot.start <= now:
            raise BookingError(409, "This time has already passed.")
        appointment = store.Appointment(
            id=f"apt-{uuid.uuid4().hex[:16]}",
            patient_id=request.patient_id,
            status=AppointmentStatus.PENDING.value,
            start=slot.start,
            end=slot.end,
            slot_fhir_id=slot.slot_fhir_id,
            practitioner_fhir_id=slot.practitioner_fhir_id,
            idempotency_key=request.idempotency_key,
            updated_at=now,
        )
        session.add(appointment)
        # Held until the EHR answers, so the portal offers it to nobody else meanwhile.
        slot.status = "busy-tentative"
        service.outbox.add(
            session,
            AppointmentBookedV1(
                appointment_id=appointment.id,
                patient_id=request.patient_id,
                patient_fhir_id=request.patient_fhir_id,
                slot_fhir_id=slot.slot_fhir_id,
                practitioner_fhir_id=slot.practitioner_fhir_id,
                start=slot.start,
                end=slot.end,
                reason=request.reason,
                booked_at=now,
            ),
            subject=request.patient_id,
        )
    return appointment, True


async def cancel(
    service: Service, patient_id: str, appointment_id: str, reason_code: str | None
) -> store.Appointment:
    """Cancel the patient's appointment (again: no change, no second event)."""
    now = datetime.now(UTC)
    async with service.db.transaction() as session:
        appointment = await store.get_appointment(session, appointment_id)
        if appointment is None or appointment.patient_id != patient_id:
            raise BookingError(404, "No such appointment for this patient.")
        if appointment.status == AppointmentStatus.CANCELLED.value:
            return appointment
        if not cancellable(AppointmentStatus(appointment.status)):
            raise BookingError(
                409, f"An appointment that is {appointment.status} cannot be cancelled."
            )
        appointment.status = AppointmentStatus.CANCELLED.value
        appointment.updated_at = now
        service.outbox.add(
            session,
            AppointmentCancelledV1(
                appointment_id=appointment.id,
                patient_id=patient_id,
                appointment_fhir_id=appointment.appointment_fhir_id,
                based_on_version=appointment.ehr_version,
                reason_code=reason_code,
                cancelled_at=now,
            ),
            subject=patient_id,
        )
    return appointment


async def submit_intake(
    service: Service,
    patient_id: str,
    appointment_id: str,
    questionnaire: str,
    answers: list[IntakeAnswer],
) -> str:
    """Send the patient's intake answers for an upcoming appointment; returns the intake id."""
    now = datetime.now(UTC)
    async with service.db.transaction() as session:
        appointment = await store.get_appointment(session, appointment_id)
        if appointment is None or appointment.patient_id != patient_id:
            raise BookingError(404, "No such appointment for this patient.")
        if appointment.status not in (
            AppointmentStatus.PENDING.value,
            AppointmentStatus.BOOKED.value,
        ):
            raise BookingError(
                409, f"Intake is closed for an appointment that is {appointment.status}."
            )
        intake_id = f"in-{uuid.uuid4().hex[:16]}"
        service.outbox.add(
            session,
            IntakeSubmittedV1(
                intake_id=intake_id,
                appointment_id=appointment.id,
                appointment_fhir_id=appointment.appointment_fhir_id,
                patient_id=patient_id,
                questionnaire_canonical=questionnaire,
                answers=answers,
                submitted_at=now,
            ),
            subject=patient_id,
        )
    return intake_id
