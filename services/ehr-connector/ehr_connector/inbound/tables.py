"""The inbound side's tables, declared on the service's one `Base` (`ehr_connector.store`,
which also has the patient links both sides read).

- `inbound_subscriptions`: one row per subscribed topic: the EHR's Subscription id, its
  last known status, the contiguous watermark of processed event numbers, heartbeat state.
- `inbound_processed_events`: event numbers processed above the watermark (a duplicate or
  a recovered event is recognised by its number); pruned once the watermark passes them.
- `inbound_resource_versions`: resource versions already turned into an outcome, so the
  same version reached another way (a `_lastUpdated` search, a second event) is skipped.
- `inbound_rejections`: resources that could not be mapped, with the reason (ops endpoint).
- `inbound_seen_jti`: notification signature ids accepted within the replay window.
- `inbound_backfills` / `inbound_backfill_items`: back-fill jobs with their cursor, counts
  and lease, and the resources each job has already published.
- `inbound_canary_runs`: synthetic lab results written for latency measurement.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ehr_connector.store import Base


class InboundSubscription(Base):
    """The connector's Subscription for one topic, as it last knew it."""

    __tablename__ = "inbound_subscriptions"

    topic: Mapped[str] = mapped_column(String(300), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(64), unique=True)
    resource_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(String(16))
    heartbeat_period_s: Mapped[int] = mapped_column(Integer)
    last_event_number: Mapped[int] = mapped_column(BigInteger, default=0)
    highest_event_number: Mapped[int] = mapped_column(BigInteger, default=0)
    events_since_start: Mapped[int] = mapped_column(BigInteger, default=0)
    last_notification_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_event_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_missed_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProcessedEvent(Base):
    """One event number of one Subscription that has an outcome."""

    __tablename__ = "inbound_processed_events"

    subscription_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_number: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    outcome: Mapped[str] = mapped_column(String(32))
    resource_ref: Mapped[str | None] = mapped_column(String(200))
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ResourceVersionSeen(Base):
    """A resource version that already has an outcome (published, echo, rejected...)."""

    __tablename__ = "inbound_resource_versions"

    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    fhir_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(32))
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_inbound_resource_versions_processed_at", "processed_at"),)


class Rejection(Base):
    """A resource the connector could not turn into an event, and why (no content)."""

    __tablename__ = "inbound_rejections"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    subscription_id: Mapped[str | None] = mapped_column(String(64))
    event_number: Mapped[int | None] = mapped_column(BigInteger)
    resource_ref: Mapped[str] = mapped_column(String(200))
    version_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SeenJti(Base):
    """A signature id accepted once; a second notification with it is a replay."""

    __tablename__ = "inbound_seen_jti"

    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class Backfill(Base):
    """One import of a patient's history: cursor, counts, state and the worker's lease."""

    __tablename__ = "inbound_backfills"

    backfill_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    patient_fhir_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(16))
    type_index: Mapped[int] = mapped_column(Integer, default=0)
    next_url: Mapped[str | None] = mapped_column(Text)
    total: Mapped[int | None] = mapped_column(Integer)
    resources_seen: Mapped[int] = mapped_column(Integer, default=0)
    entries_published: Mapped[int] = mapped_column(Integer, default=0)
    batches_published: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_inbound_backfills_state", "state", "lease_until"),)


class BackfillItem(Base):
    """A resource one back-fill has already published (paging can show it twice)."""

    __tablename__ = "inbound_backfill_items"

    backfill_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    fhir_id: Mapped[str] = mapped_column(String(64), primary_key=True)


class CanaryRun(Base):
    """One synthetic lab result: when the EHR stored it and when its event was published."""

    __tablename__ = "inbound_canary_runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    report_fhir_id: Mapped[str | None] = mapped_column(String(64))
    written_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    event_id: Mapped[str | None] = mapped_column(String(36))
    state: Mapped[str] = mapped_column(String(16))
    latency_s: Mapped[float | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
