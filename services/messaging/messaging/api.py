"""HTTP API of the messaging service, for the gateway (patient-scoped) and care-team tools.

Only translation lives here: requests into `messaging.service` calls, their results and
errors into responses. A client may send an `Idempotency-Key` header (the kit's
`servicekit.idempotency`): a retry with the same key gets the first attempt's answer again
(201, `Idempotent-Replayed: true`) instead of sending twice; the same key with another
message is 422. The emergency check (an HTTP call to triage) runs once, before the
transaction, and not again for a retry.

Limits: a patient sends at most `RATE_LIMIT_MESSAGES` per `RATE_LIMIT_WINDOW_S` (429 with
Retry-After), bodies up to `BODY_MAX_CHARS`, attachments (PNG, JPEG, GIF, PDF) up to
`ATTACHMENT_MAX_BYTES` each (413 when larger, 415 for another type).
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from messaging import domain
from messaging.service import (
    MessageView,
    Messaging,
    NewAttachment,
    NotFound,
    RateLimited,
    Sent,
    ThreadView,
    TooLong,
    UnknownTopic,
)
from servicekit.consumer import running_deps
from servicekit.http import PatientId
from servicekit.idempotency import IdempotencyKey, idempotent, replay
from servicekit.ops_api import encryption_routes
from servicekit.problems import documented

router = APIRouter(tags=["messaging"])
# Operators' routes: the ops token, not a service token (`ServiceDefinition.public_api`).
ops_router = APIRouter(tags=["ops"])
ThreadId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
Subject = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=domain.SUBJECT_MAX)
]
Body = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=domain.BODY_MAX)
]
TopicCode = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,32}$")]


class AttachmentIn(BaseModel):
    """A file sent with a message: an image or a PDF, base64."""

    content_type: Annotated[str, StringConstraints(max_length=100)]
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    data_base64: str = Field(description="The file's bytes, base64 (standard alphabet)")


class AttachmentOut(BaseModel):
    """An attachment's description; its bytes are at `/attachments/{id}`."""

    id: str
    content_type: str
    title: str
    size: int


class ThreadOut(BaseModel):
    """A thread in the patient's inbox."""

    id: str
    subject: str | None
    pool: str
    sent_to: str = Field(description='Who it went to, for the patient ("prescriptions team")')
    topic: str | None
    origin: str = Field(description="patient, care-team, triage or imported")
    unread: int = Field(description="The care team's messages the patient has not read")
    updated_at: datetime


class MessageOut(BaseModel):
    """One message."""

    id: str
    direction: str = Field(description="outbound: from the patient; inbound: from the care team")
    sender: str | None
    body: str
    sent_at: datetime
    read: bool
    read_by_care_team_at: datetime | None = Field(
        description="When the care team read the patient's message (as far as the EHR says)"
    )
    ehr_status: str | None
    emergency: bool
    attachments: list[AttachmentOut]


class EmergencyOut(BaseModel):
    """The emergency check's verdict on the message just sent."""

    checked: bool = Field(description="False: triage could not check it; a clinician reviews")
    emergency: bool
    advice: str | None = Field(description="Shown to the patient at once when set")
    flags: list[str]


class SentOut(BaseModel):
    """The thread and the message the patient sent in it."""

    thread: ThreadOut
    message: MessageOut
    emergency_check: EmergencyOut


class ReadOut(BaseModel):
    """How many of the care team's messages were newly marked read."""

    thread_id: str
    marked: int


class InboxOut(BaseModel):
    """The patient's threads and the total of unread messages (for the summary)."""

    unread: int
    threads: list[ThreadOut]


class TopicOut(BaseModel):
    """A topic a patient can choose when starting a conversation."""

    code: str
    label: str
    sent_to: str


class PoolItemOut(BaseModel):
    """A work item in a care-team pool."""

    id: str
    patient_id: str
    kind: str
    urgency: str
    summary: str
    thread_id: str | None
    emergency: bool
    needs_review: bool
    created_at: datetime


class NewThreadIn(BaseModel):
    """A new thread the patient starts: a topic, a subject and a first message."""

    subject: Subject
    body: Body
    topic: TopicCode | None = None
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=10)


class ReplyIn(BaseModel):
    """The patient's message in an existing thread."""

    body: Body
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=10)


