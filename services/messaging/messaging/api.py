"""HTTP API of the messaging service, for the gateway (patient-scoped) and care-team tools."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel

from messaging import store
from servicekit.http import PatientId, ReadSession

router = APIRouter(tags=["messaging"])


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
    patient_id: PatientId, thread_id: str, session: ReadSession
) -> list[MessageOut]:
    """A thread's messages, oldest first (404 if the thread is not the patient's)."""
    thread = await store.get_thread(session, thread_id)
    if thread is None or thread.patient_id != patient_id:
        raise HTTPException(404, "No such thread for this patient.")
    return [
        MessageOut(
            id=m.id,
            direction=m.direction,
            sender=m.sender_display,
            body=m.body,
            sent_at=m.sent_at,
            read=m.read_at is not None,
        )
        for m in await store.messages_in(session, thread_id)
    ]


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
