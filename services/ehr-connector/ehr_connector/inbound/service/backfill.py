"""Back-fill: a linked patient's history, imported as `record.imported` batches.

A back-fill pages through one search per imported type (`<Type>?patient=<id>&_sort=_id`,
following the Bundles' `next` links). Sorting by id keeps each resource at its place while
other resources are updated during the import (a sort by date would move an updated
resource past the cursor and shift another one out of reach); paging links can still show a
resource twice when one is inserted before the cursor, so each job remembers what it has
published (`inbound_backfill_items`) and never publishes a resource twice.

Each page is one transaction: its batch goes into the outbox, at a priority below live
notifications, together with the cursor (type, next link) and the counts. A crash loses at
most the page in flight, which the next holder of the job's lease fetches again. Jobs are
leased, so several replicas share them and a dead worker's job is taken over once its lease
expires. The last batch of a job is flagged `last_batch` (it may be empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.message import MessageSyncedV1
from contracts.record import ImportedEntry, RecordImportedV1
from ehr_connector.ehr.errors import EhrError, EhrUnavailable
from ehr_connector.ehr.port import EhrPort, SearchPage
from ehr_connector.inbound import store
from ehr_connector.inbound.domain.mapping.common import Rejected
from ehr_connector.inbound.domain.mapping.history import IMPORTED_TYPES, map_history
from ehr_connector.inbound.domain.mapping.message import map_history_message
from ehr_connector.inbound.metrics import (
    BACKFILL_BATCHES,
    BACKFILL_ENTRIES,
    BACKFILL_FAILURES,
    BACKFILL_YIELDED,
    BACKFILLS,
)
from ehr_connector.inbound.service.appointment_import import import_appointments
from ehr_connector.inbound.service.pacing import LiveTraffic, pause_after_page
from ehr_connector.inbound.tables import Backfill
from ehr_connector.settings import Settings
from servicekit.db import Database
from servicekit.logging import get_logger
from servicekit.outbox import Outbox

log = get_logger(__name__)

# The chart's types go to records as `record.imported`; then the patient's conversations
# (every Communication about them) go to messaging as `message.synced`, one per message.
MESSAGES = "Communication"
BACKFILL_TYPES: tuple[str, ...] = (*IMPORTED_TYPES, MESSAGES)


class BackfillConflict(Exception):
    """A back-fill of this patient is already running."""


@dataclass(frozen=True)
class Progress:
    """A back-fill's progress, as operators see it."""

    backfill_id: str
    patient_id: str
    state: str
    trigger: str
    done: int
    total: int | None
    entries_published: int
    batches_published: int
    current_type: str | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def progress_of(job: Backfill) -> Progress:
    """The operator's view of a back-fill row."""
    return Progress(
        backfill_id=job.backfill_id,
        patient_id=job.patient_id,
        state=job.state,
        trigger=job.trigger,
        done=job.resources_seen,
        total=job.total,
        entries_published=job.entries_published,
        batches_published=job.batches_published,
        current_type=(
            BACKFILL_TYPES[job.type_index] if job.type_index < len(BACKFILL_TYPES) else None
        ),
        last_error=job.last_error,
        created_at=job.created_at,
        updated_at=job.updated_at,
        finished_at=job.finished_at,
    )


def new_backfill(patient_id: str, patient_fhir_id: str, trigger: str, now: datetime) -> Backfill:
    """A pending back-fill job (the caller adds it in its transaction)."""
    return Backfill(
        backfill_id=f"bf-{uuid.uuid4().hex}",
        patient_id=patient_id,
        patient_fhir_id=patient_fhir_id,
        state="pending",
        trigger=trigger,
        type_index=0,
        next_url=None,
        total=None,
        resources_seen=0,
        entries_published=0,
        batches_published=0,
        created_at=now,
        updated_at=now,
    )


