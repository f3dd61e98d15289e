"""The kit's own tables, present in every service's database: outbox, inbox, dead letters,
stored answers of idempotent commands."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from servicekit.db import KitBase


class OutboxRow(KitBase):
    """An event waiting to be published, or published and kept for replay."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    topic: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(200))
    headers: Mapped[list[list[str]]] = mapped_column(JSON)
    # Sealed (servicekit.sealing) when the service has a cipher; key_id names its key.
    payload: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # Where the broker stored the row when it acknowledged it (see servicekit.broker_loss).
    kafka_partition: Mapped[int | None] = mapped_column(Integer, default=None)
    kafka_offset: Mapped[int | None] = mapped_column(BigInteger, default=None)
    broker_cluster: Mapped[str | None] = mapped_column(String(64), default=None)

    __table_args__ = (
        Index("ix_outbox_pending", "status", "id"),
        Index("ix_outbox_key_status", "key", "status", "id"),
        Index("ix_outbox_sent_at", "sent_at"),
        Index("ix_outbox_broker_cluster", "status", "broker_cluster"),
    )


class InboxRow(KitBase):
    """An event a consumer has handled; its presence makes redelivery a no-op."""

    __tablename__ = "inbox"

    consumer: Mapped[str] = mapped_column(String(200), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    handled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_inbox_handled_at", "handled_at"),)


class DeadLetterRow(KitBase):
    """A message a consumer gave up on; while open, later messages of its key are parked."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    consumer: Mapped[str] = mapped_column(String(200))
    topic: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(200))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    event_id: Mapped[str | None] = mapped_column(String(200), default=None)
    headers: Mapped[list[list[str]]] = mapped_column(JSON)
    # Sealed (servicekit.sealing) when the service has a cipher; key_id names its key.
    payload: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    error: Mapped[str] = mapped_column(Text)
    error_kind: Mapped[str] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    __table_args__ = (Index("ix_dead_letters_consumer_key_status", "consumer", "key", "status"),)


class ParkedRow(KitBase):
    """A message held back, in order, behind an open dead letter of the same key."""

    __tablename__ = "parked_messages"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    consumer: Mapped[str] = mapped_column(String(200))
    key: Mapped[str] = mapped_column(String(200))
    topic: Mapped[str] = mapped_column(String(200))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    headers: Mapped[list[list[str]]] = mapped_column(JSON)
    # Sealed (servicekit.sealing) when the service has a cipher; key_id names its key.
    payload: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    parked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_parked_consumer_key", "consumer", "key", "id"),)


class IdempotencyRow(KitBase):
    """The answer to a command sent with an `Idempotency-Key` (see `servicekit.idempotency`)."""

    __tablename__ = "idempotency_keys"

    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    # Sealed (servicekit.sealing) when the service has a cipher; key_id names its key.
    response_body: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_idempotency_keys_created_at", "created_at"),)


def headers_to_json(headers: list[tuple[str, bytes]]) -> list[list[str]]:
    """Kafka headers as JSON-storable pairs (values are UTF-8 text in our envelope)."""
    return [[k, v.decode("utf-8", errors="replace")] for k, v in headers]


def headers_from_json(stored: Any) -> list[tuple[str, bytes]]:
    """Stored header pairs back to Kafka headers."""
    return [(str(k), str(v).encode()) for k, v in stored]
