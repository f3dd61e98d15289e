"""The synthetic canary: the whole inbound path, measured end to end every few minutes.

Each run writes a final glucose result for the canary patient into the EHR (an Observation
and the DiagnosticReport over it, with the connector's own credentials), then waits until
the `lab.resulted` the Subscription path produced for it has been published by the outbox
relay. The latency from the report's `meta.lastUpdated` (the EHR's write) to the relay's
`sent_at` goes to the `canary_latency_seconds` histogram; success sets
`canary_last_success_timestamp_seconds`. A run that does not complete in time counts as a
failure (`canary_failures_total`).

The run is recorded before the write, so the notification (which may arrive before the
write's answer) finds it: the processor tells `note_published` of every event it publishes
(a publish hook, in the transaction that adds the event), and a canary report's event is
tied to its run there. The processor itself knows nothing of canaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from ehr_connector import store as connector_store
from ehr_connector.ehr.port import EhrPort
from ehr_connector.inbound import store
from ehr_connector.inbound.domain.canary_data import (
    canary_observation,
    canary_report,
    canary_run_id,
)
from ehr_connector.inbound.metrics import CANARY_FAILURES, CANARY_LAST_SUCCESS, CANARY_LATENCY
from ehr_connector.inbound.service.processor import Change
from ehr_connector.settings import Settings
from servicekit.db import Database
from servicekit.logging import get_logger

log = get_logger(__name__)


class Canary:
    """Writes a synthetic lab result periodically and times its way to Kafka."""

    def __init__(self, settings: Settings, db: Database, ehr: EhrPort) -> None:
        self.settings = settings
        self.db = db
        self.ehr = ehr
        self._stopping = asyncio.Event()

    async def link_patient(self) -> None:
        """The canary patient must be linked, or its results would not be published (only
        linked while the canary is used: an EHR Patient of that id is otherwise nobody's)."""
        async with self.db.transaction() as session:
            await connector_store.remember_patient(
                session,
                self.settings.canary_patient_id,
                self.settings.canary_patient_fhir_id,
                datetime.now(UTC),
            )

    async def run(self) -> None:
        """Run every `canary_interval_s` until stopped; the first run comes after
        `canary_first_run_s`, so a freshly started connector reports a latency within a
        minute rather than after a whole interval."""
        wait_s = min(self.settings.canary_first_run_s, self.settings.canary_interval_s)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), wait_s)
            wait_s = self.settings.canary_interval_s
            if self._stopping.is_set():
                return
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                CANARY_FAILURES.labels("error").inc()
                log.warning("inbound.canary_failed", error=type(exc).__name__)

    def stop(self) -> None:
        """Stop after the current run."""
        self._stopping.set()

    @staticmethod
    async def note_published(
        session: AsyncSession, resource_type: str, change: Change, event_id: str
    ) -> None:
        """The processor's publish hook: tie a canary report's event to its run, so that
        the run can time its publication."""
        if resource_type != "DiagnosticReport" or change.resource is None:
            return
        run_id = canary_run_id(change.resource)
        if run_id is None:
            return
        run = await store.canary_run(session, run_id)
        if run is not None and run.event_id is None:
            run.event_id = event_id
            run.report_fhir_id = change.focus.id
            run.state = "queued"

    async def run_once(self) -> float | None:
        """One canary run; returns the latency in seconds, or None if it timed out."""
        await self.link_patient()
        run_id = uuid.uuid4().hex
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            await store.add_canary_run(session, run_id, now)
            await store.prune_canary_runs(session, now - timedelta(days=7))
        patient = self.settings.canary_patient_fhir_id
        try:
            observation = await self.ehr.create(canary_observation(patient, run_id, now))
            report = await self.ehr.create(canary_report(patient, run_id, observation.id, now))
        except Exception:
            CANARY_FAILURES.labels("write").inc()
            await self._finish(run_id, "write-failed", None, None)
            raise
        written_at = report.last_updated or now
        async with self.db.transaction() as session:
            run = await store.canary_run(session, run_id)
            if run is not None:
                run.written_at = written_at
                run.report_fhir_id = report.id
        deadline = time.monotonic() + self.settings.canary_timeout_s
        while time.monotonic() < deadline and not self._stopping.is_set():
            async with self.db.sessions() as session:
                run = await store.canary_run(session, run_id)
                sent_at = None
                if run is not None and run.event_id is not None:
                    sent_at = await store.outbox_sent_at(session, run.event_id)
            if sent_at is not None:
                latency = max(0.0, (sent_at - written_at).total_seconds())
                CANARY_LATENCY.observe(latency)
                CANARY_LAST_SUCCESS.set(time.time())
                await self._finish(run_id, "published", latency, report.id)
                log.info("inbound.canary_published", run_id=run_id, latency_s=round(latency, 3))
                return latency
            await asyncio.sleep(0.2)
        CANARY_FAILURES.labels("timeout").inc()
        await self._finish(run_id, "timed-out", None, report.id)
        log.warning("inbound.canary_timed_out", run_id=run_id)
        return None

    async def _finish(
        self, run_id: str, state: str, latency: float | None, report_id: str | None
    ) -> None:
        async with self.db.transaction() as session:
            run = await store.canary_run(session, run_id)
            if run is not None:
                run.state = state
                run.latency_s = latency
                run.report_fhir_id = run.report_fhir_id or report_id
