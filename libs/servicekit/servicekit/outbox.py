"""The transactional outbox: events are rows written in the caller's transaction.

`Outbox.add` stores an event next to the state change that caused it, so both commit or
neither does. `OutboxRelay` publishes pending rows with acks=all, in id order per key, and
marks them sent; it survives broker outages (rows stay pending, retried with back-off) and
crashes (a row is marked sent only after the broker acknowledged it, so a restart
re-publishes at most the unacknowledged tail, which consumers' inboxes absorb).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from sqlalchemy import Table, bindparam, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.base import Payload
from contracts.envelope import Envelope, build_headers
from contracts.registry import for_model
from servicekit import idempotency, kafka_security, sealing
from servicekit.broker_loss import BrokerIdentity, requeue_lost
from servicekit.crypto import Cipher
from servicekit.db import Database
from servicekit.logging import get_logger
from servicekit.metrics import (
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_AGE,
    OUTBOX_PUBLISH_ERRORS,
    OUTBOX_PUBLISHED,
)
from servicekit.settings import ServiceSettings
from servicekit.tables import InboxRow, OutboxRow, headers_from_json, headers_to_json
from servicekit.telemetry import context_from_headers, current_trace_headers, tracer

log = get_logger(__name__)

# Claims the oldest pending row of each (topic, key) not already claimed by another relay;
# the rest of that stream's rows are reachable only through its head, so two replicas never
# publish rows of one stream concurrently and per-key order holds across replicas. Order is
# per topic and key, as Kafka gives it: a patient's back-fill (low priority) never holds
# back the same patient's live events on other topics.
# One statement with the rows of the claimed streams (a second one was a round trip more
# between a commit and its publish).
_PG_CLAIM = text(
    """
    WITH heads AS (
        SELECT o.topic, o.key FROM outbox o
        WHERE o.status = 'pending'
          AND NOT EXISTS (
            SELECT 1 FROM outbox p
            WHERE p.key = o.key AND p.topic = o.topic AND p.status = 'pending' AND p.id < o.id
          )
        ORDER BY o.priority DESC, o.id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    SELECT r.* FROM outbox r JOIN heads h ON r.topic = h.topic AND r.key = h.key
    WHERE r.status = 'pending'
    ORDER BY r.priority DESC, r.id
    LIMIT :limit
    """
)


# How long a relay holds back on a new cluster while the topics it needs are missing.
_NEW_CLUSTER_TOPICS_WAIT_S = 60.0


class BrokerNotReady(RuntimeError):
    """The broker came back as a new cluster and does not have the topics yet."""


def new_event_id() -> str:
    """A fresh CloudEvents id."""
    return str(uuid.uuid4())


class Outbox:
    """Writes events into the outbox table of one service's database."""

    def __init__(self, settings: ServiceSettings, cipher: Cipher | None = None) -> None:
        self.settings = settings
        # Seals payloads at rest (servicekit.sealing) for services that hold free text.
        self.cipher = cipher
        self.wakeup = asyncio.Event()

    def _wake_after_commit(self, session: AsyncSession) -> None:
        from sqlalchemy import event

        sync = session.sync_session
        if not sync.info.get("outbox_hooked"):
            sync.info["outbox_hooked"] = True

            def _after_commit(_s: Any) -> None:
                sync.info.pop("outbox_hooked", None)
                self.wakeup.set()

            def _after_rollback(_s: Any, _previous: Any) -> None:
                sync.info.pop("outbox_hooked", None)

            event.listen(sync, "after_commit", _after_commit, once=True)
            event.listen(sync, "after_soft_rollback", _after_rollback, once=True)

    def add(
        self,
        session: AsyncSession,
        data: Payload,
        *,
        subject: str,
        cause: Envelope | None = None,
        correlation_id: str | None = None,
        event_id: str | None = None,
        time: datetime | None = None,
        priority: int = 0,
    ) -> str:
        """Add an event in the caller's transaction; returns its event id.

        `cause` is the event being handled, if any: its id becomes the causation id and
        its correlation id is carried on. Higher `priority` rows are published first.
        """
        entry = for_model(type(data))
        ce_id = event_id or new_event_id()
        trace_headers = current_trace_headers()
        headers = build_headers(
            event_type=entry.topic,
            subject=subject,
            source_service=self.settings.service_name,
            dataschema=entry.dataschema,
            event_id=ce_id,
            time=time or datetime.now(UTC),
            correlation_id=correlation_id or (cause.correlation_id if cause else None),
            causation_id=cause.id if cause else None,
            traceparent=trace_headers.get("traceparent"),
            tracestate=trace_headers.get("tracestate"),
        )
        self.add_raw(
            session,
            topic=self.settings.topic(entry.topic),
            key=subject,
            headers=headers,
            payload=data.model_dump_json(),
            event_id=ce_id,
            priority=priority,
        )
        return ce_id

    def add_raw(
        self,
        session: AsyncSession,
        *,
        topic: str,
        key: str,
        headers: list[tuple[str, bytes]],
        payload: str,
        event_id: str | None = None,
        priority: int = 0,
    ) -> None:
        """Add an already-built message (dead letters, re-drives) in the caller's transaction."""
        event_id = event_id or new_event_id()
        stored, key_id = sealing.seal(self.cipher, payload, sealing.outbox_aad(event_id))
        session.add(
            OutboxRow(
                event_id=event_id,
                topic=topic,
                key=key,
                headers=headers_to_json(headers),
                payload=stored,
                key_id=key_id,
                created_at=datetime.now(UTC),
                status="pending",
                attempts=0,
                priority=priority,
            )
        )
        self._wake_after_commit(session)


async def claim_pending(session: AsyncSession, limit: int) -> Sequence[OutboxRow]:
    """The next rows to publish, locked for this relay, oldest first per key."""
    claim = select(OutboxRow).from_statement(_PG_CLAIM)
    return (await session.execute(claim, {"limit": limit})).scalars().all()


def make_producer(settings: ServiceSettings) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas; idempotent where the broker allows."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        client_id=f"{settings.service_name}-relay",
        **kafka_security.client_options(settings),
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=0,
        # In-flight batches wait out a short broker outage and then succeed in order; a
        # short timeout would fail an early batch while a later one of the same partition
        # gets through, and re-sending the early one would reorder or duplicate.
        request_timeout_ms=int(settings.outbox_publish_timeout_s * 1000),
        retry_backoff_ms=200,
    )


