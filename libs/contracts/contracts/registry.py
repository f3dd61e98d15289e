"""The topic registry: every event type, its topic, payload model, version and partitions.

Routing is always by event type (the topic name), never by a Python class name.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.appointment import (
    AppointmentBookedV1,
    AppointmentCancelledV1,
    AppointmentRescheduledV1,
    AppointmentUpdatedV1,
    SlotUpdatedV1,
)
from contracts.base import Payload
from contracts.consent import ConsentGrantedV1, ConsentRevokedV1
from contracts.intake import IntakeRemindedV1, IntakeSubmittedV1
from contracts.lab import LabResultedV1
from contracts.medication import MedicationChangedV1
from contracts.message import MessageReceivedV1, MessageSentV1, MessageSyncedV1
from contracts.patient import PatientLinkedV1
from contracts.record import RecordImportedV1
from contracts.triage import TriageCompletedV1

DEFAULT_PARTITIONS = 3
DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class EventType:
    """One published version of one event type."""

    topic: str
    version: int
    model: type[Payload]
    partitions: int = DEFAULT_PARTITIONS

    @property
    def dataschema(self) -> str:
        """The `ce_dataschema` header value, `<type>/v<N>`."""
        return f"{self.topic}/v{self.version}"


REGISTRY: tuple[EventType, ...] = (
    EventType("appointment.booked", 1, AppointmentBookedV1),
    EventType("appointment.cancelled", 1, AppointmentCancelledV1),
    EventType("appointment.rescheduled", 1, AppointmentRescheduledV1),
    EventType("appointment.updated", 1, AppointmentUpdatedV1),
    EventType("slot.updated", 1, SlotUpdatedV1),
    EventType("intake.submitted", 1, IntakeSubmittedV1),
    EventType("intake.reminded", 1, IntakeRemindedV1),
    EventType("lab.resulted", 1, LabResultedV1),
    EventType("medication.changed", 1, MedicationChangedV1),
    EventType("message.sent", 1, MessageSentV1),
    EventType("message.received", 1, MessageReceivedV1),
    EventType("message.synced", 1, MessageSyncedV1),
    EventType("triage.completed", 1, TriageCompletedV1),
    EventType("patient.linked", 1, PatientLinkedV1),
    EventType("consent.granted", 1, ConsentGrantedV1),
    EventType("consent.revoked", 1, ConsentRevokedV1),
    EventType("record.imported", 1, RecordImportedV1, partitions=6),
)


class UnknownEventType(LookupError):
    """An event type or version that is not in the registry."""


def latest(topic: str) -> EventType:
    """The newest version of an event type."""
    versions = [e for e in REGISTRY if e.topic == topic]
    if not versions:
        raise UnknownEventType(f"unknown event type {topic!r}")
    return max(versions, key=lambda e: e.version)


def by_dataschema(dataschema: str) -> EventType:
    """The registry entry named by a `ce_dataschema` header (`<type>/v<N>`)."""
    for entry in REGISTRY:
        if entry.dataschema == dataschema:
            return entry
    raise UnknownEventType(f"unknown dataschema {dataschema!r}")


def for_model(model: type[Payload]) -> EventType:
    """The registry entry whose payload model is `model`."""
    for entry in REGISTRY:
        if entry.model is model:
            return entry
    raise UnknownEventType(f"{model.__name__} is not a registered payload")


def topics() -> list[str]:
    """Every event topic (without dead-letter topics), once each."""
    return sorted({e.topic for e in REGISTRY})


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of a topic."""
    return topic + DLQ_SUFFIX
