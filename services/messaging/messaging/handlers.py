"""Event handlers: clinicians' replies into threads; triage summaries to the right pool."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.message import MessageReceivedV1
from contracts.triage import TriageCompletedV1
from messaging import store
from messaging.domain import DEFAULT_POOL, route_triage
from messaging.metrics import count_message_after_commit, count_triage_item_after_commit
from servicekit.consumer import Event, EventRouter, UnitOfWork

router = EventRouter()


@router.handles("message.received")
async def file_clinician_message(uow: UnitOfWork, event: Event[MessageReceivedV1]) -> None:
    """File a clinician's message in its thread (a new thread when it starts one)."""
    data = event.data
    if await store.message_by_fhir_id(uow.session, data.communication_fhir_id) is not None:
        return
    thread = None
    if data.thread_id:
        thread = await store.get_thread(uow.session, data.thread_id)
    if thread is None and data.thread_fhir_id:
        thread = await store.thread_by_fhir_id(uow.session, data.thread_fhir_id)
    if thread is None or thread.patient_id != event.patient_id:
        thread = store.Thread(
            id=f"th-{data.thread_fhir_id or data.communication_fhir_id}",
            patient_id=event.patient_id,
            thread_fhir_id=data.thread_fhir_id or data.communication_fhir_id,
            subject=None,
            pool=DEFAULT_POOL,
        )
        uow.session.add(thread)
    thread.updated_at = data.sent_at
    uow.session.add(
        store.Message(
            id=f"msg-{data.communication_fhir_id}",
            thread_id=thread.id,
            patient_id=event.patient_id,
            direction="inbound",
            communication_fhir_id=data.communication_fhir_id,
            sender_display=data.sender_display,
            body=data.body,
            sent_at=data.sent_at,
        )
    )
    count_message_after_commit(uow.session, thread.pool, "inbound")


@router.handles("triage.completed")
async def route_triage_summary(uow: UnitOfWork, event: Event[TriageCompletedV1]) -> None:
    """Queue the triage summary for the pool its urgency calls for."""
    data = event.data
    item_id = f"triage-{data.session_id}"
    if await uow.session.get(store.PoolItem, item_id) is not None:
        return
    pool = route_triage(data.urgency, data.recommended_pool)
    count_triage_item_after_commit(uow.session, pool, data.urgency.value)
    uow.session.add(
        store.PoolItem(
            id=item_id,
            pool=pool,
            patient_id=event.patient_id,
            kind="triage-summary",
            urgency=data.urgency.value,
            summary=data.summary,
            created_at=datetime.now(UTC),
        )
    )