class OutboxRelay:
    """Publishes outbox rows to Kafka; one per process, several processes may share a DB."""

    def __init__(
        self,
        db: Database,
        settings: ServiceSettings,
        outbox: Outbox | None = None,
        producer: AIOKafkaProducer | None = None,
        cipher: Cipher | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.wakeup = outbox.wakeup if outbox else asyncio.Event()
        # Opens sealed payloads (the service's cipher; a separate relay process builds it).
        self.cipher = outbox.cipher if outbox else cipher
        self._producer = producer
        self._producer_started = False
        self._stopping = asyncio.Event()
        self._idle_wait_s = settings.outbox_poll_interval_s
        self._failures = 0
        self._last_purge = datetime.min.replace(tzinfo=UTC)
        self.published = 0
        # The cluster id of the broker that acknowledges (see servicekit.broker_loss).
        self.cluster_id: str | None = None
        self._identity = BrokerIdentity(settings)
        self._new_cluster_seen: tuple[str, datetime] | None = None
        self._last_identity_check = datetime.min.replace(tzinfo=UTC)
        # After a failed publish the broker may have restarted: ask who it is before
        # publishing again, so what it lost goes out before newer rows of its key.
        self._check_before_publish = True

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            self._producer = make_producer(self.settings)
        if not self._producer_started:
            await self._producer.start()
            self._producer_started = True
        return self._producer

    async def _reset_producer(self) -> None:
        # A producer whose broker vanished can hold stale metadata; start afresh next time.
        if self._producer is not None and self._producer_started:
            try:
                await self._producer.stop()
            except Exception as exc:
                log.debug("outbox.producer_stop_failed", error=type(exc).__name__)
        self._producer = None
        self._producer_started = False

    async def publish_batch(self) -> int:
        """Publish one batch of pending rows; returns how many were acknowledged."""
        producer = await self._ensure_producer()
        async with self.db.transaction() as session:
            rows = await claim_pending(session, self.settings.outbox_batch_size)
            if not rows:
                return 0
            futures: list[asyncio.Future[Any]] = []
            spans: list[trace.Span] = []
            t = tracer("servicekit.outbox")
            for row in rows:
                stored = headers_from_json(row.headers)
                span = t.start_span(
                    f"{row.topic} publish",
                    context=context_from_headers(stored),
                    kind=SpanKind.PRODUCER,
                    attributes={
                        "messaging.system": "kafka",
                        "messaging.operation.type": "publish",
                        "messaging.destination.name": row.topic,
                        "messaging.message.id": row.event_id,
                    },
                )
                spans.append(span)
                with trace.use_span(span, end_on_exit=False):
                    propagated = current_trace_headers()
                out_headers = [(k, v) for k, v in stored if k not in ("traceparent", "tracestate")]
                out_headers += [(k, v.encode()) for k, v in propagated.items()]
                futures.append(
                    await producer.send(
                        row.topic,
                        value=sealing.unseal(
                            self.cipher, row.payload, sealing.outbox_aad(row.event_id)
                        ).encode(),
                        key=row.key.encode(),
                        headers=out_headers,
                    )
                )
            results = await asyncio.gather(*futures, return_exceptions=True)
            failed_streams: set[tuple[str, str]] = set()
            sent_ids: list[int] = []
            stored_at: list[dict[str, Any]] = []
            now = datetime.now(UTC)
            first_error: BaseException | None = None
            for row, result, span in zip(rows, results, spans, strict=True):
                stream = (row.topic, row.key)
                if isinstance(result, BaseException) or stream in failed_streams:
                    # Later rows of a failed stream stay pending so they are re-sent after it.
                    failed_streams.add(stream)
                    row.attempts += 1
                    if isinstance(result, BaseException):
                        first_error = first_error or result
                        row.last_error = f"{type(result).__name__}: {result}"[:1000]
                        span.set_status(trace.StatusCode.ERROR, type(result).__name__)
                else:
                    sent_ids.append(row.id)
                    stored_at.append({"row_id": row.id, "p": result.partition, "o": result.offset})
                    OUTBOX_PUBLISHED.labels(self.settings.service_name, row.topic).inc()
                span.end()
            if sent_ids:
                await session.execute(
                    update(OutboxRow)
                    .where(OutboxRow.id.in_(sent_ids))
                    .values(status="sent", sent_at=now)
                )
                await self._record_offsets(session, stored_at)
        self.published += len(sent_ids)
        if first_error is not None:
            raise first_error
        return len(sent_ids)

    async def _record_offsets(self, session: AsyncSession, stored_at: list[dict[str, Any]]) -> None:
        """Store where the broker put each row, and which cluster acknowledged it."""
        table = cast("Table", OutboxRow.__table__)
        # Core executemany (one statement, many parameter sets), not the ORM's bulk update.
        await session.execute(
            update(table)
            .where(table.c.id == bindparam("row_id"))
            .values(
                kafka_partition=bindparam("p"),
                kafka_offset=bindparam("o"),
                broker_cluster=self.cluster_id,
            ),
            stored_at,
        )

    async def check_broker_loss(self, *, strict: bool = False) -> int:
        """Ask the broker which cluster it is; requeue what another cluster acknowledged.

        `strict`: raise when the broker cannot be asked (the relay then backs off and asks
        again before it publishes anything); otherwise the next check will ask again.
        """
        self._last_identity_check = datetime.now(UTC)
        try:
            cluster = await self._identity.cluster_id()
        except Exception as exc:
            if strict:
                raise
            log.debug("outbox.identity_failed", error=type(exc).__name__)
            return 0
        async with self.db.transaction() as session:
            requeued = await requeue_lost(session, cluster, service=self.settings.service_name)
        if requeued:
            self.wakeup.set()
        if self.cluster_id is not None and cluster != self.cluster_id:
            try:
                await self._wait_for_topics(cluster)
            except BrokerNotReady:
                self._check_before_publish = True
                if strict:
                    raise
                return requeued
        self.cluster_id = cluster
        self._new_cluster_seen = None
        return requeued

    async def _wait_for_topics(self, cluster: str) -> None:
        """Raise `BrokerNotReady` while topics of pending rows are missing on a new cluster.

        A broker that came back empty acknowledges writes to topics that do not exist yet
        and drops them when the topics are created (Tansu does): hold back until they exist,
        for a bounded time (a broker that creates topics on first use never gets them).
        """
        now = datetime.now(UTC)
        if self._new_cluster_seen is None or self._new_cluster_seen[0] != cluster:
            self._new_cluster_seen = (cluster, now)
        if (now - self._new_cluster_seen[1]).total_seconds() > _NEW_CLUSTER_TOPICS_WAIT_S:
            return
        async with self.db.sessions() as session:
            wanted = set(
                (
                    await session.execute(
                        select(OutboxRow.topic).where(OutboxRow.status == "pending").distinct()
                    )
                ).scalars()
            )
        if not wanted:
            return
        missing = wanted - set(await self._identity.topics())
        if missing:
            raise BrokerNotReady(f"{len(missing)} topic(s) not created yet on the new broker")

    def _identity_due(self) -> bool:
        interval = self.settings.outbox_loss_check_interval_s
        elapsed = (datetime.now(UTC) - self._last_identity_check).total_seconds()
        return interval > 0 and elapsed >= interval

    async def backlog(self) -> int:
        """How many rows wait to be published."""
        return (await self.backlog_and_oldest())[0]

    async def backlog_and_oldest(self) -> tuple[int, datetime | None]:
        """How many rows wait to be published, and when the oldest of them was written."""
        async with self.db.sessions() as session:
            row = (
                await session.execute(
                    select(func.count(), func.min(OutboxRow.created_at)).where(
                        OutboxRow.status == "pending"
                    )
                )
            ).one()
        return int(row[0] or 0), row[1]

    async def refresh_gauges(self, now: datetime | None = None) -> None:
        """Set `outbox_backlog` and `outbox_oldest_pending_seconds` from the table."""
        count, oldest = await self.backlog_and_oldest()
        now = now or datetime.now(UTC)
        service = self.settings.service_name
        OUTBOX_BACKLOG.labels(service).set(count)
        OUTBOX_OLDEST_AGE.labels(service).set(
            max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        )

    async def _gauge_loop(self) -> None:
        # Its own loop, not the publishing one: during a broker outage that one sits in a
        # send for up to the publish timeout, which is exactly when the backlog matters.
        while not self._stopping.is_set():
            try:
                await self.refresh_gauges()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: the next round tries again
                log.debug("outbox.gauges_failed", error=type(exc).__name__)
            await self._sleep(self.settings.metrics_interval_s)

    async def purge(self, now: datetime | None = None) -> int:
        """Delete sent rows older than the retention period; returns how many."""
        cutoff = (now or datetime.now(UTC)) - timedelta(hours=self.settings.outbox_retention_hours)
        async with self.db.transaction() as session:
            result = await session.execute(
                delete(OutboxRow).where(OutboxRow.status == "sent", OutboxRow.sent_at < cutoff)
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def purge_inbox(self, now: datetime | None = None) -> int:
        """Forget handled events older than the inbox retention; returns how many rows.

        The inbox only has to outlive every way an event can come again (redelivery, a
        replay within the outbox retention), not the service: without this it grows by a
        row per event for ever.
        """
        cutoff = (now or datetime.now(UTC)) - timedelta(hours=self.settings.inbox_retention_hours)
        async with self.db.transaction() as session:
            result = await session.execute(delete(InboxRow).where(InboxRow.handled_at < cutoff))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _backoff(self) -> float:
        base = min(5.0, 0.1 * 2 ** min(self._failures, 6))
        return float(base / 2 + random.uniform(0, base / 2))

    async def run(self) -> None:
        """Publish until `stop()`; never gives up while the broker or database is away."""
        log.info("outbox.relay_started")
        gauges = asyncio.create_task(self._gauge_loop(), name="outbox-gauges")
        try:
            await self._publish_loop()
        finally:
            gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gauges
        await self._reset_producer()
        await self._identity.close()
        log.info("outbox.relay_stopped")

    async def _publish_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                if self._check_before_publish and self.settings.outbox_loss_check_interval_s:
                    await self.check_broker_loss(strict=True)
                    self._check_before_publish = False
                # Cleared before the claim, never after: a commit whose wake-up comes while
                # the claim runs (too early to see its row) leaves it set, so the relay looks
                # again at once instead of after its poll interval (lost: 200 ms on the
                # way to the patient, a few events in a hundred).
                self.wakeup.clear()
                published = await self.publish_batch()
                self._failures = 0
                await self._maybe_purge()
                if self._identity_due():
                    await self.check_broker_loss()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures += 1
                self._check_before_publish = True
                OUTBOX_PUBLISH_ERRORS.labels(self.settings.service_name).inc()
                log.warning(
                    "outbox.publish_failed", error=type(exc).__name__, failures=self._failures
                )
                if self._failures % 3 == 0:
                    await self._reset_producer()
                await self._sleep(self._backoff())
                continue
            if published == 0:
                woken = await self._wait_for_work(self._idle_wait_s)
                self._idle_wait_s = next_idle_wait(
                    self._idle_wait_s,
                    woken=woken,
                    base_s=self.settings.outbox_poll_interval_s,
                    max_s=self.settings.outbox_idle_poll_max_s,
                )
            else:
                self._idle_wait_s = self.settings.outbox_poll_interval_s

    async def _maybe_purge(self) -> None:
        now = datetime.now(UTC)
        if now - self._last_purge > timedelta(minutes=10):
            self._last_purge = now
            purged = await self.purge(now)
            if purged:
                log.info("outbox.purged", rows=purged)
            forgotten = await self.purge_inbox(now)
            if forgotten:
                log.info("inbox.purged", rows=forgotten)
            answers = await idempotency.purge(
                self.db, timedelta(hours=self.settings.idempotency_retention_hours), now
            )
            if answers:
                log.info("idempotency.purged", rows=answers)

    async def _wait_for_work(self, timeout_s: float) -> bool:
        """Wait for a wake-up, a stop or `timeout_s`; whether something woke it."""
        waiter = asyncio.ensure_future(self.wakeup.wait())
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, stopper}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
            stopper.cancel()
        return bool(done)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return

    def stop(self) -> None:
        """Ask `run()` to finish its current batch and return."""
        self._stopping.set()


def next_idle_wait(current_s: float, *, woken: bool, base_s: float, max_s: float) -> float:
    """How long an idle relay waits before its next look: doubling while polls find
    nothing (an idle service's relay queried five times a second, a few percent of a core
    per service on a two-core machine), back to `base_s` once woken. Its own commits wake
    it at once whatever the wait; the poll is for rows another process left (a replica
    that stopped between its commit and its publish)."""
    if woken:
        return base_s
    return max(base_s, min(current_s * 2, max_s))


async def replay(db: Database, since: datetime, topic: str | None = None) -> int:
    """Mark sent rows from `since` on as pending again, so the relay re-publishes them."""
    async with db.transaction() as session:
        stmt = (
            update(OutboxRow)
            .where(OutboxRow.status == "sent", OutboxRow.sent_at >= since)
            .values(status="pending", sent_at=None)
        )
        if topic:
            stmt = stmt.where(OutboxRow.topic == topic)
        result = await session.execute(stmt)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