class BackfillWorker:
    """Runs back-fill jobs, one at a time per process, page by page."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        outbox: Outbox,
        ehr: EhrPort,
        live: LiveTraffic | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self.ehr = ehr
        self.live = live or LiveTraffic()
        self.owner = f"{socket.gethostname()[:30]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.wakeup = asyncio.Event()
        self._stopping = asyncio.Event()

    # -- starting jobs --------------------------------------------------------------------

    async def start_backfill(self, patient_id: str, patient_fhir_id: str, trigger: str) -> Backfill:
        """Create a back-fill (ops); `BackfillConflict` when one is already under way."""
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            active = await store.active_backfill(session, patient_id)
            if active is not None:
                raise BackfillConflict(active.backfill_id)
            job = new_backfill(patient_id, patient_fhir_id, trigger, now)
            session.add(job)
        self.wakeup.set()
        return job

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run jobs until stopped."""
        while not self._stopping.is_set():
            try:
                job_id = await self._claim()
                if job_id is None:
                    await self._idle()
                    continue
                await self._run_job(job_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("inbound.backfill_loop_error", error=type(exc).__name__)
                await self._sleep(self.settings.backfill_retry_s)

    def stop(self) -> None:
        """Ask the loop to stop after the current page."""
        self._stopping.set()
        self.wakeup.set()

    async def _idle(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), self.settings.backfill_poll_interval_s)
        self.wakeup.clear()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _claim(self) -> str | None:
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            job = await store.claim_backfill(session, self.owner, now, self._lease())
            await self._refresh_gauges(session)
            return job.backfill_id if job is not None else None

    def _lease(self) -> timedelta:
        return timedelta(seconds=self.settings.backfill_lease_s)

    async def _refresh_gauges(self, session: AsyncSession) -> None:
        counts = await store.count_backfills(session)
        for state in store.BACKFILL_STATES:
            BACKFILLS.labels(state).set(counts.get(state, 0))

    async def _run_job(self, backfill_id: str) -> None:
        failures = 0
        appointments_imported = False
        while not self._stopping.is_set():
            async with self.db.sessions() as session:
                job = await store.get_backfill(session, backfill_id)
                if job is None or job.lease_owner != self.owner or job.state != "running":
                    return
                session.expunge(job)
            try:
                if not appointments_imported:
                    # Appointments go to scheduling, not to the records batches: see
                    # `appointment_import` (repeating it after a take-over publishes nothing new).
                    await import_appointments(
                        self.settings,
                        self.db,
                        self.outbox,
                        self.ehr,
                        job.patient_id,
                        job.patient_fhir_id,
                    )
                    appointments_imported = True
                if job.total is None:
                    await self._count(job)
                began = time.monotonic()
                finished = await self._page(job)
                took_s = time.monotonic() - began
                failures = 0
            except EhrUnavailable as exc:
                failures += 1
                BACKFILL_FAILURES.inc()
                await self._note_error(backfill_id, f"EHR unavailable: {type(exc).__name__}")
                await self._sleep(min(60.0, self.settings.backfill_retry_s * 2 ** min(failures, 5)))
                continue
            except EhrError as exc:
                failures += 1
                BACKFILL_FAILURES.inc()
                if failures >= self.settings.backfill_max_page_failures:
                    await self._fail(backfill_id, f"EHR refused a page: HTTP {exc.status}")
                    return
                await self._note_error(backfill_id, f"EHR error: HTTP {exc.status}")
                await self._sleep(self.settings.backfill_retry_s)
                continue
            if finished:
                return
            await self._rest(took_s)

    async def _rest(self, took_s: float) -> None:
        """Between pages: the configured interval, longer while live notifications arrive
        (see `pacing`)."""
        interval = self.settings.backfill_page_interval_s
        pause = pause_after_page(
            took_s,
            self.settings.backfill_share_under_live,
            interval,
            self.live.recent(self.settings.backfill_live_window_s),
        )
        if pause > interval:
            BACKFILL_YIELDED.inc(pause - interval)
        if pause > 0:
            await self._sleep(pause)

    async def _count(self, job: Backfill) -> None:
        """Total resources to look at, from one `_summary=count` search per type."""
        total = 0
        for resource_type in BACKFILL_TYPES:
            page = await self.ehr.search(
                resource_type, [("patient", job.patient_fhir_id), ("_summary", "count")]
            )
            total += page.total or 0
        async with self.db.transaction() as session:
            row = await store.lock_backfill(session, job.backfill_id, self.owner)
            if row is not None and row.total is None:
                row.total = total
        job.total = total

    async def _fetch(self, job: Backfill) -> SearchPage:
        if job.next_url:
            page = await self.ehr.next_page(SearchPage(bundle={}, next_url=job.next_url))
            assert page is not None
            return page
        resource_type = BACKFILL_TYPES[job.type_index]
        return await self.ehr.search(
            resource_type,
            [("patient", job.patient_fhir_id), ("_sort", "_id")],
            count=self.settings.backfill_page_size,
        )

    async def _page(self, job: Backfill) -> bool:
        """Import one page; True when the job is finished."""
        if job.type_index >= len(BACKFILL_TYPES):
            return await self._store_page(job, None, [], 0)
        resource_type = BACKFILL_TYPES[job.type_index]
        page = await self._fetch(job)
        matches = [r for r in page.matches if r.get("resourceType") == resource_type]
        entries: list[ImportedEntry] = []
        messages: list[MessageSyncedV1] = []
        rejected = 0
        for resource in matches:
            mapped = (
                map_history_message(resource, job.patient_id)
                if resource_type == MESSAGES
                else map_history(resource)
            )
            if isinstance(mapped, ImportedEntry):
                entries.append(mapped)
            elif isinstance(mapped, MessageSyncedV1):
                messages.append(mapped)
            elif isinstance(mapped, Rejected):
                rejected += 1
        if rejected:
            log.info(
                "inbound.backfill_entries_rejected",
                backfill_id=job.backfill_id,
                resource_type=resource_type,
                count=rejected,
            )
        return await self._store_page(job, page, entries, len(matches), messages)

    async def _store_page(
        self,
        job: Backfill,
        page: SearchPage | None,
        entries: list[ImportedEntry],
        seen: int,
        messages: list[MessageSyncedV1] | None = None,
    ) -> bool:
        """Publish a page's new entries (one batch) and messages and move the cursor, in
        one transaction under the job's lease; True when the job is done (or no longer
        ours), False when its cursor moved under us."""
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            row = await store.lock_backfill(session, job.backfill_id, self.owner)
            if row is None or row.state != "running":
                return True  # our lease was taken over: the new holder carries on
            if row.type_index != job.type_index or row.next_url != job.next_url:
                return False  # the cursor moved under us: look again
            keys = [(e.resource_type, e.fhir_id) for e in entries]
            keys += [(MESSAGES, m.communication_fhir_id) for m in messages or []]
            already = await store.items_published(session, row.backfill_id, keys)
            fresh = _fresh_entries(entries, already)
            await self._publish_messages(session, row, messages or [], already)
            next_url, type_index, last = _next_cursor(row, page)
            if fresh or last:
                await self._publish_batch(session, row, fresh, last=last, now=now)
            row.resources_seen += seen
            self._advance(row, next_url, type_index, last=last, now=now)
        _report_page(job, row, len(fresh), last=last)
        return last

    async def _publish_messages(
        self,
        session: AsyncSession,
        row: Backfill,
        messages: list[MessageSyncedV1],
        already: set[tuple[str, str]],
    ) -> None:
        """Publish the page's messages not published yet, each on its own, and remember them."""
        new_messages: dict[tuple[str, str], MessageSyncedV1] = {}
        for message in messages:
            key = (MESSAGES, message.communication_fhir_id)
            if key not in already and key not in new_messages:
                new_messages[key] = message
                self.outbox.add(
                    session,
                    message,
                    subject=row.patient_id,
                    priority=self.settings.backfill_priority,
                )
        if new_messages:
            await store.add_items(session, row.backfill_id, new_messages.keys())

    async def _publish_batch(
        self,
        session: AsyncSession,
        row: Backfill,
        fresh: dict[tuple[str, str], ImportedEntry],
        *,
        last: bool,
        now: datetime,
    ) -> None:
        """Publish the page's new entries as the job's next `record.imported` batch."""
        batch = RecordImportedV1(
            patient_id=row.patient_id,
            backfill_id=row.backfill_id,
            batch_number=row.batches_published + 1,
            last_batch=last,
            entries=list(fresh.values()),
            imported_at=now,
        )
        self.outbox.add(
            session,
            batch,
            subject=row.patient_id,
            priority=self.settings.backfill_priority,
        )
        await store.add_items(session, row.backfill_id, fresh.keys())
        row.batches_published += 1
        row.entries_published += len(fresh)

    def _advance(
        self, row: Backfill, next_url: str | None, type_index: int, *, last: bool, now: datetime
    ) -> None:
        """Move the job's cursor and renew its lease; the last page ends the job."""
        row.type_index = min(type_index, len(BACKFILL_TYPES))
        row.next_url = next_url
        row.updated_at = now
        row.last_error = None
        row.lease_until = now + self._lease()
        if last:
            row.state = "done"
            row.finished_at = now
            row.lease_owner = None
            row.lease_until = None

    async def _note_error(self, backfill_id: str, error: str) -> None:
        async with self.db.transaction() as session:
            row = await store.lock_backfill(session, backfill_id, self.owner)
            if row is not None:
                row.last_error = error
                row.updated_at = datetime.now(UTC)
                row.lease_until = datetime.now(UTC) + self._lease()
        log.warning("inbound.backfill_page_failed", backfill_id=backfill_id, error=error)

    async def _fail(self, backfill_id: str, error: str) -> None:
        async with self.db.transaction() as session:
            row = await store.lock_backfill(session, backfill_id, self.owner)
            if row is not None:
                row.state = "failed"
                row.last_error = error
                row.updated_at = row.finished_at = datetime.now(UTC)
                row.lease_owner = None
                row.lease_until = None
        log.error("inbound.backfill_failed", backfill_id=backfill_id, error=error)


