"""The base of the use cases: keys, encryption of columns, views, reading, publishing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.message import (
    MessageAttachment,
    MessageSentV1,
)
from messaging import domain, store
from messaging.emergency import EmergencyCheck, Verdict
from messaging.settings import Settings
from servicekit.crypto import Cipher
from servicekit.db import Database
from servicekit.outbox import Outbox

# -- errors the entry points translate -----------------------------------------------------


class NotFound(LookupError):
    """No such thread/attachment for this patient."""


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


@dataclass(frozen=True)
class Prepared:
    """A message checked before its transaction: its text, attachments and the emergency
    check's verdict (`subject` and `topic` only for a new conversation)."""

    subject: str | None
    body: str
    topic: str | None
    attachments: list[NewAttachment]
    verdict: Verdict


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


def new_id(prefix: str) -> str:
    """A new id of ours (`<prefix>-<32 hex>`)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def aad(table: str, column: str, row_id: str) -> str:
    """The associated data binding an encrypted value to its table, column and row."""
    return f"messaging.{table}.{column}:{row_id}"


class MessagingBase:
    """What every group of use cases shares: the running service's parts, sealing and
    opening encrypted columns, views, reading."""

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
            self.cipher.encrypt_text(subject, aad("threads", "subject", thread.id))
            if subject is not None
            else None
        )
        thread.key_id = self.cipher.active_key_id

    def _subject(self, thread: store.Thread) -> str | None:
        if thread.subject_enc is not None:
            return self.cipher.decrypt_text(
                thread.subject_enc, aad("threads", "subject", thread.id)
            )
        return thread.subject

    def _seal_message(self, message: store.Message, body: str) -> None:
        message.body = None
        message.body_enc = self.cipher.encrypt_text(body, aad("messages", "body", message.id))
        message.key_id = self.cipher.active_key_id

    def _body(self, message: store.Message) -> str:
        if message.body_enc is not None:
            return self.cipher.decrypt_text(message.body_enc, aad("messages", "body", message.id))
        return message.body or ""

    def _seal_item(self, item: store.PoolItem, summary: str) -> None:
        item.summary = None
        item.summary_enc = self.cipher.encrypt_text(summary, aad("pool_items", "summary", item.id))
        item.key_id = self.cipher.active_key_id

    def _summary(self, item: store.PoolItem) -> str:
        if item.summary_enc is not None:
            return self.cipher.decrypt_text(item.summary_enc, aad("pool_items", "summary", item.id))
        return item.summary or ""

    def _attachment_title(self, attachment: store.Attachment) -> str:
        return self.cipher.decrypt_text(
            attachment.title_enc, aad("attachments", "title", attachment.id)
        )

    def _attachment_data(self, attachment: store.Attachment) -> bytes:
        return self.cipher.decrypt(
            attachment.data_enc, aad("attachments", "data", attachment.id).encode()
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
        # Reads open no transaction (`Database.reads`): BEGIN and ROLLBACK were a sixth of
        # messaging's CPU serving the portal's summary (py-spy, benchmark 4).
        async with self.db.reads() as session:
            threads = await store.threads_of(session, patient_id)
            unread = await store.unread_counts(session, patient_id)
        return [self._thread_view(t, unread.get(t.id, 0)) for t in threads]

    async def messages(self, patient_id: str, thread_id: str) -> list[MessageView]:
        """A thread's messages, oldest first."""
        async with self.db.reads() as session:
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
        async with self.db.reads() as session:
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
        async with self.db.reads() as session:
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
