"""Appointment → `appointment.updated`; Slot → `slot.updated`."""

from __future__ import annotations

from contracts.appointment import (
    AppointmentStatus,
    AppointmentUpdatedV1,
    SlotStatus,
    SlotUpdatedV1,
)
from ehr_connector.inbound.domain.fhir_values import (
    Ref,
    Resource,
    as_list,
    best_coding,
    concept_text,
    human_name,
    parse_instant,
    reference_of,
    references,
    string,
)
from ehr_connector.inbound.domain.mapping.common import (
    MappingContext,
    MappingResult,
    Rejected,
    build,
    clip,
    source_version,
)

_APPOINTMENT_STATUSES = frozenset(s.value for s in AppointmentStatus) - {"rejected"}
_SLOT_STATUSES = frozenset(s.value for s in SlotStatus)
REASON_LIMIT = 500
NAME_LIMIT = 200


def _actors(appointment: Resource) -> list[object]:
    return [p.get("actor") for p in as_list(appointment.get("participant")) if isinstance(p, dict)]


def appointment_patients(appointment: Resource) -> list[str]:
    """FHIR ids of the Patient participants."""
    return [r.id for r in references(_actors(appointment), "Patient")]


def no_needs(_resource: Resource) -> list[Ref]:
    """Nothing besides the resource itself."""
    return []


def appointment_needs(appointment: Resource) -> list[Ref]:
    """The clinician and the place, whose names the patient is shown."""
    actors = _actors(appointment)
    return references(actors, "Practitioner")[:1] + references(actors, "Location")[:1]


def _first_coding(concepts: object) -> object:
    found = as_list(concepts)
    return best_coding(found[0]) if found else None


def _name(ref: Ref | None, ctx: MappingContext, actors: list[object]) -> str | None:
    if ref is None:
        return None
    named = human_name(ctx.get(ref))
    if named:
        return clip(named, NAME_LIMIT)
    for actor in actors:
        # Else the reference's own display, as the EHR wrote it.
        if isinstance(actor, dict) and reference_of(actor) == ref:
            return clip(string(actor.get("display")), NAME_LIMIT)
    return None


def _our_identifier(appointment: Resource, system: str | None) -> str | None:
    if system is None:
        return None
    for identifier in as_list(appointment.get("identifier")):
        if isinstance(identifier, dict) and identifier.get("system") == system:
            return string(identifier.get("value"))
    return None


def map_appointment(appointment: Resource, ctx: MappingContext) -> MappingResult:
    """The EHR's view of an appointment → `AppointmentUpdatedV1`."""
    source = source_version(appointment)
    if isinstance(source, Rejected):
        return source
    status = appointment.get("status")
    if status not in _APPOINTMENT_STATUSES:
        return Rejected("Appointment.status is missing or not an R4 code.")
    actors = _actors(appointment)
    practitioners = references(actors, "Practitioner")
    locations = references(actors, "Location")
    practitioner = practitioners[0] if practitioners else None
    location = locations[0] if locations else None
    reason = None
    if status in ("cancelled", "noshow", "entered-in-error"):
        reason = concept_text(appointment.get("cancelationReason"))
    return build(
        AppointmentUpdatedV1,
        {
            "appointment_fhir_id": source.fhir_id,
            "appointment_id": _our_identifier(appointment, ctx.appointment_identifier_system),
            "patient_id": ctx.patient_id,
            "status": status,
            "start": parse_instant(appointment.get("start")),
            "end": parse_instant(appointment.get("end")),
            "slot_fhir_ids": [r.id for r in references(appointment.get("slot"), "Slot")],
            "practitioner_fhir_id": practitioner.id if practitioner else None,
            "practitioner_name": _name(practitioner, ctx, actors),
            "location_fhir_id": location.id if location else None,
            "location_name": _name(location, ctx, actors),
            "service_type": _first_coding(appointment.get("serviceType")),
            "visit_type": best_coding(appointment.get("appointmentType")),
            "reason": clip(reason, REASON_LIMIT),
            "source": source,
        },
    )


def slot_needs(slot: Resource) -> list[Ref]:
    """The slot's Schedule, whose actor is the practitioner."""
    schedule = reference_of(slot.get("schedule"))
    return [schedule] if schedule is not None and schedule.type == "Schedule" else []


def schedule_of(slot: Resource) -> str | None:
    """The FHIR id of the slot's Schedule."""
    schedule = reference_of(slot.get("schedule"))
    return schedule.id if schedule is not None and schedule.type == "Schedule" else None


def map_slot(slot: Resource, ctx: MappingContext) -> MappingResult:
    """A slot's availability → `SlotUpdatedV1` (a deleted slot is `entered-in-error`)."""
    source = source_version(slot)
    if isinstance(source, Rejected):
        return source
    schedule_id = schedule_of(slot)
    if schedule_id is None:
        return Rejected("Slot.schedule does not reference a Schedule.")
    status = "entered-in-error" if ctx.deleted else slot.get("status")
    if status not in _SLOT_STATUSES:
        return Rejected("Slot.status is missing or not an R4 code.")
    start, end = parse_instant(slot.get("start")), parse_instant(slot.get("end"))
    if start is None or end is None:
        return Rejected("Slot.start or Slot.end is missing.")
    schedule = ctx.get(Ref("Schedule", schedule_id))
    practitioners = references(schedule.get("actor") if schedule else None, "Practitioner")
    locations = references(schedule.get("actor") if schedule else None, "Location")
    service_types = as_list(slot.get("serviceType")) or as_list(
        schedule.get("serviceType") if schedule else None
    )
    return build(
        SlotUpdatedV1,
        {
            "slot_fhir_id": source.fhir_id,
            "schedule_fhir_id": schedule_id,
            "practitioner_fhir_id": practitioners[0].id if practitioners else None,
            "location_fhir_id": locations[0].id if locations else None,
            "service_type": best_coding(service_types[0]) if service_types else None,
            "visit_type": best_coding(slot.get("appointmentType")),
            "status": status,
            "start": start,
            "end": end,
            "source": source,
        },
    )
