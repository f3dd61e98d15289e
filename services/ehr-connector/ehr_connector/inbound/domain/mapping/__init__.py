"""FHIR resources → `contracts` payloads, one mapper per focus type of a subscribed topic.

`MAPPERS` is the one table the processor consults: for a focus resource type, which event
type it becomes, which patients it concerns, which related resources must be read first,
and the pure mapping itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ehr_connector.inbound.domain.fhir_values import Ref, Resource
from ehr_connector.inbound.domain.mapping import appointment, lab, medication, message
from ehr_connector.inbound.domain.mapping.common import (
    MappingContext,
    MappingResult,
    Rejected,
    Skipped,
)


@dataclass(frozen=True)
class Mapper:
    """How one focus resource type becomes an event."""

    resource_type: str
    event_type: str
    map: Callable[[Resource, MappingContext], MappingResult]
    needs: Callable[[Resource], list[Ref]]
    patients: Callable[[Resource], list[str]] | None
    """FHIR ids of the patients an event is for; None: the event is for no patient (slots)."""
    includes: tuple[str, ...] = ()
    """`_include` values that bring what `needs` names along with the focus, in one search."""


MAPPERS: dict[str, Mapper] = {
    "DiagnosticReport": Mapper(
        "DiagnosticReport",
        "lab.resulted",
        lab.map_report,
        lab.needs,
        lab.patients,
        includes=("DiagnosticReport:result",),
    ),
    "MedicationRequest": Mapper(
        "MedicationRequest",
        "medication.changed",
        medication.map_request,
        medication.needs,
        medication.patients,
        includes=("MedicationRequest:medication",),
    ),
    "Communication": Mapper(
        "Communication", "message.received", message.map_message, message.needs, message.patients
    ),
    "Appointment": Mapper(
        "Appointment",
        "appointment.updated",
        appointment.map_appointment,
        appointment.appointment_needs,
        appointment.appointment_patients,
    ),
    "Slot": Mapper("Slot", "slot.updated", appointment.map_slot, appointment.slot_needs, None),
}


def slot_subject(schedule_fhir_id: str) -> str:
    """The message key of `slot.updated` events: one schedule's slots stay in order."""
    return f"schedule:{schedule_fhir_id}"


__all__ = ["MAPPERS", "Mapper", "MappingContext", "MappingResult", "Rejected", "Skipped"]
