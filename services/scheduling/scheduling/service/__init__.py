"""The patient's own scheduling actions: book, cancel, reschedule, fill in intake.

Each use case runs inside the one transaction the caller opens (with the idempotency
record of the request, see `servicekit.idempotency`): it changes scheduling's tables and
adds its event to the outbox, and either all of it commits or none. The ehr-connector
writes the change to the EHR and answers with `appointment.updated` (`handlers.py`).

A slot is claimed by inserting a `SlotHold`; the database lets one active hold per slot
exist, so of many concurrent requests for a slot exactly one wins and the others are
refused (409) before anything reaches the EHR.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.appointment import (
    AppointmentBookedV1,
    AppointmentCancelledV1,
    AppointmentRescheduledV1,
    AppointmentStatus,
)
from contracts.intake import IntakeAnswer, IntakeRemindedV1, IntakeSubmittedV1
from scheduling import store
from scheduling.domain import (
    OPEN_STATUSES,
    AnswerProblem,
    RuleBroken,
    cancellable,
    check_booking,
    check_change,
    validate_answers,
    with_offered_codings,
)
from scheduling.settings import Settings
from servicekit.app import Service
from servicekit.outbox import Outbox


class SchedulingError(Exception):
    """The action cannot be done; `status` is the HTTP status to answer with."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        rule: str | None = None,
        items: list[AnswerProblem] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.rule = rule
        self.items = items or []


def _refuse(broken: RuleBroken) -> SchedulingError:
    return SchedulingError(broken.status, broken.detail, rule=broken.rule)


@dataclass(frozen=True)
class Context:
    """What the use cases need from the running service."""

    settings: Settings
    outbox: Outbox

    @classmethod
    def of(cls, service: Service) -> Context:
        """The context of a running scheduling service."""
        settings = service.settings
        assert isinstance(settings, Settings)
        return cls(settings=settings, outbox=service.outbox)


@dataclass(frozen=True)
class BookRequest:
    """What the patient asked for."""

    patient_id: str
    patient_fhir_id: str
    slot_id: str
    reason: str | None


async def _owned(session: AsyncSession, patient_id: str, appointment_id: str) -> store.Appointment:
    appointment = await store.get_appointment(session, appointment_id)
    if appointment is None or appointment.patient_id != patient_id:
        raise SchedulingError(404, "No such appointment for this patient.")
    return appointment


async def _free_slot(session: AsyncSession, slot_id: str) -> store.Slot:
    slot = await store.get_slot(session, slot_id)
    if slot is None:
        raise SchedulingError(404, "No such slot.")
    if slot.status != "free":
        raise SchedulingError(409, "This time is no longer free; please choose another.")
    return slot


async def _hold(
    session: AsyncSession, slot_id: str, appointment_id: str, purpose: str, now: datetime
) -> None:
    try:
        await store.hold_slot(
            session, f"hold-{uuid.uuid4().hex[:16]}", slot_id, appointment_id, purpose, now
        )
    except IntegrityError as exc:
        raise SchedulingError(
            409, "This time was just taken by someone else; please choose another."
        ) from exc


