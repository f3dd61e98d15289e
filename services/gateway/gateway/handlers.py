"""Event handlers: each change that concerns a patient becomes a notification for their
open sessions (stored, then the patient's streams are woken after commit by the running
service's hub, its `deps`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event as sa_event

from contracts.appointment import AppointmentUpdatedV1
from contracts.intake import IntakeRemindedV1
from contracts.lab import LabResultedV1
from contracts.medication import MedicationChangedV1
from contracts.message import MessageReceivedV1
from contracts.triage import TriageCompletedV1
from gateway import observability, store
from gateway.domain import Notification, NotificationKind, appointment_news
from gateway.hub import NotificationHub
from servicekit.consumer import Event, EventRouter, UnitOfWork, running_deps

router = EventRouter()


def _notify(uow: UnitOfWork, event: Event[Any], note: Notification) -> None:
    uow.session.add(
        store.PatientNotification(
            patient_id=event.patient_id,
            kind=note.kind.value,
            ref=note.ref,
            status=note.status,
            event_id=event.envelope.id,
            created_at=datetime.now(UTC),
            traceparent=observability.current_traceparent(),
            source_time=observability.ehr_write_time(event.data),
        )
    )
    patient = event.patient_id
    hub = running_deps(uow.deps, NotificationHub)
    sa_event.listen(
        uow.session.sync_session, "after_commit", lambda _s: hub.wake(patient), once=True
    )


@router.handles("lab.resulted", interactive=True)
async def notify_lab_result(uow: UnitOfWork, event: Event[LabResultedV1]) -> None:
    """Tell the patient a lab result is available."""
    _notify(uow, event, Notification(NotificationKind.LAB_RESULT, event.data.report_fhir_id))


@router.handles("medication.changed", interactive=True)
async def notify_medication_change(uow: UnitOfWork, event: Event[MedicationChangedV1]) -> None:
    """Tell the patient their medication list changed."""
    data = event.data
    _notify(uow, event, Notification(NotificationKind.MEDICATION, data.medication_request_fhir_id))


@router.handles("message.received", interactive=True)
async def notify_message(uow: UnitOfWork, event: Event[MessageReceivedV1]) -> None:
    """Tell the patient a clinician wrote to them."""
    _notify(uow, event, Notification(NotificationKind.MESSAGE, event.data.communication_fhir_id))


@router.handles("appointment.updated", interactive=True)
async def notify_appointment_change(uow: UnitOfWork, event: Event[AppointmentUpdatedV1]) -> None:
    """Tell the patient an appointment was confirmed, rejected, cancelled or moved."""
    data = event.data
    if not appointment_news(data.end, datetime.now(UTC)):
        return
    ref = data.appointment_id or data.appointment_fhir_id or "appointment"
    _notify(uow, event, Notification(NotificationKind.APPOINTMENT, ref, data.status.value))


@router.handles("triage.completed", interactive=True)
async def notify_triage_routed(uow: UnitOfWork, event: Event[TriageCompletedV1]) -> None:
    """Tell the patient their symptom check reached the care team."""
    data = event.data
    _notify(uow, event, Notification(NotificationKind.TRIAGE, data.session_id, data.urgency.value))


@router.handles("intake.reminded")
async def notify_intake_reminder(uow: UnitOfWork, event: Event[IntakeRemindedV1]) -> None:
    """Remind the patient to fill in the intake form of a visit that is near."""
    _notify(uow, event, Notification(NotificationKind.INTAKE_REMINDER, event.data.appointment_id))
