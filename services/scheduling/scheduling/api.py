"""HTTP API of the scheduling service, for the gateway (which scopes every call to the
patient of the caller's token; this service is not reachable from outside).

Routes only translate: a request into a use case of `service.py` and its answer (or
`SchedulingError`) into a response. Patient commands carry an `Idempotency-Key`, handled
by the kit (`servicekit.idempotency`): a retry answers the original status and body.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.intake import IntakeAnswer
from scheduling import service, store
from scheduling.questionnaires import QuestionnaireSource
from scheduling.service import Context, SchedulingError
from servicekit import problems
from servicekit.app import Service
from servicekit.http import PatientId, ReadSession, ResourceId
from servicekit.idempotency import IdempotencyKey, idempotent

router = APIRouter(tags=["scheduling"])
SlotId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
Code = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class SlotOut(BaseModel):
    """A free slot."""

    id: str
    schedule: str
    practitioner: str | None
    location: str | None
    service_type: str | None
    service_type_display: str | None
    visit_type: str | None
    visit_type_display: str | None
    start: datetime
    end: datetime


class SlotPage(BaseModel):
    """One page of free slots, earliest first; `next_cursor` fetches the next page."""

    items: list[SlotOut]
    next_cursor: str | None


class AppointmentOut(BaseModel):
    """An appointment as the patient sees it."""

    id: str
    status: str
    start: datetime | None
    end: datetime | None
    slot: str | None
    practitioner: str | None
    practitioner_name: str | None
    location: str | None
    location_name: str | None
    visit_type: str | None
    visit_type_display: str | None
    status_reason: str | None
    pending_slot: str | None = Field(description="The time a requested move goes to")
    intake: str = Field(description="missing, draft or submitted")
    intake_due: bool = Field(description="The visit is near and its intake is missing")


def _context(request: Request) -> Context:
    return Context.of(request.app.state.service)


def _service(request: Request) -> Service:
    running: Service = request.app.state.service
    return running


def _cursor(slot: store.Slot) -> str:
    raw = f"{slot.start.isoformat()}|{slot.slot_fhir_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _after(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, slot_id = raw.partition("|")
        moment = datetime.fromisoformat(at)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise HTTPException(422, "`cursor` is not a cursor this service gave out.") from exc
    if moment.tzinfo is None or not slot_id:
        raise HTTPException(422, "`cursor` is not a cursor this service gave out.")
    return moment, slot_id


@router.get("/slots", response_model=SlotPage)
async def list_free_slots(
    request: Request,
    session: ReadSession,
    start: Annotated[AwareDatetime | None, Query(description="Default: now")] = None,
    end: Annotated[AwareDatetime | None, Query(description="Default: start + 14 days")] = None,
    practitioner: Code = None,
    location: Code = None,
    service_type: Code = None,
    visit_type: Code = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=300)] = None,
) -> SlotPage:
    """Free slots starting in [start, end), earliest first, filtered and paged."""
    since = start or datetime.now(UTC)
    try:
        until = end or since + timedelta(days=14)
    except OverflowError as exc:  # start near year 9999: a clear 422, not a 500
        raise HTTPException(422, "`start` is out of range.") from exc
    if until <= since:
        raise HTTPException(422, "`end` must be after `start`.")
    query = store.SlotQuery(
        start=since,
        end=until,
        practitioner=practitioner,
        location=location,
        service_type=service_type,
        visit_type=visit_type,
        after=_after(cursor),
        limit=limit + 1,
    )
    rows = await store.free_slots(session, query)
    page, more = rows[:limit], len(rows) > limit
    return SlotPage(
        items=[
            SlotOut(
                id=s.slot_fhir_id,
                schedule=s.schedule_fhir_id,
                practitioner=s.practitioner_fhir_id,
                location=s.location_fhir_id,
                service_type=s.service_type,
                service_type_display=s.service_type_display,
                visit_type=s.visit_type,
                visit_type_display=s.visit_type_display,
                start=s.start,
                end=s.end,
            )
            for s in page
        ],
        next_cursor=_cursor(page[-1]) if more and page else None,
    )


def _appointment(
    row: store.Appointment, intake: store.Intake | None, reminder_hours: float
) -> AppointmentOut:
    state = intake.status if intake is not None else "missing"
    due = (
        state != "submitted"
        and row.status in ("pending", "booked")
        and row.start is not None
        and datetime.now(UTC) < row.start <= datetime.now(UTC) + timedelta(hours=reminder_hours)
    )
    return AppointmentOut(
        id=row.id,
        status=row.status,
        start=row.start if row.start else None,
        end=row.end if row.end else None,
        slot=row.slot_fhir_id,
        practitioner=row.practitioner_fhir_id,
        practitioner_name=row.practitioner_name,
        location=row.location_fhir_id,
        location_name=row.location_name,
        visit_type=row.visit_type,
        visit_type_display=row.visit_type_display,
        status_reason=row.status_reason,
        pending_slot=row.pending_slot_fhir_id,
        intake=state,
        intake_due=due,
    )


async def _out(ctx: Context, session: AsyncSession, row: store.Appointment) -> AppointmentOut:
    intake = await store.get_intake(session, row.id)
    return _appointment(row, intake, ctx.settings.intake_reminder_hours)


def _error(exc: SchedulingError) -> JSONResponse:
    extra: dict[str, Any] = {}
    if exc.rule:
        extra["rule"] = exc.rule
    if exc.items:
        extra["items"] = [{"link_id": p.link_id, "problem": p.problem} for p in exc.items]
    title = "Invalid answers" if exc.items else problems.title_of(exc.status)
    return problems.problem(exc.status, title, exc.detail, **extra)


async def _answer(call: Awaitable[JSONResponse]) -> JSONResponse:
    try:
        return await call
    except SchedulingError as exc:
        return _error(exc)


@router.get("/patients/{patient_id}/appointments", response_model=list[AppointmentOut])
async def list_appointments(
    patient_id: PatientId, request: Request, session: ReadSession
) -> list[AppointmentOut]:
    """The patient's appointments, soonest first."""
    rows = await store.appointments_of(session, patient_id)
    intakes = await store.intakes_of(session, [r.id for r in rows])
    hours = _context(request).settings.intake_reminder_hours
    return [_appointment(r, intakes.get(r.id), hours) for r in rows]


