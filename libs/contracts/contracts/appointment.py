"""Appointment and slot events: booked, cancelled, rescheduled by a patient; updated by the EHR."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from contracts.base import Coding, FhirId, Instant, InternalId, Payload, SourceVersion


class AppointmentStatus(StrEnum):
    """FHIR R4 Appointment.status values, plus `rejected` for a booking the EHR refused."""

    PROPOSED = "proposed"
    PENDING = "pending"
    BOOKED = "booked"
    ARRIVED = "arrived"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    NOSHOW = "noshow"
    ENTERED_IN_ERROR = "entered-in-error"
    CHECKED_IN = "checked-in"
    WAITLIST = "waitlist"
    REJECTED = "rejected"


class SlotStatus(StrEnum):
    """FHIR R4 Slot.status values."""

    BUSY = "busy"
    FREE = "free"
    BUSY_UNAVAILABLE = "busy-unavailable"
    BUSY_TENTATIVE = "busy-tentative"
    ENTERED_IN_ERROR = "entered-in-error"


class AppointmentBookedV1(Payload):
    """The patient booked a free slot; the connector writes it to the EHR."""

    appointment_id: InternalId = Field(description="Scheduling's id; our identifier in FHIR")
    patient_id: InternalId
    patient_fhir_id: FhirId
    slot_fhir_id: FhirId
    practitioner_fhir_id: FhirId | None = None
    start: Instant
    end: Instant
    reason: str | None = Field(default=None, max_length=500, description="Patient's words")
    booked_at: Instant


class AppointmentCancelledV1(Payload):
    """The patient cancelled an appointment."""

    appointment_id: InternalId
    patient_id: InternalId
    appointment_fhir_id: FhirId | None = Field(
        default=None, description="Known once the EHR confirmed the booking"
    )
    based_on_version: str | None = Field(default=None, description="EHR version for If-Match")
    reason_code: str | None = Field(default=None, description="e.g. pat, prov, other")
    cancelled_at: Instant


class AppointmentRescheduledV1(Payload):
    """The patient moved an appointment to another free slot."""

    appointment_id: InternalId
    patient_id: InternalId
    appointment_fhir_id: FhirId | None = None
    based_on_version: str | None = None
    old_slot_fhir_id: FhirId
    new_slot_fhir_id: FhirId
    start: Instant
    end: Instant
    rescheduled_at: Instant


class AppointmentUpdatedV1(Payload):
    """The EHR's view of an appointment changed (confirmed, rejected, cancelled by staff...)."""

    appointment_fhir_id: FhirId | None = None
    appointment_id: InternalId | None = Field(
        default=None, description="Scheduling's id when the appointment started in the portal"
    )
    patient_id: InternalId
    status: AppointmentStatus
    start: Instant | None = None
    end: Instant | None = None
    slot_fhir_ids: list[FhirId] = Field(default_factory=list)
    practitioner_fhir_id: FhirId | None = None
    reason: str | None = Field(default=None, description="Why, e.g. why a booking was rejected")
    source: SourceVersion | None = None
    practitioner_name: str | None = Field(
        default=None, max_length=200, description="The clinician's name, as the EHR has it"
    )
    location_fhir_id: FhirId | None = None
    location_name: str | None = Field(default=None, max_length=200)
    service_type: Coding | None = Field(default=None, description="Appointment.serviceType")
    visit_type: Coding | None = Field(default=None, description="Appointment.appointmentType")


class SlotUpdatedV1(Payload):
    """A slot in the EHR changed (freed, taken, blocked)."""

    slot_fhir_id: FhirId
    schedule_fhir_id: FhirId
    practitioner_fhir_id: FhirId | None = None
    status: SlotStatus
    start: Instant
    end: Instant
    source: SourceVersion
    location_fhir_id: FhirId | None = Field(default=None, description="The Schedule's Location")
    service_type: Coding | None = Field(default=None, description="Slot.serviceType")
    visit_type: Coding | None = Field(default=None, description="Slot.appointmentType")
