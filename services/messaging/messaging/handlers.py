"""Event handlers: each hands its event to the use case in `messaging.service`."""

from __future__ import annotations

from contracts.message import MessageReceivedV1, MessageSyncedV1
from contracts.triage import TriageCompletedV1
from messaging.service import messaging_for
from messaging.store import CONVERSATION_TURNS
from servicekit.consumer import Event, EventRouter, UnitOfWork

router = EventRouter()


# Both read a message and then write it (a live change and the back-fill can carry two
# versions of one Communication at once): they take turns per patient.
@router.handles("message.received", interactive=True, turns=CONVERSATION_TURNS)
async def file_clinician_message(uow: UnitOfWork, event: Event[MessageReceivedV1]) -> None:
    """File a clinician's message in its thread (a new thread when it starts one)."""
    await messaging_for(uow).file_clinician_message(uow.session, event)


@router.handles("message.synced", turns=CONVERSATION_TURNS)
async def sync_message(uow: UnitOfWork, event: Event[MessageSyncedV1]) -> None:
    """Learn the EHR identity of a filed message, import history, apply EHR changes."""
    await messaging_for(uow).sync_message(uow.session, event)


@router.handles("triage.completed")
async def route_triage_summary(uow: UnitOfWork, event: Event[TriageCompletedV1]) -> None:
    """Queue the triage summary for its pool; open a thread for urgent/routine outcomes."""
    await messaging_for(uow).triage_into_thread(uow, event)