async def book(ctx: Context, session: AsyncSession, request: BookRequest) -> store.Appointment:
    """Hold the slot and ask the EHR to book it; the appointment is pending until then."""
    now = datetime.now(UTC)
    slot = await _free_slot(session, request.slot_id)
    await store.lock_patient(session, request.patient_id)
    open_bookings = await store.count_open(session, request.patient_id, OPEN_STATUSES, now)
    broken = check_booking(ctx.settings.clinic_rules(), slot.start, now, open_bookings)
    if broken is not None:
        raise _refuse(broken)
    appointment = store.Appointment(
        id=f"apt-{uuid.uuid4().hex[:16]}",
        patient_id=request.patient_id,
        status=AppointmentStatus.PENDING.value,
        start=slot.start,
        end=slot.end,
        slot_fhir_id=slot.slot_fhir_id,
        practitioner_fhir_id=slot.practitioner_fhir_id,
        location_fhir_id=slot.location_fhir_id,
        visit_type=slot.visit_type,
        visit_type_display=slot.visit_type_display,
        updated_at=now,
    )
    session.add(appointment)
    await _hold(session, slot.slot_fhir_id, appointment.id, "booking", now)
    ctx.outbox.add(
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
    return appointment


async def cancel(
    ctx: Context,
    session: AsyncSession,
    patient_id: str,
    appointment_id: str,
    reason_code: str | None,
) -> store.Appointment:
    """Cancel the patient's appointment (again: no change, no second event)."""
    now = datetime.now(UTC)
    await store.lock_patient(session, patient_id)
    appointment = await _owned(session, patient_id, appointment_id)
    if appointment.status == AppointmentStatus.CANCELLED.value:
        return appointment
    if not cancellable(AppointmentStatus(appointment.status)):
        raise SchedulingError(
            409, f"An appointment that is {appointment.status} cannot be cancelled."
        )
    start = appointment.start if appointment.start else None
    broken = check_change(ctx.settings.clinic_rules(), start, now, "cancelled")
    if broken is not None:
        raise _refuse(broken)
    appointment.status = AppointmentStatus.CANCELLED.value
    appointment.pending_slot_fhir_id = None
    appointment.updated_at = now
    # The slot is the clinic's again; the connector frees it in the EHR.
    await store.release_holds(session, appointment.id, now)
    ctx.outbox.add(
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


async def reschedule(
    ctx: Context, session: AsyncSession, patient_id: str, appointment_id: str, slot_id: str
) -> store.Appointment:
    """Hold the new slot and ask the EHR to move the appointment there; until it answers
    the appointment keeps its time (`pending_slot` names the requested one)."""
    now = datetime.now(UTC)
    await store.lock_patient(session, patient_id)
    appointment = await _owned(session, patient_id, appointment_id)
    if appointment.pending_slot_fhir_id == slot_id:
        return appointment
    if appointment.status != AppointmentStatus.BOOKED.value:
        detail = (
            "The clinic has not confirmed this booking yet; please try again in a moment."
            if appointment.status == AppointmentStatus.PENDING.value
            else f"An appointment that is {appointment.status} cannot be moved."
        )
        raise SchedulingError(409, detail)
    if appointment.pending_slot_fhir_id is not None:
        raise SchedulingError(
            409, "A move of this appointment is already under way; wait for its answer."
        )
    if appointment.slot_fhir_id is None or appointment.appointment_fhir_id is None:
        raise SchedulingError(
            409,
            "This appointment was made by the clinic without a bookable time; "
            f"please call {ctx.settings.clinic_phone} to change it.",
        )
    if appointment.slot_fhir_id == slot_id:
        raise SchedulingError(409, "The appointment already is at this time.")
    start = appointment.start if appointment.start else None
    broken = check_change(ctx.settings.clinic_rules(), start, now, "moved")
    if broken is not None:
        raise _refuse(broken)
    slot = await _free_slot(session, slot_id)
    # A move does not add an open booking: the count limit does not apply.
    broken = check_booking(ctx.settings.clinic_rules(), slot.start, now, 0)
    if broken is not None:
        raise _refuse(broken)
    await _hold(session, slot.slot_fhir_id, appointment.id, "reschedule", now)
    appointment.pending_slot_fhir_id = slot.slot_fhir_id
    appointment.status_reason = None
    appointment.updated_at = now
    ctx.outbox.add(
        session,
        AppointmentRescheduledV1(
            appointment_id=appointment.id,
            patient_id=patient_id,
            appointment_fhir_id=appointment.appointment_fhir_id,
            based_on_version=appointment.ehr_version,
            old_slot_fhir_id=appointment.slot_fhir_id,
            new_slot_fhir_id=slot.slot_fhir_id,
            start=slot.start,
            end=slot.end,
            rescheduled_at=now,
        ),
        subject=patient_id,
    )
    return appointment


# -- intake ---------------------------------------------------------------------------------


_INTAKE_OPEN = frozenset({AppointmentStatus.PENDING.value, AppointmentStatus.BOOKED.value})


@dataclass(frozen=True)
class IntakeView:
    """The intake of one appointment as the patient sees it."""

    appointment_id: str
    questionnaire: str
    status: str
    answers: list[dict[str, Any]]
    submitted_at: datetime | None
    revision: int


def _view(appointment_id: str, questionnaire: str, row: store.Intake | None) -> IntakeView:
    if row is None:
        return IntakeView(appointment_id, questionnaire, "missing", [], None, 0)
    revision = row.revision if row.status == "submitted" else 0
    return IntakeView(
        appointment_id, row.questionnaire, row.status, row.answers, row.submitted_at, revision
    )


async def questionnaire_of(
    ctx: Context, session: AsyncSession, patient_id: str, appointment_id: str
) -> str:
    """The canonical URL|version of the intake Questionnaire of an appointment's visit type
    (the one already used, once intake was started)."""
    appointment = await _owned(session, patient_id, appointment_id)
    row = await store.get_intake(session, appointment_id)
    if row is not None:
        return row.questionnaire
    return ctx.settings.questionnaire_for(appointment.visit_type)


async def intake_of(
    ctx: Context, session: AsyncSession, patient_id: str, appointment_id: str
) -> IntakeView:
    """The draft or submitted answers (`missing` when none)."""
    canonical = await questionnaire_of(ctx, session, patient_id, appointment_id)
    return _view(appointment_id, canonical, await store.get_intake(session, appointment_id))


def _problem(problems: list[AnswerProblem]) -> SchedulingError:
    first = problems[0]
    return SchedulingError(
        422, f"Question '{first.link_id}' {first.problem}.", rule="intake-answers", items=problems
    )


async def _open_intake(
    session: AsyncSession, patient_id: str, appointment_id: str
) -> tuple[store.Appointment, store.Intake | None]:
    appointment = await _owned(session, patient_id, appointment_id)
    if appointment.status not in _INTAKE_OPEN:
        raise SchedulingError(
            409, f"Intake is closed for an appointment that is {appointment.status}."
        )
    row = await store.get_intake(session, appointment_id, for_update=True)
    if row is not None and row.status == "submitted":
        raise SchedulingError(
            409,
            "The intake for this appointment was already sent to the clinic; "
            "to change your answers, send them as an amendment.",
            rule="intake-submitted",
        )
    return appointment, row


def _stored(answers: list[IntakeAnswer]) -> list[dict[str, Any]]:
    return [a.model_dump(mode="json", exclude_none=True) for a in answers]


async def save_draft(
    session: AsyncSession,
    patient_id: str,
    appointment_id: str,
    questionnaire: tuple[str, dict[str, Any]],
    answers: list[IntakeAnswer],
) -> IntakeView:
    """Save answers given so far (checked, but required items may still be missing)."""
    now = datetime.now(UTC)
    canonical, resource = questionnaire
    _, row = await _open_intake(session, patient_id, appointment_id)
    problems = validate_answers(resource, answers, complete=False)
    if problems:
        raise _problem(problems)
    if row is None:
        row = store.Intake(
            appointment_id=appointment_id,
            patient_id=patient_id,
            intake_id=f"in-{uuid.uuid4().hex[:16]}",
            questionnaire=canonical,
            status="draft",
            answers=_stored(answers),
            updated_at=now,
        )
        session.add(row)
    else:
        row.answers = _stored(answers)
        row.updated_at = now
    await session.flush()
    return _view(appointment_id, canonical, row)


async def submit_intake(
    ctx: Context,
    session: AsyncSession,
    patient_id: str,
    appointment_id: str,
    questionnaire: tuple[str, dict[str, Any]],
    answers: list[IntakeAnswer],
) -> IntakeView:
    """Validate the answers against the Questionnaire and send them to the EHR, once."""
    now = datetime.now(UTC)
    canonical, resource = questionnaire
    appointment, row = await _open_intake(session, patient_id, appointment_id)
    problems = validate_answers(resource, answers, complete=True)
    if problems:
        raise _problem(problems)
    answers = with_offered_codings(resource, answers)
    if row is None:
        row = store.Intake(
            appointment_id=appointment_id,
            patient_id=patient_id,
            intake_id=f"in-{uuid.uuid4().hex[:16]}",
            questionnaire=canonical,
            status="submitted",
            answers=_stored(answers),
            revision=1,
            updated_at=now,
            submitted_at=now,
        )
        session.add(row)
    else:
        row.status, row.answers, row.revision = "submitted", _stored(answers), 1
        row.updated_at = row.submitted_at = now
    try:
        await session.flush()
    except IntegrityError as exc:
        # A concurrent first submission of this appointment's intake won.
        raise SchedulingError(409, "The intake for this appointment was already sent.") from exc
    ctx.outbox.add(
        session,
        IntakeSubmittedV1(
            intake_id=row.intake_id,
            appointment_id=appointment.id,
            appointment_fhir_id=appointment.appointment_fhir_id,
            patient_id=patient_id,
            questionnaire_canonical=canonical,
            answers=answers,
            submitted_at=now,
        ),
        subject=patient_id,
    )
    return _view(appointment_id, canonical, row)


async def amend_intake(
    ctx: Context,
    session: AsyncSession,
    patient_id: str,
    appointment_id: str,
    questionnaire: tuple[str, dict[str, Any]],
    answers: list[IntakeAnswer],
) -> IntakeView:
    """Replace submitted answers: validated like a submission, then the EHR's
    QuestionnaireResponse is updated (the same intake, the next revision)."""
    now = datetime.now(UTC)
    appointment = await _owned(session, patient_id, appointment_id)
    if appointment.status not in _INTAKE_OPEN:
        raise SchedulingError(
            409, f"Intake is closed for an appointment that is {appointment.status}."
        )
    row = await store.get_intake(session, appointment_id, for_update=True)
    if row is None or row.status != "submitted":
        raise SchedulingError(
            409,
            "No intake was sent for this appointment yet; submit it first.",
            rule="intake-not-submitted",
        )
    _, resource = questionnaire
    problems = validate_answers(resource, answers, complete=True)
    if problems:
        raise _problem(problems)
    answers = with_offered_codings(resource, answers)
    row.answers = _stored(answers)
    row.revision += 1
    row.updated_at = row.submitted_at = now
    ctx.outbox.add(
        session,
        IntakeSubmittedV1(
            intake_id=row.intake_id,
            appointment_id=appointment.id,
            appointment_fhir_id=appointment.appointment_fhir_id,
            patient_id=patient_id,
            questionnaire_canonical=row.questionnaire,
            answers=answers,
            submitted_at=now,
            revision=row.revision,
        ),
        subject=patient_id,
    )
    return _view(appointment_id, row.questionnaire, row)


async def remind_missing_intake(ctx: Context, session: AsyncSession, now: datetime) -> int:
    """Publish `intake.reminded` for visits starting within the reminder window whose
    intake is still missing; each appointment is reminded once. Returns how many."""
    until = now + timedelta(hours=ctx.settings.intake_reminder_hours)
    due = await store.due_for_intake_reminder(session, OPEN_STATUSES, now, until, limit=200)
    for appointment in due:
        assert appointment.start is not None
        appointment.intake_reminded_at = now
        ctx.outbox.add(
            session,
            IntakeRemindedV1(
                appointment_id=appointment.id,
                patient_id=appointment.patient_id,
                start=appointment.start,
                questionnaire_canonical=ctx.settings.questionnaire_for(appointment.visit_type),
                reminded_at=now,
            ),
            subject=appointment.patient_id,
        )
    return len(due)


def parse_questionnaire(text: str) -> dict[str, Any]:
    """A stored Questionnaire resource."""
    resource: dict[str, Any] = json.loads(text)
    return resource


# The EHR-driven use cases (the handlers' side), in their own module.
from scheduling.service.ehr_changes import (  # noqa: E402
    apply_ehr_appointment_change as apply_ehr_appointment_change,
)
from scheduling.service.ehr_changes import cache_slot as cache_slot  # noqa: E402
