"""HTTP API of the messaging service, for the gateway (patient-scoped) and care-team tools.

Sending: a patient's new thread or reply is stored (direction `outbound`) and `message.sent`
is added to the outbox in the same transaction, so the connector files it in the EHR as a
Communication. A client may send an `Idempotency-Key` header: a retry with the same key
returns the message the first attempt stored (200) instead of sending it twice.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Request, Response
from pydantic import BaseModel, StringConstraints
from sqlalchemy.exc import IntegrityError

from contracts.message import MessageSentV1
from messaging import domain, store
from messaging.metrics import count_message_after_commit
from servicekit.app import Service
from servicekit.http import PatientId, ReadSession

router = APIRouter(tags=["messaging"])
ThreadId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=128, pattern=r"^[!-~]+$"),
]
Subject = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=domain.SUBJECT_MAX)
]
Body = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=domain.BODY_MAX)
]


class ThreadOut(BaseModel):
    """A thread in the patient's inbox."""

    id: str
    subject: str | None
    pool: str
    updated_at: datetime


class MessageOut(BaseModel):
    """One message."""

    id: str
    direction: str
    sender: str | None
    body: str
    sent_at: datetime
    read: bool


class PoolItemOut(BaseModel):
    """A work item in a care-team pool."""

    id: str
    patient_id: str
    kind: str
    urgency: str
    summary: str
    created_at: datetime


@router.get("/patients/{patient_id}/threads", response_model=list[ThreadOut])
async def list_threads(patient_id: PatientId, session: ReadSession) -> list[ThreadOut]:
    """The patient's threads, most recently active first."""
    return [
        ThreadOut(id=t.id, subject=t.subject, pool=t.pool, updated_at=t.updated_at)
        for t in await store.threads_of(session, patient_id)
    ]


@router.get("/patients/{patient_id}/threads/{thread_id}/messages", response_model=list[MessageOut])
async def list_messages(
    patient_id: PatientId, thread_id: ThreadId, session: ReadSession
) -> list[MessageOut]:
    """A thread's messages, oldest first (404 if the thread is not the patient's)."""
    thread = await store.get_thread(session, thread_id)
    if thread is None or thread.patient_id != patient_id:
        raise HTTPException(404, "No such thread for this patient.")
    return [_message_out(m) for m in await store.messages_in(session, thread_id)]


class NewThreadIn(BaseModel):
    """A new thread the patient starts: a subject and a first message."""

    subject: Subject
    body: Body


class ReplyIn(BaseModel):
    """The patient's message in an existing thread."""

    body: Body


class SentOut(BaseModel):
    """The thread and the message the patient sent in it."""

    thread: ThreadOut
    message: MessageOut


class ReadOut(BaseModel):
    """How many of the care team's messages were newly marked read."""

    thread_id: str
    marked: int


def _thread_out(thread: store.Thread) -> ThreadOut:
    return ThreadOut(
        id=thread.id, subject=thread.subject, pool=thread.pool, updated_at=thread.updated_at
    )


def _message_out(message: store.Message) -> MessageOut:
    return MessageOut(
        id=message.id,
        direction=message.direction,
        sender=message.sender_display,
        body=message.body,
        sent_at=message.sent_at,
        read=message.read_at is not None,
    )


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def _replay(
    service: Service,
    patient_id: str,
    key: str | None,
    *,
    body: str,
    thread_id: str | None = None,
    subject: str | None = None,
) -> SentOut | None:
    """What an earlier request with this idempotency key sent (None: no such request).
    The same key for a different message is a client error (409), not a replay."""
    if key is None:
        return None
    async with service.db.sessions() as session:
        message = await store.message_by_idempotency_key(session, patient_id, key)
        if message is None:
            return None
        thread = await store.get_thread(session, message.thread_id)
    if (
        thread is None
        or message.body != body
        or (thread_id is not None and thread.id != thread_id)
        or (subject is not None and thread.subject != subject)
    ):
        raise HTTPException(409, "This Idempotency-Key was already used for another message.")
    return SentOut(thread=_thread_out(thread), message=_message_out(message))


def _outbound(thread: store.Thread, body: str, key: str | None, now: datetime) -> store.Message:
    # The patient has read what they wrote themselves.
    return store.Message(
        id=_new_id("msg"),
        thread_id=thread.id,
        patient_id=thread.patient_id,
        direction="outbound",
        communication_fhir_id=None,
        sender_display=None,
        body=body,
        sent_at=now,
        read_at=now,
        idempotency_key=key,
    )