@router.get(
    "/patients/{patient_id}/appointments/{appointment_id}",
    response_model=AppointmentOut,
    responses=problems.documented(404),
)
async def get_appointment(
    patient_id: PatientId, appointment_id: ResourceId, request: Request, session: ReadSession
) -> AppointmentOut:
    """One appointment of the patient (404 if it is not theirs)."""
    row = await store.get_appointment(session, appointment_id)
    if row is None or row.patient_id != patient_id:
        raise HTTPException(404, "No such appointment for this patient.")
    return await _out(_context(request), session, row)


class BookIn(BaseModel):
    """A booking request from the gateway (the patient's EHR id comes from their link)."""

    slot_id: SlotId
    patient_fhir_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    reason: str | None = Field(default=None, max_length=500)


class CancelIn(BaseModel):
    """Why the patient cancels (FHIR appointment-cancellation-reason code, optional)."""

    reason_code: str | None = Field(default=None, max_length=32, pattern=r"^[a-z-]+$")


class RescheduleIn(BaseModel):
    """The free slot to move the appointment to."""

    slot_id: SlotId


class IntakeIn(BaseModel):
    """The patient's answers to the intake questionnaire."""

    answers: list[IntakeAnswer] = Field(max_length=200)


class IntakeOut(BaseModel):
    """The intake of an appointment: the questionnaire to fill in and the answers so far."""

    appointment_id: str
    questionnaire: str = Field(description="Canonical URL|version")
    status: str = Field(description="missing, draft or submitted")
    answers: list[IntakeAnswer]
    submitted_at: datetime | None
    revision: int = Field(description="0 until submitted, 1 submitted, 2+ amended")


class IntakeFormOut(IntakeOut):
    """The intake with the EHR's Questionnaire resource, to render the form."""

    form: dict[str, Any]


def _intake(view: service.IntakeView) -> dict[str, Any]:
    body = IntakeOut(
        appointment_id=view.appointment_id,
        questionnaire=view.questionnaire,
        status=view.status,
        answers=[IntakeAnswer.model_validate(a) for a in view.answers],
        submitted_at=view.submitted_at,
        revision=view.revision,
    ).model_dump(mode="json")
    # Each answer with only its one value, as the patient gave it.
    body["answers"] = [
        IntakeAnswer.model_validate(a).model_dump(mode="json", exclude_none=True)
        for a in view.answers
    ]
    return body


def _scope(patient_id: str, command: str) -> str:
    return f"scheduling:{patient_id}:{command}"


@router.post(
    "/patients/{patient_id}/appointments",
    status_code=201,
    response_model=AppointmentOut,
    responses=problems.documented(404, 409, 422, 503),
)
async def book_appointment(
    patient_id: PatientId, body: BookIn, request: Request, key: IdempotencyKey = None
) -> JSONResponse:
    """Book a free slot: 201 pending until the EHR confirms; 409 when the slot is taken or
    a clinic rule refuses (the answer says which and what to do)."""
    ctx = _context(request)
    wanted = service.BookRequest(patient_id, body.patient_fhir_id, body.slot_id, body.reason)

    async def action(session: AsyncSession) -> AppointmentOut:
        return await _out(ctx, session, await service.book(ctx, session, wanted))

    return await _answer(
        idempotent(request, _scope(patient_id, "book"), key, body, action, status=201)
    )


