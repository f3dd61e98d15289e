"""The inbound side of one running connector: its parts and background tasks.

`Inbound` is built at start-up by the composition root (`ehr_connector.app`) around the
service's database, outbox and EHR client, as part of the service's `deps` (so routes reach
it as `service.deps.inbound`), and started by `lifecycle.start`. Its webhook (what the EHR
POSTs) is `inbound.webhook` (`ehr_connector.inbound.service.webhook`). Its background
tasks: ensuring the Subscriptions (once the service answers HTTP, since the EHR's
handshake must reach it, then periodically), the heartbeat monitor, the back-fill worker,
the canary, and pruning of old bookkeeping rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ehr_connector.ehr.errors import EhrError
from ehr_connector.ehr.port import EhrPort
from ehr_connector.ehr.written import WrittenVersions
from ehr_connector.inbound import store
from ehr_connector.inbound.service.backfill import BackfillWorker
from ehr_connector.inbound.service.canary import Canary
from ehr_connector.inbound.service.health import ProcessingHealth
from ehr_connector.inbound.service.pacing import LiveTraffic
from ehr_connector.inbound.service.processor import Processor
from ehr_connector.inbound.service.recovery import Recovery
from ehr_connector.inbound.service.slot_sync import SlotSync
from ehr_connector.inbound.service.subscriptions import SubscriptionManager
from ehr_connector.inbound.service.webhook import Webhook
from ehr_connector.settings import Settings
from servicekit.db import Database
from servicekit.errors import DependencyUnavailable
from servicekit.logging import get_logger
from servicekit.outbox import Outbox

log = get_logger(__name__)
INSTANCE_HEADER = "X-Connector-Instance"
security_log = get_logger("ehr_connector.security")


class Inbound:
    """Subscriptions, notifications, recovery, back-fill and canary of one connector."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        outbox: Outbox,
        ehr: EhrPort,
        *,
        written: WrittenVersions | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.ehr = ehr
        verify: bool | str = settings.ehr_ca_file or settings.ehr_verify_tls
        self.http = httpx.AsyncClient(verify=verify, timeout=10.0)
        self.processor = Processor(
            settings, db, outbox, ehr, on_publish=[Canary.note_published], written=written
        )
        self.manager = SubscriptionManager(settings, db, ehr)
        self.health = ProcessingHealth()
        self.recovery = Recovery(settings, db, ehr, self.processor, self.manager, self.health)
        self.live = LiveTraffic()
        self.backfill = BackfillWorker(settings, db, outbox, ehr, self.live)
        self.canary = Canary(settings, db, ehr)
        self.slot_sync = SlotSync(settings, db, outbox, ehr)
        self.webhook = Webhook(
            settings,
            db,
            self.http,
            processor=self.processor,
            manager=self.manager,
            recovery=self.recovery,
            health=self.health,
            heard_from=self._heard_from,
            live=self.live,
        )
        self.started_at = datetime.now(UTC)
        # Identifies this process on its own webhook route (see `_wait_until_serving`).
        self.instance_id = secrets.token_hex(8)
        self.missing_heartbeats: list[str] = []
        self.ensure_problem: str | None = "not yet ensured"
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background tasks (nothing here blocks the service's start-up)."""
        self._spawn(self._prune_loop(), "inbound-prune")
        self._spawn(self.backfill.run(), "inbound-backfill")
        if self.settings.inbound_enabled:
            self._spawn(self._subscriptions_loop(), "inbound-subscriptions")
            self._spawn(self._monitor_loop(), "inbound-heartbeats")
        else:
            self.ensure_problem = None
        if self.settings.slot_sync_enabled:
            self._spawn(self.slot_sync.run(), "inbound-slot-sync")
        if self.settings.canary_enabled:
            await self.canary.link_patient()
            self._spawn(self.canary.run(), "inbound-canary")

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))  # type: ignore[arg-type]

    async def stop(self) -> None:
        """Stop every background task, then close the JWKS client."""
        self._stopping.set()
        self.backfill.stop()
        self.slot_sync.stop()
        self.canary.stop()
        await self.recovery.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.http.aclose()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; False when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return not self._stopping.is_set()

    async def _wait_until_serving(self) -> bool:
        """Wait until this process answers HTTP on its own port; False when stopping.

        The handshake the EHR sends on a new (or re-requested) Subscription must find us
        listening, and the lifespan start-up runs before the server accepts connections.
        An app run without a server (in-process tests) never manages Subscriptions, and
        another process on the same port (a local stack) is not mistaken for this one.
        """
        url = f"http://{self.settings.http_host}:{self.settings.http_port}/fhir/notifications"
        attempts = 0
        while not self._stopping.is_set():
            try:
                response = await self.http.get(url, timeout=1.0)
                if response.headers.get(INSTANCE_HEADER) == self.instance_id:
                    return True
            except httpx.HTTPError:
                pass
            attempts += 1
            if attempts == 50:
                log.warning("inbound.webhook_not_serving", port=self.settings.http_port)
            await self._sleep(0.2)
        return False

    async def _subscriptions_loop(self) -> None:
        if not await self._wait_until_serving():
            return
        delay = 1.0
        while not self._stopping.is_set():
            try:
                await self.ensure_and_catch_up()
                delay = self.settings.inbound_ensure_interval_s
            except asyncio.CancelledError:
                raise
            except (EhrError, DependencyUnavailable, httpx.HTTPError) as exc:
                self.ensure_problem = f"EHR unavailable ({type(exc).__name__})"
                log.warning("inbound.ensure_failed", error=type(exc).__name__)
                delay = min(max(delay * 2, 1.0), 60.0)
            except Exception as exc:
                self.ensure_problem = f"failed ({type(exc).__name__})"
                log.error("inbound.ensure_failed", error=type(exc).__name__)
                delay = min(max(delay * 2, 1.0), 60.0)
            if not await self._sleep(delay):
                return

    async def ensure_and_catch_up(self) -> list[Any]:
        """Ensure the Subscriptions, then recover whatever happened while we were away."""
        results = await self.manager.ensure()
        failed = sorted(r.topic.rsplit("/", 1)[-1] for r in results if r.action == "failed")
        self.ensure_problem = f"refused by the EHR: {', '.join(failed)}" if failed else None
        for result in results:
            if result.subscription_id is None:
                continue
            status = await self.manager.status(result.subscription_id)
            async with self.db.sessions() as session:
                row = await store.subscription_by_id(session, result.subscription_id)
                behind = (
                    row is not None
                    and status is not None
                    and (status.events_since_start or 0) > row.highest_event_number
                )
            if behind:
                self.recovery.schedule(result.subscription_id)
        return results

    async def _monitor_loop(self) -> None:
        reconciled_at = datetime.now(UTC)
        while await self._sleep(self.settings.inbound_monitor_interval_s):
            try:
                profile = await self.manager.profile()
                if not profile.sends_heartbeats:
                    # No heartbeats to miss: a periodic _lastUpdated search per Subscription
                    # finds what no notification brought (trailing gaps included).
                    now = datetime.now(UTC)
                    interval = timedelta(seconds=self.settings.inbound_reconcile_interval_s)
                    if now - reconciled_at >= interval:
                        reconciled_at = now
                        await self.recovery.reconcile_all()
                    continue
                silent = await self.recovery.check_heartbeats(self.started_at)
                self.missing_heartbeats = [row.topic for row in silent]
                for row in silent:
                    await self.recovery.after_silence(row)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("inbound.monitor_failed", error=type(exc).__name__)

    async def _prune_loop(self) -> None:
        while True:
            try:
                now = datetime.now(UTC)
                async with self.db.transaction() as session:
                    await store.prune_jti(
                        session,
                        now - timedelta(seconds=4 * self.settings.inbound_signature_max_age_s),
                    )
                    await store.prune_versions(
                        session, now - timedelta(hours=self.settings.inbound_retention_hours)
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("inbound.prune_failed", error=type(exc).__name__)
            if not await self._sleep(600):
                return

    def _heard_from(self, topic: str) -> None:
        if topic in self.missing_heartbeats:
            self.missing_heartbeats = [t for t in self.missing_heartbeats if t != topic]

    # -- readiness ------------------------------------------------------------------------

    async def readiness(self) -> str | None:
        """Failing while notifications could not be processed and are not yet made good
        (the service is not ready); a warning when Subscriptions are not in order (it
        stays ready)."""
        problems: list[str] = []
        if self.settings.inbound_enabled and self.ensure_problem:
            problems.append(f"subscriptions {self.ensure_problem}")
        if self.missing_heartbeats:
            problems.append("heartbeat missed: " + ", ".join(sorted(self.missing_heartbeats)))
        try:
            async with self.db.sessions() as session:
                rows = await store.subscriptions(session)
        except Exception:
            # The database check of /readyz reports the database itself.
            rows = []
        failing = self.health.problem({r.subscription_id: r.topic for r in rows})
        inactive = [r.topic.rsplit("/", 1)[-1] for r in rows if r.status not in ("active",)]
        if inactive:
            problems.append("not active: " + ", ".join(sorted(inactive)))
        if failing:
            return "; ".join([failing, *problems])
        return f"warning: {'; '.join(problems)}" if problems else None