def _fresh_entries(
    entries: list[ImportedEntry], already: set[tuple[str, str]]
) -> dict[tuple[str, str], ImportedEntry]:
    """The page's entries not published yet, the first of each resource."""
    fresh: dict[tuple[str, str], ImportedEntry] = {}
    for entry in entries:
        key = (entry.resource_type, entry.fhir_id)
        if key not in already and key not in fresh:
            fresh[key] = entry
    return fresh


def _next_cursor(row: Backfill, page: SearchPage | None) -> tuple[str | None, int, bool]:
    """Where the job goes after this page: (next page URL, type index, whether this page
    was the last of the last type)."""
    next_url = page.next_url if page is not None else None
    if next_url is not None and next_url == row.next_url:
        # A server whose next link points at the page itself would loop forever.
        log.warning("inbound.backfill_paging_loop", backfill_id=row.backfill_id)
        next_url = None
    type_index = row.type_index if next_url else row.type_index + 1
    last = type_index >= len(BACKFILL_TYPES) and next_url is None
    return next_url, type_index, last


def _report_page(job: Backfill, row: Backfill, fresh: int, *, last: bool) -> None:
    """Count a committed page's batch and entries; log the job's end (ids and counts)."""
    if fresh or last:
        BACKFILL_BATCHES.inc()
        BACKFILL_ENTRIES.inc(fresh)
    if last:
        log.info(
            "inbound.backfill_done",
            backfill_id=job.backfill_id,
            patient_id=job.patient_id,
            entries=row.entries_published,
            batches=row.batches_published,
        )