@router.post(
    "/patients/{patient_id}/appointments/{appointment_id}/cancel",
    response_model=AppointmentOut,
    responses=problems.documented(404, 409, 422, 503),
)
async def cancel_appointment(
    patient_id: PatientId,
    appointment_id: ResourceId,
    body: CancelIn,
    request: Request,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """Cancel the patient's appointment; the EHR is updated by the ehr-connector."""
    ctx = _context(request)

    async def action(session: AsyncSession) -> AppointmentOut:
        row = await service.cancel(ctx, session, patient_id, appointment_id, body.reason_code)
        return await _out(ctx, session, row)

    scope = _scope(patient_id, f"cancel:{appointment_id}")
    return await _answer(idempotent(request, scope, key, body, action))


@router.post(
    "/patients/{patient_id}/appointments/{appointment_id}/reschedule",
    status_code=202,
    response_model=AppointmentOut,
    responses=problems.documented(404, 409, 422, 503),
)
async def reschedule_appointment(
    patient_id: PatientId,
    appointment_id: ResourceId,
    body: RescheduleIn,
    request: Request,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """Move the appointment to another free slot: 202 with `pending_slot` set until the
    EHR has moved it (or refused, then the appointment keeps its time)."""
    ctx = _context(request)

    async def action(session: AsyncSession) -> AppointmentOut:
        row = await service.reschedule(ctx, session, patient_id, appointment_id, body.slot_id)
        return await _out(ctx, session, row)

    scope = _scope(patient_id, f"reschedule:{appointment_id}")
    return await _answer(idempotent(request, scope, key, body, action, status=202))


async def _questionnaire(
    request: Request, patient_id: str, appointment_id: str
) -> tuple[str, dict[str, Any]]:
    ctx, running = _context(request), _service(request)
    async with running.db.sessions() as session:
        canonical = await service.questionnaire_of(ctx, session, patient_id, appointment_id)
    source: QuestionnaireSource = running.state["questionnaires"]
    return canonical, await source.get(canonical)


@router.get(
    "/patients/{patient_id}/appointments/{appointment_id}/intake",
    response_model=IntakeFormOut,
    responses=problems.documented(404, 503),
)
async def get_intake(
    patient_id: PatientId, appointment_id: ResourceId, request: Request
) -> JSONResponse:
    """The intake form (the EHR's Questionnaire) and the draft or submitted answers."""
    try:
        canonical, form = await _questionnaire(request, patient_id, appointment_id)
        async with _service(request).db.sessions() as session:
            view = await service.intake_of(_context(request), session, patient_id, appointment_id)
    except SchedulingError as exc:
        return _error(exc)
    return JSONResponse({**_intake(view), "questionnaire": canonical, "form": form})


@router.put(
    "/patients/{patient_id}/appointments/{appointment_id}/intake/draft",
    response_model=IntakeOut,
    responses=problems.documented(404, 409, 422, 503),
)
async def save_intake_draft(
    patient_id: PatientId, appointment_id: ResourceId, body: IntakeIn, request: Request
) -> JSONResponse:
    """Save the answers so far, to resume later (required ones may still be missing)."""
    try:
        questionnaire = await _questionnaire(request, patient_id, appointment_id)
        async with _service(request).db.transaction() as session:
            view = await service.save_draft(
                session, patient_id, appointment_id, questionnaire, body.answers
            )
    except SchedulingError as exc:
        return _error(exc)
    return JSONResponse(_intake(view))


@router.post(
    "/patients/{patient_id}/appointments/{appointment_id}/intake",
    status_code=202,
    response_model=IntakeOut,
    responses=problems.documented(404, 409, 422, 503),
)
async def submit_intake(
    patient_id: PatientId,
    appointment_id: ResourceId,
    body: IntakeIn,
    request: Request,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """Send the intake answers to the EHR: validated against the visit type's Questionnaire
    (422 names the item), accepted once per appointment (later: 409)."""
    ctx = _context(request)
    try:
        questionnaire = await _questionnaire(request, patient_id, appointment_id)
    except SchedulingError as exc:
        return _error(exc)

    async def action(session: AsyncSession) -> dict[str, Any]:
        view = await service.submit_intake(
            ctx, session, patient_id, appointment_id, questionnaire, body.answers
        )
        return _intake(view)

    scope = _scope(patient_id, f"intake:{appointment_id}")
    return await _answer(idempotent(request, scope, key, body, action, status=202))


@router.post(
    "/patients/{patient_id}/appointments/{appointment_id}/intake/amend",
    status_code=202,
    response_model=IntakeOut,
    responses=problems.documented(404, 409, 422, 503),
)
async def amend_intake(
    patient_id: PatientId,
    appointment_id: ResourceId,
    body: IntakeIn,
    request: Request,
    key: IdempotencyKey = None,
) -> JSONResponse:
    """Replace the submitted answers (validated the same way); the EHR's
    QuestionnaireResponse is updated, not filed again."""
    ctx = _context(request)
    try:
        questionnaire = await _questionnaire(request, patient_id, appointment_id)
    except SchedulingError as exc:
        return _error(exc)

    async def action(session: AsyncSession) -> dict[str, Any]:
        view = await service.amend_intake(
            ctx, session, patient_id, appointment_id, questionnaire, body.answers
        )
        return _intake(view)

    scope = _scope(patient_id, f"intake-amend:{appointment_id}")
    return await _answer(idempotent(request, scope, key, body, action, status=202))
