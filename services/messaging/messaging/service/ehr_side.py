"""The EHR's side: the care team's messages, the EHR's copy of ours, history, triage."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.message import (
    MessageReceivedV1,
    MessageSyncedV1,
)
from contracts.triage import TriageCompletedV1, Urgency
from messaging import domain, store
from messaging.metrics import count_message_after_commit, count_triage_item_after_commit
from messaging.service.base import MessagingBase
from servicekit.consumer import Event, UnitOfWork
from servicekit.versions import is_newer


class EhrSide(MessagingBase):
    """What arrives from the EHR and from triage, filed into threads."""

    # -- the EHR's side (event handlers) --------------------------------------------------

    async def _thread_for(
        self,
        session: AsyncSession,
        patient_id: str,
        *,
        thread_id: str | None,
        thread_fhir_id: str | None,
        in_reply_to_fhir_id: str | None,
        communication_fhir_id: str,
        subject: str | None,
        origin: str,
        at: datetime,
    ) -> store.Thread:
        """The thread an EHR message belongs to: ours by id, else by the thread's first
        Communication, else the thread of the message it answers, else a new one."""
        candidates: list[store.Thread | None] = []
        if thread_id:
            candidates.append(await store.get_thread(session, thread_id))
        if thread_fhir_id:
            candidates.append(await store.thread_by_fhir_id(session, thread_fhir_id))
            root = await store.message_by_fhir_id(session, thread_fhir_id)
            if root is not None:
                candidates.append(await store.get_thread(session, root.thread_id))
        if in_reply_to_fhir_id:
            answered = await store.message_by_fhir_id(session, in_reply_to_fhir_id)
            if answered is not None:
                candidates.append(await store.get_thread(session, answered.thread_id))
        # A message imported before its thread's first one: that one is this thread's root.
        candidates.append(await store.thread_by_fhir_id(session, communication_fhir_id))
        for candidate in candidates:
            if candidate is not None and candidate.patient_id == patient_id:
                if (
                    candidate.thread_fhir_id is None
                    and thread_fhir_id
                    and await store.thread_by_fhir_id(session, thread_fhir_id) is None
                ):
                    candidate.thread_fhir_id = thread_fhir_id
                return candidate
        root_fhir_id = thread_fhir_id or communication_fhir_id
        thread = store.Thread(
            id=f"th-{root_fhir_id}",
            patient_id=patient_id,
            thread_fhir_id=root_fhir_id,
            pool=self.rules.default_pool,
            origin=origin,
            updated_at=at,
        )
        self._seal_thread(thread, subject)
        session.add(thread)
        await session.flush()
        return thread

    async def file_clinician_message(
        self, session: AsyncSession, event: Event[MessageReceivedV1]
    ) -> None:
        """File a clinician's message in its thread (a new thread when it starts one); a
        later version of a message already filed updates it."""
        data = event.data
        existing = await store.message_by_fhir_id(session, data.communication_fhir_id)
        if existing is not None:
            if is_newer(data.source, existing.source_version, existing.source_updated_at):
                self._seal_message(existing, data.body)
                existing.sender_display = data.sender_display
                existing.source_version = data.source.version_id
                existing.source_updated_at = data.source.last_updated
            # Filed first by the back-fill (it can read the answer before its notification
            # is handled): the answer still means the care team read what came before.
            await store.mark_care_team_read(
                session, existing.thread_id, existing.sent_at, existing.sent_at
            )
            return
        thread = await self._thread_for(
            session,
            event.patient_id,
            thread_id=data.thread_id,
            thread_fhir_id=data.thread_fhir_id,
            in_reply_to_fhir_id=data.in_reply_to_fhir_id,
            communication_fhir_id=data.communication_fhir_id,
            subject=data.subject,
            origin="care-team",
            at=data.sent_at,
        )
        # An answer shows after the message it answers, and means the care team read that
        # message and what the patient wrote before it.
        sent_at = await self._answer_time(session, thread, data.sent_at, data.in_reply_to_fhir_id)
        thread.updated_at = max(thread.updated_at, sent_at)
        message = store.Message(
            id=f"msg-{data.communication_fhir_id}",
            thread_id=thread.id,
            patient_id=event.patient_id,
            direction=store.CARE_TEAM,
            communication_fhir_id=data.communication_fhir_id,
            sender_display=data.sender_display,
            sent_at=sent_at,
            ehr_status="completed",
            source_version=data.source.version_id,
            source_updated_at=data.source.last_updated,
        )
        self._seal_message(message, data.body)
        session.add(message)
        count_message_after_commit(session, thread.pool, "inbound")
        await store.mark_care_team_read(session, thread.id, sent_at, sent_at)

    async def _answer_time(
        self,
        session: AsyncSession,
        thread: store.Thread,
        sent_at: datetime,
        in_reply_to_fhir_id: str | None,
    ) -> datetime:
        """`sent_at` of a care-team message, placed after the message of the thread it
        answers (`domain.answer_time`)."""
        if not in_reply_to_fhir_id:
            return sent_at
        answered = await store.message_by_fhir_id(session, in_reply_to_fhir_id)
        if answered is None or answered.thread_id != thread.id:
            return sent_at
        return domain.answer_time(sent_at, answered.sent_at)

    async def sync_message(self, session: AsyncSession, event: Event[MessageSyncedV1]) -> None:
        """Apply the EHR's copy of a message: our filed message's EHR identity, an imported
        one, or a later change (status, the care team's read)."""
        data = event.data
        message = None
        if data.message_id:
            message = await session.get(store.Message, data.message_id)
        if message is None:
            message = await store.message_by_fhir_id(session, data.communication_fhir_id)
        if message is not None and message.patient_id != event.patient_id:
            return
        if message is None:
            if not data.imported or data.body is None:
                return  # a change to a message we never had: nothing to show
            message = await self._import(session, event)
        elif (
            message.communication_fhir_id is None
            and await store.message_by_fhir_id(session, data.communication_fhir_id) is None
        ):
            message.communication_fhir_id = data.communication_fhir_id
        if data.message_id is not None:
            thread = await store.get_thread(session, message.thread_id)
            root = data.thread_fhir_id or data.communication_fhir_id
            if (
                thread is not None
                and thread.thread_fhir_id is None
                and await store.thread_by_fhir_id(session, root) is None
            ):
                thread.thread_fhir_id = root
        if not is_newer(data.source, message.source_version, message.source_updated_at):
            return
        message.ehr_status = data.status
        message.source_version = data.source.version_id
        message.source_updated_at = data.source.last_updated
        if data.from_patient and data.received_at is not None:
            message.care_team_read_at = data.received_at

    async def _import(self, session: AsyncSession, event: Event[MessageSyncedV1]) -> store.Message:
        data = event.data
        sent_at = data.sent_at or data.source.last_updated
        thread = await self._thread_for(
            session,
            event.patient_id,
            thread_id=data.thread_id,
            thread_fhir_id=data.thread_fhir_id,
            in_reply_to_fhir_id=data.in_reply_to_fhir_id,
            communication_fhir_id=data.communication_fhir_id,
            subject=data.subject,
            origin="imported",
            at=sent_at,
        )
        if thread.subject_enc is None and thread.subject is None and data.subject:
            self._seal_thread(thread, data.subject)
        if not data.from_patient:
            sent_at = await self._answer_time(session, thread, sent_at, data.in_reply_to_fhir_id)
        thread.updated_at = max(thread.updated_at, sent_at)
        message = store.Message(
            id=f"msg-{data.communication_fhir_id}",
            thread_id=thread.id,
            patient_id=event.patient_id,
            direction=store.PATIENT if data.from_patient else store.CARE_TEAM,
            communication_fhir_id=data.communication_fhir_id,
            sender_display=data.sender_display,
            sent_at=sent_at,
            # History the patient already received through the EHR's own channels.
            read_at=sent_at,
        )
        self._seal_message(message, data.body or "")
        session.add(message)
        if not data.from_patient:
            await store.mark_care_team_read(session, thread.id, sent_at, sent_at)
        await session.flush()
        return message

    async def triage_into_thread(self, uow: UnitOfWork, event: Event[TriageCompletedV1]) -> None:
        """Queue the triage summary for its pool; an urgent or routine outcome also opens
        a thread with the care team holding the summary, filed in the EHR like a message,
        so the clinician's answer lands in that thread."""
        data, session = event.data, uow.session
        item_id = f"triage-{data.session_id}"
        if await session.get(store.PoolItem, item_id) is not None:
            return
        route = self.rules.route_triage(data.urgency, data.recommended_pool)
        now = datetime.now(UTC)
        thread: store.Thread | None = None
        if data.urgency in (Urgency.URGENT, Urgency.ROUTINE):
            subject = f"{domain.TRIAGE_SUBJECT} ({data.urgency.value})"
            thread = store.Thread(
                id=f"th-triage-{data.session_id}",
                patient_id=event.patient_id,
                thread_fhir_id=None,
                pool=route.pool,
                topic="clinical-question",
                rules_version=route.rules_version,
                origin="triage",
                updated_at=data.completed_at,
            )
            self._seal_thread(thread, subject)
            session.add(thread)
            message = store.Message(
                id=f"msg-triage-{data.session_id}",
                thread_id=thread.id,
                patient_id=event.patient_id,
                direction=store.PATIENT,
                sent_at=data.completed_at,
                read_at=data.completed_at,
                emergency=False,
                needs_review=False,
            )
            self._seal_message(message, data.summary)
            session.add(message)
            self._publish(session, thread, message, subject, data.summary, None, [])
        item = store.PoolItem(
            id=item_id,
            pool=route.pool,
            patient_id=event.patient_id,
            kind="triage-summary",
            urgency=data.urgency.value,
            thread_id=thread.id if thread is not None else None,
            emergency=data.urgency is Urgency.EMERGENCY,
            created_at=now,
        )
        self._seal_item(item, data.summary)
        session.add(item)
        count_triage_item_after_commit(session, route.pool, data.urgency.value)
