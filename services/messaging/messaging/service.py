"""Use cases of secure messaging: sending, reading, filing the EHR's side, re-encryption.

The HTTP routes (`api.py`) and the event handlers (`handlers.py`) only translate into calls
here. Each use case has one transaction boundary; the emergency check (HTTP to triage) runs
before the transaction opens, so no database transaction waits on another service.

Free text (subjects, bodies, attachment names and bytes, pool summaries) is encrypted with
the service's `Cipher` before it reaches a session and decrypted on the way out; associated
data binds each envelope to its table, column and row id.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from weakref import WeakKeyDictionary

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.message import (
    MessageAttachment,
    MessageReceivedV1,
    MessageSentV1,
    MessageSyncedV1,
)
from contracts.triage import TriageCompletedV1, Urgency
from messaging import domain, store
from messaging.emergency import EmergencyCheck, Verdict
from messaging.settings import Settings
from servicekit.consumer import Event, UnitOfWork
from servicekit.crypto import Cipher
from servicekit.db import Database
from servicekit.errors import DependencyUnavailable
from servicekit.outbox import Outbox
from servicekit.versions import is_newer

# -- errors the entry points translate -----------------------------------------------------


class NotFound(LookupError):
    """No such thread/attachment for this patient."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used for another message."""


class UnknownTopic(ValueError):
    """The topic code is not one of the routing rules' topics."""


class TooLong(ValueError):
    """The message text is longer than the configured limit."""


class RateLimited(Exception):
    """The patient sent too many messages; `retry_after` seconds until the next fits."""

    def __init__(self, retry_after: int, verdict: Verdict) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after
        self.verdict = verdict


# -- what the use cases return -------------------------------------------------------------


@dataclass(frozen=True)
class NewAttachment:
    """An attachment as the patient sends it."""

    content_type: str
    title: str
    data_base64: str


@dataclass(frozen=True)
class AttachmentView:
    """An attachment's description (its bytes are fetched separately)."""

    id: str
    content_type: str
    title: str
    size: int


@dataclass(frozen=True)
class ThreadView:
    """A thread as the patient sees it."""

    id: str
    subject: str | None
    pool: str
    sent_to: str
    topic: str | None
    origin: str
    unread: int
    updated_at: datetime


@dataclass(frozen=True)
class MessageView:
    """A message as the patient sees it."""

    id: str
    direction: str
    sender: str | None
    body: str
    sent_at: datetime
    read: bool
    care_team_read_at: datetime | None
    ehr_status: str | None
    emergency: bool
    attachments: list[AttachmentView] = field(default_factory=list)


@dataclass(frozen=True)
class Sent:
    """The outcome of a send: the thread, the message and the emergency check's verdict."""

    thread: ThreadView
    message: MessageView
    verdict: Verdict
    replayed: bool = False


@dataclass(frozen=True)
class PoolItemView:
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


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _aad(table: str, column: str, row_id: str) -> str:
    return f"messaging.{table}.{column}:{row_id}"