def _messaging(request: Request) -> Messaging:
    return running_deps(request.app.state.service.deps, Messaging)


def _thread_out(thread: ThreadView) -> ThreadOut:
    return ThreadOut(
        id=thread.id,
        subject=thread.subject,
        pool=thread.pool,
        sent_to=thread.sent_to,
        topic=thread.topic,
        origin=thread.origin,
        unread=thread.unread,
        updated_at=thread.updated_at,
    )


def _message_out(message: MessageView) -> MessageOut:
    return MessageOut(
        id=message.id,
        direction=message.direction,
        sender=message.sender,
        body=message.body,
        sent_at=message.sent_at,
        read=message.read,
        read_by_care_team_at=message.care_team_read_at,
        ehr_status=message.ehr_status,
        emergency=message.emergency,
        attachments=[
            AttachmentOut(id=a.id, content_type=a.content_type, title=a.title, size=a.size)
            for a in message.attachments
        ],
    )


def _sent_out(sent: Sent) -> SentOut:
    verdict = sent.verdict
    advice = None
    if verdict.emergency:
        advice = verdict.advice or domain.EMERGENCY_ADVICE
    elif not verdict.checked:
        advice = domain.UNCHECKED_NOTE
    return SentOut(
        thread=_thread_out(sent.thread),
        message=_message_out(sent.message),
        emergency_check=EmergencyOut(
            checked=verdict.checked,
            emergency=verdict.emergency,
            advice=advice,
            flags=list(verdict.flags),
        ),
    )


def _attachments(items: list[AttachmentIn]) -> list[NewAttachment]:
    return [NewAttachment(a.content_type, a.title, a.data_base64) for a in items]


