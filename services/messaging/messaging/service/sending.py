"""Sending: a patient starts a conversation or replies (limits, emergency check, filing).

The emergency check (HTTP to triage) runs before the transaction opens, so no database
transaction waits on another service.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.message import (
    MessageAttachment,
)
from contracts.triage import Urgency
from messaging import domain, store
from messaging.emergency import Verdict
from messaging.metrics import count_message_after_commit
from messaging.service.base import (
    MessagingBase,
    NewAttachment,
    NotFound,
    Prepared,
    RateLimited,
    Sent,
    TooLong,
    UnknownTopic,
    aad,
    new_id,
)


class Sending(MessagingBase):
    """A patient's messages to the care team."""

    # -- sending --------------------------------------------------------------------------

    def _check_body(self, body: str) -> None:
        if len(body) > self.settings.body_max_chars:
            raise TooLong(f"the message is longer than {self.settings.body_max_chars} characters")

    def _checked_attachments(self, attachments: Sequence[NewAttachment]) -> list[NewAttachment]:
        if len(attachments) > self.settings.attachments_max_count:
            raise domain.AttachmentRefused(
                f"at most {self.settings.attachments_max_count} attachments per message"
            )
        for a in attachments:
            domain.check_attachment(
                a.content_type, a.title, a.data_base64, self.settings.attachment_max_bytes
            )
        return list(attachments)

    async def _enforce_rate_limit(
        self, session: AsyncSession, patient_id: str, now: datetime, verdict: Verdict
    ) -> None:
        await store.hold_conversation(session, patient_id)
        window = timedelta(seconds=self.settings.rate_limit_window_s)
        sent = await store.sends_since(session, patient_id, now - window)
        wait = domain.retry_after(sent, self.settings.rate_limit_messages, window, now)
        if wait is not None:
            raise RateLimited(wait, verdict)

    def _store_message(
        self,
        session: AsyncSession,
        thread: store.Thread,
        body: str,
        attachments: Sequence[NewAttachment],
        *,
        now: datetime,
        verdict: Verdict,
    ) -> tuple[store.Message, list[store.Attachment], list[MessageAttachment]]:
        # The patient has read what they wrote themselves.
        message = store.Message(
            id=new_id("msg"),
            thread_id=thread.id,
            patient_id=thread.patient_id,
            direction=store.PATIENT,
            communication_fhir_id=None,
            sender_display=None,
            sent_at=now,
            read_at=now,
            emergency=verdict.emergency,
            needs_review=not verdict.checked,
        )
        self._seal_message(message, body)
        session.add(message)
        count_message_after_commit(session, thread.pool, "outbound")
        rows: list[store.Attachment] = []
        wire: list[MessageAttachment] = []
        for new in attachments:
            data = base64.b64decode(new.data_base64)
            row = store.Attachment(
                id=new_id("att"),
                message_id=message.id,
                patient_id=thread.patient_id,
                content_type=new.content_type,
                size=len(data),
                key_id=self.cipher.active_key_id,
            )
            row.title_enc = self.cipher.encrypt_text(new.title, aad("attachments", "title", row.id))
            row.data_enc = self.cipher.encrypt(data, aad("attachments", "data", row.id).encode())
            session.add(row)
            rows.append(row)
            wire.append(
                MessageAttachment(
                    attachment_id=row.id,
                    content_type=new.content_type,
                    title=new.title,
                    size=len(data),
                    data_base64=new.data_base64,
                )
            )
        return message, rows, wire

    def _pool_item(
        self,
        session: AsyncSession,
        thread: store.Thread,
        message: store.Message,
        verdict: Verdict,
        subject: str,
        now: datetime,
    ) -> None:
        # Emergencies go to the pool that acts at once, whatever the topic chose.
        pool = self.rules.emergency_pool if verdict.emergency else thread.pool
        urgency = Urgency.EMERGENCY if verdict.emergency else Urgency.ROUTINE
        item = store.PoolItem(
            id=f"message-{message.id}",
            pool=pool,
            patient_id=thread.patient_id,
            kind="patient-message",
            urgency=urgency.value,
            thread_id=thread.id,
            message_id=message.id,
            emergency=verdict.emergency,
            needs_review=not verdict.checked,
            created_at=now,
        )
        flags = f" [flags: {', '.join(verdict.flags)}]" if verdict.flags else ""
        self._seal_item(item, f"{subject}{flags}")
        session.add(item)

    async def prepare_thread(
        self,
        *,
        subject: str,
        body: str,
        topic: str | None,
        attachments: Sequence[NewAttachment] = (),
    ) -> Prepared:
        """Check a new conversation and ask triage whether it is an emergency: the work
        done before the transaction opens (an HTTP call), once per new request."""
        if topic is not None and self.rules.topic(topic) is None:
            raise UnknownTopic(topic)
        self._check_body(body)
        checked = self._checked_attachments(attachments)
        verdict = await self.emergency.check(f"{subject}\n{body}")
        return Prepared(subject, body, topic, checked, verdict)

    async def start_thread(self, session: AsyncSession, patient_id: str, new: Prepared) -> Sent:
        """Start a conversation with the care team in the caller's transaction (one
        commit with the idempotency record); the routing rules choose its pool."""
        assert new.subject is not None
        route = self.rules.route_message(new.topic, new.subject, new.body)
        now = datetime.now(UTC)
        await self._enforce_rate_limit(session, patient_id, now, new.verdict)
        thread = store.Thread(
            id=new_id("th"),
            patient_id=patient_id,
            thread_fhir_id=None,
            pool=route.pool,
            topic=new.topic,
            rules_version=route.rules_version,
            origin="patient",
            updated_at=now,
        )
        self._seal_thread(thread, new.subject)
        session.add(thread)
        message, rows, wire = self._store_message(
            session, thread, new.body, new.attachments, now=now, verdict=new.verdict
        )
        self._pool_item(session, thread, message, new.verdict, new.subject, now)
        self._publish(session, thread, message, new.subject, new.body, None, wire)
        return Sent(self._thread_view(thread), self._message_view(message, rows), new.verdict)

    async def prepare_reply(
        self,
        patient_id: str,
        thread_id: str,
        *,
        body: str,
        attachments: Sequence[NewAttachment] = (),
    ) -> Prepared:
        """Check a reply (the thread must be the patient's) and ask triage whether it is an
        emergency, before the transaction opens."""
        async with self.db.sessions() as session:
            found = await store.get_thread(session, thread_id)
        if found is None or found.patient_id != patient_id:
            raise NotFound(thread_id)
        self._check_body(body)
        checked = self._checked_attachments(attachments)
        verdict = await self.emergency.check(body)
        return Prepared(None, body, None, checked, verdict)

    async def reply(
        self, session: AsyncSession, patient_id: str, thread_id: str, new: Prepared
    ) -> Sent:
        """Send a message in one of the patient's threads, in reply to the care team's
        latest message there, in the caller's transaction."""
        now = datetime.now(UTC)
        await self._enforce_rate_limit(session, patient_id, now, new.verdict)
        thread = await store.get_thread(session, thread_id)
        if thread is None or thread.patient_id != patient_id:  # pragma: no cover - never deleted
            raise NotFound(thread_id)
        in_reply_to = await store.latest_inbound_fhir_id(session, thread_id)
        thread.updated_at = now
        subject = domain.reply_subject(self._subject(thread))
        message, rows, wire = self._store_message(
            session, thread, new.body, new.attachments, now=now, verdict=new.verdict
        )
        self._pool_item(session, thread, message, new.verdict, subject, now)
        self._publish(session, thread, message, subject, new.body, in_reply_to, wire)
        return Sent(self._thread_view(thread), self._message_view(message, rows), new.verdict)
