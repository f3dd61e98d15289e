"""Gap recovery and heartbeat monitoring.

A gap is an event number the EHR assigned that we have no outcome for: a jump in the
numbers of a notification, or a heartbeat (or `$status`) whose events-since-start is ahead
of what we processed. Recovery waits a short grace period (a reordered notification usually
fills the gap by itself), then asks `$events` for the missing range and processes what it
returns like a notification. Numbers `$events` cannot return (pruned, or the operation is
not supported) are covered by a `_lastUpdated` search of the topic's resource type since
the last event we saw, after which they count as processed. Finally a Subscription the EHR
put in `error` is requested again.

The monitor notices silence: no notification within `inbound_heartbeat_missed_factor`
heartbeat periods raises a metric and a readiness warning and asks the EHR for `$status`,
which in turn may start a recovery or a re-activation.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from ehr_connector.ehr.errors import EhrRejected, EhrUnavailable
from ehr_connector.ehr.port import EhrPort
from ehr_connector.inbound import store
from ehr_connector.inbound.domain.fhir_values import Resource
from ehr_connector.inbound.domain.notifications import MalformedNotification, parse_notification
from ehr_connector.inbound.domain.rules import heartbeat_overdue
from ehr_connector.inbound.metrics import (
    EVENTS_RECOVERED,
    GAPS_DETECTED,
    GAPS_RECOVERED,
    HEARTBEAT_MISSED,
    HEARTBEAT_MISSED_TOTAL,
)
from ehr_connector.inbound.service.health import ProcessingHealth, failure_reason
from ehr_connector.inbound.service.processor import Processor
from ehr_connector.inbound.service.subscriptions import SubscriptionManager
from ehr_connector.inbound.tables import InboundSubscription
from ehr_connector.settings import Settings
from servicekit.db import Database
from servicekit.logging import get_logger

log = get_logger(__name__)

# `$events` answers at most this many events per call (the IG leaves it to the server).
EVENTS_PAGE = 500
SEARCH_LIMIT = 10_000


class Recovery:
    """Recovers missing events of each Subscription; one recovery at a time per Subscription."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        ehr: EhrPort,
        processor: Processor,
        manager: SubscriptionManager,
        health: ProcessingHealth | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.ehr = ehr
        self.processor = processor
        self.manager = manager
        self.health = health or ProcessingHealth()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._stopping = False

    # -- scheduling -----------------------------------------------------------------------

    def schedule(self, subscription_id: str, *, grace: bool = True) -> None:
        """Recover `subscription_id` soon (after the grace period); coalesces requests."""
        if self._stopping:
            return
        task = self._tasks.get(subscription_id)
        if task is not None and not task.done():
            self._again.add(subscription_id)
            return
        self._tasks[subscription_id] = asyncio.create_task(
            self._run(subscription_id, grace), name=f"inbound-recovery-{subscription_id}"
        )

    def schedule_search(self, subscription_id: str) -> None:
        """A classic Subscription said "something changed": search its type by
        `_lastUpdated` soon; pings arriving meanwhile coalesce into one more search."""
        if self._stopping:
            return
        key = "search:" + subscription_id
        task = self._tasks.get(key)
        if task is not None and not task.done():
            self._again.add(key)
            return
        self._tasks[key] = asyncio.create_task(
            self._search_run(subscription_id, key), name=f"inbound-search-{subscription_id}"
        )

    async def _search_run(self, subscription_id: str, key: str) -> None:
        while True:
            self._again.discard(key)
            row = await self._row(subscription_id)
            if row is None:
                return
            try:
                await self._from_search(row, row.highest_event_number)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The periodic reconciliation searches again later.
                log.warning(
                    "inbound.search_failed",
                    subscription_id=subscription_id,
                    error=type(exc).__name__,
                )
                return
            if key not in self._again:
                return

    async def _run(self, subscription_id: str, grace: bool) -> None:
        if grace:
            await asyncio.sleep(self.settings.inbound_gap_grace_s)
        while True:
            self._again.discard(subscription_id)
            try:
                await self.recover(subscription_id)
            except asyncio.CancelledError:
                raise
            except EhrUnavailable as exc:
                # The monitor (or the next notification) tries again once the EHR is back;
                # the EHR's own readiness check reports the outage.
                log.warning(
                    "inbound.recovery_deferred",
                    subscription_id=subscription_id,
                    error=type(exc).__name__,
                )
                return
            except Exception as exc:
                self.health.failed(subscription_id, failure_reason(exc))
                log.error(
                    "inbound.recovery_failed",
                    subscription_id=subscription_id,
                    error=type(exc).__name__,
                )
                return
            self.health.processed(subscription_id)
            if subscription_id not in self._again:
                return

    async def stop(self) -> None:
        """Cancel running recoveries (their work is transactional: nothing half-done)."""
        self._stopping = True
        for task in list(self._tasks.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    # -- recovering -----------------------------------------------------------------------

    async def _row(self, subscription_id: str) -> InboundSubscription | None:
        async with self.db.sessions() as session:
            row = await store.subscription_by_id(session, subscription_id)
            if row is not None:
                session.expunge(row)
            return row

    async def _missing(self, subscription_id: str) -> tuple[InboundSubscription, list[int]] | None:
        async with self.db.sessions() as session:
            row = await store.subscription_by_id(session, subscription_id)
            if row is None:
                return None
            target = max(row.highest_event_number, row.events_since_start)
            missing = await store.missing_numbers(session, row, target, limit=EVENTS_PAGE)
            session.expunge(row)
            return row, missing

    async def recover(self, subscription_id: str) -> int:
        """Process every missing event of a Subscription; returns how many were recovered."""
        recovered = 0
        detected = False
        method = "events"
        while True:
            found = await self._missing(subscription_id)
            if found is None:
                return recovered
            row, missing = found
            if not missing:
                break
            if not detected:
                detected = True
                GAPS_DETECTED.labels(row.topic).inc()
                log.info(
                    "inbound.gap_detected",
                    subscription_id=subscription_id,
                    first=missing[0],
                    last=missing[-1],
                    count=len(missing),
                )
            got = None
            if (await self.manager.profile()).has_events:
                got = await self._from_events(row, missing)
            if got is None:
                method = "search"
                got = await self._from_search(row, max(missing))
            recovered += got
        if detected:
            GAPS_RECOVERED.labels(row.topic, method).inc()
            EVENTS_RECOVERED.labels(row.topic).inc(recovered)
            log.info(
                "inbound.gap_recovered",
                subscription_id=subscription_id,
                method=method,
                events=recovered,
            )
        await self._reactivate_if_needed(row)
        return recovered

    async def _from_events(self, row: InboundSubscription, missing: list[int]) -> int | None:
        """Missing events via `$events`; None when `$events` cannot help (use the search)."""
        content = "full-resource" if row.payload == "full-resource" else "id-only"
        try:
            bundle = await self.ehr.subscription_events(
                row.subscription_id, since=missing[0], until=missing[-1], content=content
            )
            events = parse_notification(bundle).events
        except (EhrRejected, MalformedNotification) as exc:
            log.warning(
                "inbound.events_operation_failed",
                subscription_id=row.subscription_id,
                error=type(exc).__name__,
            )
            return None
        wanted = set(missing)
        usable = [e for e in events if e.number in wanted]
        if not usable:
            return None
        await self.processor.process_events(row.subscription_id, usable, live=False)
        if len(usable) < len(wanted) and max(wanted) > max(e.number for e in usable):
            return len(usable)
        absent = wanted - {e.number for e in usable}
        if absent:
            # Pruned by the EHR before we asked: the search covers them.
            return len(usable) + await self._from_search(row, max(absent))
        return len(usable)

    async def _from_search(self, row: InboundSubscription, close_through: int) -> int:
        """Current versions changed since the last event we saw; then close the gap.

        The search looks back a margin before the last event (clock skew, events in the
        same instant) but never before the Subscription existed: older changes are history,
        which is the back-fill's job, not missed events.
        """
        margin = timedelta(seconds=self.settings.inbound_search_margin_s)
        since = max((row.last_event_at or row.created_at) - margin, row.created_at)
        params = [
            ("_lastUpdated", f"ge{since.astimezone(UTC).isoformat()}"),
            ("_sort", "_lastUpdated"),
        ]
        resources: list[Resource] = []
        async for page in self.ehr.pages(row.resource_type, params, count=100):
            resources += [r for r in page.matches if r.get("resourceType") == row.resource_type]
            if len(resources) >= SEARCH_LIMIT:
                log.warning(
                    "inbound.search_recovery_truncated", subscription_id=row.subscription_id
                )
                break
        await self.processor.process_resources(row.subscription_id, resources, close_through)
        return len(resources)

    async def reconcile_all(self) -> int:
        """Search each Subscription's resource type for changes since its last event.

        The periodic check for an EHR that sends no heartbeats (so a lost notification at
        the end of a stream, which no later event number reveals, is still found). Versions
        already processed are skipped by the processor, so repeating it is harmless.
        """
        async with self.db.sessions() as session:
            rows = await store.subscriptions(session)
            for row in rows:
                session.expunge(row)
        found = 0
        for row in rows:
            try:
                found += await self._from_search(row, row.highest_event_number)
            except EhrUnavailable as exc:
                log.warning(
                    "inbound.reconcile_deferred",
                    subscription_id=row.subscription_id,
                    error=type(exc).__name__,
                )
        return found

    async def _reactivate_if_needed(self, row: InboundSubscription) -> None:
        status = await self.manager.status(row.subscription_id)
        if status is None:
            return
        if status.status in ("error", "off"):
            await self.manager.reactivate(row.subscription_id)

    # -- heartbeat monitor ----------------------------------------------------------------

    async def check_heartbeats(
        self, since: datetime, now: datetime | None = None
    ) -> list[InboundSubscription]:
        """Mark (metric, log, row) the Subscriptions that missed their heartbeats; returns
        them. No EHR call: `after_silence` is what asks the EHR."""
        now = now or datetime.now(UTC)
        async with self.db.sessions() as session:
            rows = await store.subscriptions(session)
            for row in rows:
                session.expunge(row)
        missing: list[InboundSubscription] = []
        factor = self.settings.inbound_heartbeat_missed_factor
        for row in rows:
            if not heartbeat_overdue(
                row.last_notification_at, since, row.heartbeat_period_s, factor, now
            ):
                HEARTBEAT_MISSED.labels(row.topic).set(0)
                continue
            missing.append(row)
            HEARTBEAT_MISSED.labels(row.topic).set(1)
            if row.heartbeat_missed_since is None:
                HEARTBEAT_MISSED_TOTAL.labels(row.topic).inc()
                log.warning(
                    "inbound.heartbeat_missed",
                    subscription_id=row.subscription_id,
                    topic=row.topic,
                    period_s=row.heartbeat_period_s,
                )
                await self._mark_missed(row.subscription_id, now)
        return missing

    async def _mark_missed(self, subscription_id: str, now: datetime) -> None:
        async with self.db.transaction() as session:
            row = await store.subscription_by_id(session, subscription_id, lock=True)
            if row is not None and row.heartbeat_missed_since is None:
                row.heartbeat_missed_since = now

    async def after_silence(self, row: InboundSubscription) -> None:
        """Ask the EHR about a silent Subscription: re-create, re-activate or recover it."""
        try:
            status = await self.manager.status(row.subscription_id)
        except EhrUnavailable:
            return
        if status is None:
            # The EHR no longer has it: ensure creates a new one.
            await self.manager.ensure()
            return
        if status.status in ("error", "off"):
            await self.manager.reactivate(row.subscription_id)
        if (status.events_since_start or 0) > row.highest_event_number:
            self.schedule(row.subscription_id, grace=False)