class Messaging:
    """The messaging use cases of one running service."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        outbox: Outbox,
        rules: domain.RoutingRules,
        cipher: Cipher,
        emergency: EmergencyCheck,
    ) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self.rules = rules
        self.cipher = cipher
        self.emergency = emergency

    # -- encryption of columns ------------------------------------------------------------

    def _seal_thread(self, thread: store.Thread, subject: str | None) -> None:
        thread.subject = None
        thread.subject_enc = (
            self.cipher.encrypt_text(subject, _aad("threads", "subject", thread.id))
            if subject is not None
            else None
        )
        thread.key_id = self.cipher.active_key_id

    def _subject(self, thread: store.Thread) -> str | None:
        if thread.subject_enc is not None:
            return self.cipher.decrypt_text(
                thread.subject_enc, _aad("threads", "subject", thread.id)
            )
        return thread.subject

    def _seal_message(self, message: store.Message, body: str) -> None:
        message.body = None
        message.body_enc = self.cipher.encrypt_text(body, _aad("messages", "body", message.id))
        message.key_id = self.cipher.active_key_id

    def _body(self, message: store.Message) -> str:
        if message.body_enc is not None:
            return self.cipher.decrypt_text(message.body_enc, _aad("messages", "body", message.id))
        return message.body or ""

    def _seal_item(self, item: store.PoolItem, summary: str) -> None:
        item.summary = None
        item.summary_enc = self.cipher.encrypt_text(summary, _aad("pool_items", "summary", item.id))
        item.key_id = self.cipher.active_key_id

    def _summary(self, item: store.PoolItem) -> str:
        if item.summary_enc is not None:
            return self.cipher.decrypt_text(
                item.summary_enc, _aad("pool_items", "summary", item.id)
            )
        return item.summary or ""

    def _attachment_title(self, attachment: store.Attachment) -> str:
        return self.cipher.decrypt_text(
            attachment.title_enc, _aad("attachments", "title", attachment.id)
        )

    def _attachment_data(self, attachment: store.Attachment) -> bytes:
        return self.cipher.decrypt(
            attachment.data_enc, _aad("attachments", "data", attachment.id).encode()
        )

    # -- views ----------------------------------------------------------------------------

    def _thread_view(self, thread: store.Thread, unread: int = 0) -> ThreadView:
        return ThreadView(
            id=thread.id,
            subject=self._subject(thread),
            pool=thread.pool,
            sent_to=self.rules.route(thread.pool).display,
            topic=thread.topic,
            origin=thread.origin,
            unread=unread,
            updated_at=thread.updated_at,
        )

    def _message_view(
        self, message: store.Message, attachments: Sequence[store.Attachment] = ()
    ) -> MessageView:
        return MessageView(
            id=message.id,
            direction=message.direction,
            sender=message.sender_display,
            body=self._body(message),
            sent_at=message.sent_at,
            read=message.read_at is not None,
            care_team_read_at=message.care_team_read_at,
            ehr_status=message.ehr_status,
            emergency=message.emergency,
            attachments=[
                AttachmentView(
                    id=a.id,
                    content_type=a.content_type,
                    title=self._attachment_title(a),
                    size=a.size,
                )
                for a in attachments
            ],
        )

    # -- reading --------------------------------------------------------------------------

    def topics(self) -> list[domain.Topic]:
        """The topics a patient may choose from."""
        return list(self.rules.topics)

    async def threads(self, patient_id: str) -> list[ThreadView]:
        """The patient's threads with their unread counts, most recently active first."""
        async with self.db.sessions() as session:
            threads = await store.threads_of(session, patient_id)
            unread = await store.unread_counts(session, patient_id)
        return [self._thread_view(t, unread.get(t.id, 0)) for t in threads]

    async def messages(self, patient_id: str, thread_id: str) -> list[MessageView]:
        """A thread's messages, oldest first."""
        async with self.db.sessions() as session:
            thread = await store.get_thread(session, thread_id)
            if thread is None or thread.patient_id != patient_id:
                raise NotFound(thread_id)
            messages = await store.messages_in(session, thread_id)
            attachments = await store.attachments_of(session, [m.id for m in messages])
        by_message: dict[str, list[store.Attachment]] = {}
        for attachment in attachments:
            by_message.setdefault(attachment.message_id, []).append(attachment)
        return [self._message_view(m, by_message.get(m.id, ())) for m in messages]

    async def attachment(self, patient_id: str, attachment_id: str) -> tuple[str, str, bytes]:
        """An attachment's content type, title and bytes."""
        async with self.db.sessions() as session:
            attachment = await store.get_attachment(session, attachment_id)
        if attachment is None or attachment.patient_id != patient_id:
            raise NotFound(attachment_id)
        return (
            attachment.content_type,
            self._attachment_title(attachment),
            self._attachment_data(attachment),
        )

    async def mark_read(self, patient_id: str, thread_id: str) -> int:
        """Mark the care team's messages in a thread read; how many were unread."""
        async with self.db.transaction() as session:
            thread = await store.get_thread(session, thread_id)
            if thread is None or thread.patient_id != patient_id:
                raise NotFound(thread_id)
            return await store.mark_inbound_read(session, thread_id, datetime.now(UTC))

    async def pool_items(self, pool: str) -> list[PoolItemView]:
        """A care-team pool's work items, oldest first."""
        async with self.db.sessions() as session:
            items = await store.pool_items(session, pool)
        return [
            PoolItemView(
                id=i.id,
                patient_id=i.patient_id,
                kind=i.kind,
                urgency=i.urgency,
                summary=self._summary(i),
                thread_id=i.thread_id,
                emergency=i.emergency,
                needs_review=i.needs_review,
                created_at=i.created_at,
            )
            for i in items
        ]

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

    async def _replay(
        self,
        patient_id: str,
        key: str | None,
        *,
        body: str,
        thread_id: str | None = None,
        subject: str | None = None,
    ) -> Sent | None:
        """What an earlier request with this idempotency key sent (None: no such request).
        The same key for a different message is a conflict, not a replay."""
        if key is None:
            return None
        async with self.db.sessions() as session:
            message = await store.message_by_idempotency_key(session, patient_id, key)
            if message is None:
                return None
            thread = await store.get_thread(session, message.thread_id)
            attachments = await store.attachments_of(session, [message.id])
        if (
            thread is None
            or self._body(message) != body
            or (thread_id is not None and thread.id != thread_id)
            or (subject is not None and self._subject(thread) != subject)
        ):
            raise IdempotencyConflict(key)
        verdict = Verdict(checked=not message.needs_review, emergency=message.emergency)
        return Sent(
            thread=self._thread_view(thread),
            message=self._message_view(message, attachments),
            verdict=verdict,
            replayed=True,
        )

    async def _enforce_rate_limit(
        self, session: AsyncSession, patient_id: str, now: datetime, verdict: Verdict
    ) -> None:
        await store.lock_patient_sends(session, patient_id)
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
        key: str | None,
        now: datetime,
        verdict: Verdict,
    ) -> tuple[store.Message, list[store.Attachment], list[MessageAttachment]]:
        # The patient has read what they wrote themselves.
        message = store.Message(
            id=_new_id("msg"),
            thread_id=thread.id,
            patient_id=thread.patient_id,
            direction=store.PATIENT,
            communication_fhir_id=None,
            sender_display=None,
            sent_at=now,
            read_at=now,
            idempotency_key=key,
            emergency=verdict.emergency,
            needs_review=not verdict.checked,
        )
        self._seal_message(message, body)
        session.add(message)
        rows: list[store.Attachment] = []
        wire: list[MessageAttachment] = []
        for new in attachments:
            data = base64.b64decode(new.data_base64)
            row = store.Attachment(
                id=_new_id("att"),
                message_id=message.id,
                patient_id=thread.patient_id,
                content_type=new.content_type,
                size=len(data),
                key_id=self.cipher.active_key_id,
            )
            row.title_enc = self.cipher.encrypt_text(
                new.title, _aad("attachments", "title", row.id)
            )
            row.data_enc = self.cipher.encrypt(data, _aad("attachments", "data", row.id).encode())
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

    def _publish(
        self,
        session: AsyncSession,
        thread: store.Thread,
        message: store.Message,
        subject: str,
        body: str,
        in_reply_to: str | None,
        wire: list[MessageAttachment],
    ) -> None:
        event = MessageSentV1(
            message_id=message.id,
            thread_id=thread.id,
            patient_id=thread.patient_id,
            recipient_pool=thread.pool,
            in_reply_to_fhir_id=in_reply_to,
            thread_fhir_id=thread.thread_fhir_id,
            subject=subject,
            body=body,
            sent_at=message.sent_at,
            topic=thread.topic,
            emergency=bool(message.emergency),
            needs_review=bool(message.needs_review),
            attachments=wire,
        )
        self.outbox.add(session, event, subject=thread.patient_id)

    async def start_thread(
        self,
        patient_id: str,
        *,
        subject: str,
        body: str,
        topic: str | None,
        attachments: Sequence[NewAttachment] = (),
        idempotency_key: str | None = None,
    ) -> Sent:
        """Start a conversation with the care team; the routing rules choose its pool."""
        if topic is not None and self.rules.topic(topic) is None:
            raise UnknownTopic(topic)
        self._check_body(body)
        checked = self._checked_attachments(attachments)
        replayed = await self._replay(patient_id, idempotency_key, body=body, subject=subject)
        if replayed is not None:
            return replayed
        verdict = await self.emergency.check(f"{subject}\n{body}")
        route = self.rules.route_message(topic, subject, body)
        now = datetime.now(UTC)
        try:
            async with self.db.transaction() as session:
                await self._enforce_rate_limit(session, patient_id, now, verdict)
                thread = store.Thread(
                    id=_new_id("th"),
                    patient_id=patient_id,
                    thread_fhir_id=None,
                    pool=route.pool,
                    topic=topic,
                    rules_version=route.rules_version,
                    origin="patient",
                    updated_at=now,
                )
                self._seal_thread(thread, subject)
                session.add(thread)
                message, rows, wire = self._store_message(
                    session, thread, body, checked, key=idempotency_key, now=now, verdict=verdict
                )
                self._pool_item(session, thread, message, verdict, subject, now)
                self._publish(session, thread, message, subject, body, None, wire)
        except IntegrityError:
            # A concurrent request with the same key stored its message first.
            replayed = await self._replay(patient_id, idempotency_key, body=body, subject=subject)
            if replayed is None:
                raise
            return replayed
        return Sent(self._thread_view(thread), self._message_view(message, rows), verdict)

    async def reply(
        self,
        patient_id: str,
        thread_id: str,
        *,
        body: str,
        attachments: Sequence[NewAttachment] = (),
        idempotency_key: str | None = None,
    ) -> Sent:
        """Send a message in one of the patient's threads, in reply to the care team's
        latest message there."""
        async with self.db.sessions() as session:
            found = await store.get_thread(session, thread_id)
        if found is None or found.patient_id != patient_id:
            raise NotFound(thread_id)
        self._check_body(body)
        checked = self._checked_attachments(attachments)
        replayed = await self._replay(patient_id, idempotency_key, body=body, thread_id=thread_id)
        if replayed is not None:
            return replayed
        verdict = await self.emergency.check(body)
        now = datetime.now(UTC)
        try:
            async with self.db.transaction() as session:
                await self._enforce_rate_limit(session, patient_id, now, verdict)
                thread = await store.get_thread(session, thread_id)
                if thread is None:  # pragma: no cover - threads are never deleted
                    raise NotFound(thread_id)
                in_reply_to = await store.latest_inbound_fhir_id(session, thread_id)
                thread.updated_at = now
                subject = domain.reply_subject(self._subject(thread))
                message, rows, wire = self._store_message(
                    session, thread, body, checked, key=idempotency_key, now=now, verdict=verdict
                )
                self._pool_item(session, thread, message, verdict, subject, now)
                self._publish(session, thread, message, subject, body, in_reply_to, wire)
        except IntegrityError:
            replayed = await self._replay(
                patient_id, idempotency_key, body=body, thread_id=thread_id
            )
            if replayed is None:
                raise
            return replayed
        return Sent(self._thread_view(thread), self._message_view(message, rows), verdict)

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
        thread.updated_at = max(thread.updated_at, data.sent_at)
        message = store.Message(
            id=f"msg-{data.communication_fhir_id}",
            thread_id=thread.id,
            patient_id=event.patient_id,
            direction=store.CARE_TEAM,
            communication_fhir_id=data.communication_fhir_id,
            sender_display=data.sender_display,
            sent_at=data.sent_at,
            ehr_status="completed",
            source_version=data.source.version_id,
            source_updated_at=data.source.last_updated,
        )
        self._seal_message(message, data.body)
        session.add(message)
        # An answer means the care team has read what the patient wrote before it.
        await store.mark_care_team_read(session, thread.id, data.sent_at, data.sent_at)

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

    # -- key rotation ---------------------------------------------------------------------

    def _reencrypt_row(
        self, row: store.Thread | store.Message | store.Attachment | store.PoolItem
    ) -> None:
        if isinstance(row, store.Thread):
            if row.subject_enc is not None:
                row.subject_enc = self.cipher.rewrap(row.subject_enc)
            elif row.subject is not None:
                self._seal_thread(row, row.subject)
        elif isinstance(row, store.Message):
            if row.body_enc is not None:
                row.body_enc = self.cipher.rewrap(row.body_enc)
            else:
                self._seal_message(row, row.body or "")
        elif isinstance(row, store.Attachment):
            row.title_enc = self.cipher.rewrap(row.title_enc)
            row.data_enc = self.cipher.rewrap(row.data_enc)
        elif row.summary_enc is not None:
            row.summary_enc = self.cipher.rewrap(row.summary_enc)
        else:
            self._seal_item(row, row.summary or "")
        row.key_id = self.cipher.active_key_id

    async def reencrypt(self) -> dict[str, int]:
        """Bring every encrypted column to the active key (and encrypt rows written before
        encryption existed), in short batches; returns the rows changed per table."""
        changed: dict[str, int] = {}
        active = self.cipher.active_key_id
        for table in store.ENCRYPTED_TABLES:
            name = str(table.__tablename__)
            changed[name] = 0
            while True:
                async with self.db.transaction() as session:
                    rows = await store.rows_to_reencrypt(
                        session, table, active, self.settings.rotation_batch_size
                    )
                    for row in rows:
                        self._reencrypt_row(row)
                changed[name] += len(rows)
                if len(rows) < self.settings.rotation_batch_size:
                    break
        return changed

    async def encryption_status(self) -> dict[str, int]:
        """Rows per table not yet on the active key."""
        async with self.db.sessions() as session:
            return await store.count_not_on_key(session, self.cipher.active_key_id)


# -- the running service's use cases, for the handlers ----------------------------------

_running: WeakKeyDictionary[Outbox, Messaging] = WeakKeyDictionary()


def attach(outbox: Outbox, messaging: Messaging) -> None:
    """Make `messaging` what the handlers of the service owning `outbox` use."""
    _running[outbox] = messaging


def detach(outbox: Outbox) -> None:
    """Forget the use cases of a stopped service."""
    _running.pop(outbox, None)


def messaging_for(uow: UnitOfWork) -> Messaging:
    """The use cases of the service handling this unit of work."""
    found = _running.get(uow.outbox)
    if found is None:
        # Only while starting or stopping: the event waits in Kafka.
        raise DependencyUnavailable("the messaging service is not running")
    return found
