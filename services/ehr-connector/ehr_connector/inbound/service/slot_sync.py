"""Slot sync: the EHR's bookable slots for the coming weeks, published as `slot.updated`.

Subscriptions report slot *changes*; a portal that starts (or a new scheduling database)
also needs the slots that have not changed since. On start-up and then periodically the
connector pages through `Slot?start=ge<now>&start=lt<now+N days>` and publishes every slot
version it has not published before (the same version record as live notifications, so a
slot is never announced twice), at back-fill priority so live traffic goes first.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from contracts.appointment import SlotUpdatedV1
from ehr_connector.ehr.errors import EhrError
from ehr_connector.ehr.port import EhrPort, FhirJson
from ehr_connector.inbound import store
from ehr_connector.inbound.domain.mapping import MappingContext, slot_subject
from ehr_connector.inbound.domain.mapping.appointment import map_slot
from ehr_connector.settings import Settings
from servicekit.db import Database
from servicekit.logging import get_logger
from servicekit.outbox import Outbox
from servicekit.telemetry import tracer

log = get_logger(__name__)
OUTCOME = "published"


class SlotSync:
    """Publishes the EHR's upcoming slots that the portal has not been told about."""

    def __init__(self, settings: Settings, db: Database, outbox: Outbox, ehr: EhrPort) -> None:
        self.settings = settings
        self.db = db
        self.outbox = outbox
        self.ehr = ehr
        self._stopping = asyncio.Event()

    async def sync_once(self, now: datetime | None = None) -> int:
        """One pass over the window; returns how many slot versions were published."""
        start = now or datetime.now(UTC)
        until = start + timedelta(days=self.settings.slot_sync_days)
        schedules = {
            f"Schedule/{s['id']}": s
            async for page in self.ehr.pages("Schedule", {}, count=100)
            for s in page.matches
            if isinstance(s.get("id"), str)
        }
        params = [("start", f"ge{start.isoformat()}"), ("start", f"lt{until.isoformat()}")]
        published = 0
        async for page in self.ehr.pages("Slot", params, count=self.settings.slot_sync_page_size):
            published += await self._publish(page.matches, schedules)
        return published

    async def _publish(self, slots: list[FhirJson], schedules: dict[str, FhirJson]) -> int:
        events: list[SlotUpdatedV1] = []
        for slot in slots:
            mapped = map_slot(slot, MappingContext(patient_id="", related=schedules))
            if isinstance(mapped, SlotUpdatedV1):
                events.append(mapped)
        if not events:
            return 0
        now = datetime.now(UTC)
        keys = [("Slot", e.slot_fhir_id, e.source.version_id) for e in events]
        async with self.db.transaction() as session:
            seen = await store.versions_seen(session, keys)
            fresh = [e for e in events if ("Slot", e.slot_fhir_id, e.source.version_id) not in seen]
            if not fresh:
                return 0
            # One trace per page of new slots: its events are children of this span, rather
            # than one root trace per slot drowning the patients' journeys.
            with tracer("ehr_connector.slot_sync").start_as_current_span(
                "slot sync", attributes={"portal.slots": len(fresh)}
            ):
                for event in fresh:
                    await store.add_version(
                        session, "Slot", event.slot_fhir_id, event.source.version_id, OUTCOME, now
                    )
                    self.outbox.add(
                        session,
                        event,
                        subject=slot_subject(event.schedule_fhir_id),
                        priority=self.settings.backfill_priority,
                    )
        return len(fresh)

    async def run(self) -> None:
        """Sync now and then every `slot_sync_interval_s`, until `stop()`."""
        while not self._stopping.is_set():
            try:
                count = await self.sync_once()
                log.info("inbound.slot_sync_done", published=count)
                wait = self.settings.slot_sync_interval_s
            except (EhrError, OSError) as exc:
                log.warning("inbound.slot_sync_failed", error=type(exc).__name__)
                wait = min(60.0, self.settings.slot_sync_interval_s)
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=wait)
            except TimeoutError:
                continue

    def stop(self) -> None:
        """End `run()` after its current pass."""
        self._stopping.set()