def _sent_event(
    thread: store.Thread, message: store.Message, subject: str, in_reply_to: str | None
) -> MessageSentV1:
    return MessageSentV1(
        message_id=message.id,
        thread_id=thread.id,
        patient_id=thread.patient_id,
        recipient_pool=thread.pool,
        in_reply_to_fhir_id=in_reply_to,
        thread_fhir_id=thread.thread_fhir_id,
        subject=subject,
        body=message.body,
        sent_at=message.sent_at,
    )


@router.post("/patients/{patient_id}/threads", response_model=SentOut, status_code=201)
async def start_thread(
    patient_id: PatientId,
    body: NewThreadIn,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SentOut:
    """Start a thread with the care team; the routing rules choose its pool."""
    service = _service(request)
    replayed = await _replay(
        service, patient_id, idempotency_key, body=body.body, subject=body.subject
    )
    if replayed is not None:
        response.status_code = 200
        return replayed
    now = datetime.now(UTC)
    try:
        async with service.db.transaction() as session:
            thread = store.Thread(
                id=_new_id("th"),
                patient_id=patient_id,
                thread_fhir_id=None,
                subject=body.subject,
                pool=domain.route_patient_message(body.subject),
                updated_at=now,
            )
            message = _outbound(thread, body.body, idempotency_key, now)
            count_message_after_commit(session, thread.pool, "outbound")
            session.add_all([thread, message])
            event = _sent_event(thread, message, body.subject, None)
            service.outbox.add(session, event, subject=patient_id)
    except IntegrityError:
        # A concurrent request with the same key stored its message first.
        replayed = await _replay(
            service, patient_id, idempotency_key, body=body.body, subject=body.subject
        )
        if replayed is None:
            raise
        response.status_code = 200
        return replayed
    return SentOut(thread=_thread_out(thread), message=_message_out(message))


@router.post(
    "/patients/{patient_id}/threads/{thread_id}/messages", response_model=SentOut, status_code=201
)
async def reply(
    patient_id: PatientId,
    thread_id: ThreadId,
    body: ReplyIn,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SentOut:
    """Send a message in one of the patient's threads, in reply to the care team's latest."""
    service = _service(request)
    async with service.db.sessions() as session:
        found = await store.get_thread(session, thread_id)
    if found is None or found.patient_id != patient_id:
        raise HTTPException(404, "No such thread for this patient.")
    replayed = await _replay(
        service, patient_id, idempotency_key, body=body.body, thread_id=thread_id
    )
    if replayed is not None:
        response.status_code = 200
        return replayed
    now = datetime.now(UTC)
    try:
        async with service.db.transaction() as session:
            thread = await store.get_thread(session, thread_id)
            if thread is None:  # pragma: no cover - threads are never deleted
                raise HTTPException(404, "No such thread for this patient.")
            in_reply_to = await store.latest_inbound_fhir_id(session, thread_id)
            thread.updated_at = now
            message = _outbound(thread, body.body, idempotency_key, now)
            count_message_after_commit(session, thread.pool, "outbound")
            session.add(message)
            event = _sent_event(thread, message, domain.reply_subject(thread.subject), in_reply_to)
            service.outbox.add(session, event, subject=patient_id)
    except IntegrityError:
        replayed = await _replay(
            service, patient_id, idempotency_key, body=body.body, thread_id=thread_id
        )
        if replayed is None:
            raise
        response.status_code = 200
        return replayed
    return SentOut(thread=_thread_out(thread), message=_message_out(message))


@router.post("/patients/{patient_id}/threads/{thread_id}/read", response_model=ReadOut)
async def mark_read(patient_id: PatientId, thread_id: ThreadId, request: Request) -> ReadOut:
    """Mark the care team's messages in one of the patient's threads read."""
    async with _service(request).db.transaction() as session:
        thread = await store.get_thread(session, thread_id)
        if thread is None or thread.patient_id != patient_id:
            raise HTTPException(404, "No such thread for this patient.")
        marked = await store.mark_inbound_read(session, thread_id, datetime.now(UTC))
    return ReadOut(thread_id=thread_id, marked=marked)


@router.get("/pools/{pool}/items", response_model=list[PoolItemOut])
async def list_pool_items(
    pool: Annotated[str, Path(pattern=r"^[a-z0-9-]{1,64}$")], session: ReadSession
) -> list[PoolItemOut]:
    """A care-team pool's work items, oldest first."""
    return [
        PoolItemOut(
            id=i.id,
            patient_id=i.patient_id,
            kind=i.kind,
            urgency=i.urgency,
            summary=i.summary,
            created_at=i.created_at,
        )
        for i in await store.pool_items(session, pool)
    ]