def _refused(exc: Exception) -> HTTPException:
    """Map a send's refusal to its HTTP status."""
    if isinstance(exc, NotFound):
        return HTTPException(404, "No such thread for this patient.")
    if isinstance(exc, UnknownTopic):
        return HTTPException(422, f"Unknown topic {exc.args[0]!r}; see GET /topics.")
    if isinstance(exc, RateLimited):
        detail = f"Too many messages; try again in {exc.retry_after} seconds."
        if exc.verdict.emergency:
            # Never leave an emergency unanswered, even when the message is refused.
            detail += " " + (exc.verdict.advice or domain.EMERGENCY_ADVICE)
        return HTTPException(429, detail, {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, TooLong):
        return HTTPException(413, str(exc))
    if isinstance(exc, domain.AttachmentRefused):
        text = str(exc)
        if "larger than" in text:
            return HTTPException(413, text)
        if "type" in text:
            return HTTPException(415, text)
        return HTTPException(422, text)
    raise exc


_REFUSALS = (
    NotFound,
    UnknownTopic,
    RateLimited,
    TooLong,
    domain.AttachmentRefused,
)


@router.get("/topics", response_model=list[TopicOut])
async def list_topics(request: Request) -> list[TopicOut]:
    """The topics a patient chooses from, and who each goes to."""
    messaging = _messaging(request)
    return [
        TopicOut(code=t.code, label=t.label, sent_to=messaging.rules.route(t.pool).display)
        for t in messaging.topics()
    ]


@router.get("/patients/{patient_id}/threads", response_model=list[ThreadOut])
async def list_threads(patient_id: PatientId, request: Request) -> list[ThreadOut]:
    """The patient's threads, most recently active first, with unread counts."""
    return [_thread_out(t) for t in await _messaging(request).threads(patient_id)]


@router.get("/patients/{patient_id}/inbox", response_model=InboxOut)
async def inbox(patient_id: PatientId, request: Request) -> InboxOut:
    """The patient's threads and how many messages are unread in all of them."""
    threads = await _messaging(request).threads(patient_id)
    return InboxOut(
        unread=sum(t.unread for t in threads), threads=[_thread_out(t) for t in threads]
    )


@router.get(
    "/patients/{patient_id}/threads/{thread_id}/messages",
    response_model=list[MessageOut],
    responses=documented(404),
)
async def list_messages(
    patient_id: PatientId, thread_id: ThreadId, request: Request
) -> list[MessageOut]:
    """A thread's messages, oldest first (404 if the thread is not the patient's)."""
    try:
        messages = await _messaging(request).messages(patient_id, thread_id)
    except NotFound as exc:
        raise _refused(exc) from exc
    return [_message_out(m) for m in messages]


@router.get("/patients/{patient_id}/attachments/{attachment_id}", responses=documented(404))
async def get_attachment(
    patient_id: PatientId, attachment_id: ThreadId, request: Request
) -> Response:
    """An attachment's bytes (404 if it is not the patient's)."""
    try:
        content_type, _title, data = await _messaging(request).attachment(patient_id, attachment_id)
    except NotFound as exc:
        raise HTTPException(404, "No such attachment for this patient.") from exc
    # The title is the patient's text: not put in a header; the client names the file.
    return Response(
        content=data,
        media_type=content_type,
        headers={"Content-Disposition": "attachment", "X-Content-Type-Options": "nosniff"},
    )


def _send_scope(patient_id: str) -> str:
    # One scope for new threads and replies: a key reused across the two is a reused key.
    return f"{patient_id}:send-message"


@router.post(
    "/patients/{patient_id}/threads",
    response_model=SentOut,
    status_code=201,
    responses=documented(413, 415, 422, 429),
)
async def start_thread(
    patient_id: PatientId,
    body: NewThreadIn,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Start a thread with the care team; the routing rules choose its pool."""
    request_body = {"new_thread": body.model_dump(mode="json")}
    scope = _send_scope(patient_id)
    earlier = await replay(request, scope, idempotency_key, request_body)
    if earlier is not None:
        return earlier
    messaging = _messaging(request)
    try:
        prepared = await messaging.prepare_thread(
            subject=body.subject,
            body=body.body,
            topic=body.topic,
            attachments=_attachments(body.attachments),
        )
        return await idempotent(
            request,
            scope,
            idempotency_key,
            request_body,
            lambda session: _sending(messaging.start_thread(session, patient_id, prepared)),
            status=201,
        )
    except _REFUSALS as exc:
        raise _refused(exc) from exc


@router.post(
    "/patients/{patient_id}/threads/{thread_id}/messages",
    response_model=SentOut,
    status_code=201,
    responses=documented(404, 413, 415, 422, 429),
)
async def reply(
    patient_id: PatientId,
    thread_id: ThreadId,
    body: ReplyIn,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Send a message in one of the patient's threads, in reply to the care team's latest."""
    request_body = {"thread_id": thread_id, "reply": body.model_dump(mode="json")}
    scope = _send_scope(patient_id)
    earlier = await replay(request, scope, idempotency_key, request_body)
    if earlier is not None:
        return earlier
    messaging = _messaging(request)
    try:
        prepared = await messaging.prepare_reply(
            patient_id, thread_id, body=body.body, attachments=_attachments(body.attachments)
        )
        return await idempotent(
            request,
            scope,
            idempotency_key,
            request_body,
            lambda session: _sending(messaging.reply(session, patient_id, thread_id, prepared)),
            status=201,
        )
    except _REFUSALS as exc:
        raise _refused(exc) from exc


async def _sending(sent: Awaitable[Sent]) -> SentOut:
    return _sent_out(await sent)


@router.post(
    "/patients/{patient_id}/threads/{thread_id}/read",
    response_model=ReadOut,
    responses=documented(404),
)
async def mark_read(patient_id: PatientId, thread_id: ThreadId, request: Request) -> ReadOut:
    """Mark the care team's messages in one of the patient's threads read."""
    try:
        marked = await _messaging(request).mark_read(patient_id, thread_id)
    except NotFound as exc:
        raise _refused(exc) from exc
    return ReadOut(thread_id=thread_id, marked=marked)


@router.get("/pools/{pool}/items", response_model=list[PoolItemOut])
async def list_pool_items(
    pool: Annotated[str, Path(pattern=r"^[a-z0-9-]{1,64}$")], request: Request
) -> list[PoolItemOut]:
    """A care-team pool's work items, oldest first."""
    return [
        PoolItemOut(
            id=i.id,
            patient_id=i.patient_id,
            kind=i.kind,
            urgency=i.urgency,
            summary=i.summary,
            thread_id=i.thread_id,
            emergency=i.emergency,
            needs_review=i.needs_review,
            created_at=i.created_at,
        )
        for i in await _messaging(request).pool_items(pool)
    ]


ops_router.include_router(encryption_routes(_messaging))
